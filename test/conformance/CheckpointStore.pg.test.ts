import { suite } from "@eventfold/testing/CheckpointStoreSuite"
import { clients } from "../support/pgClients.js"
import { postgresql } from "../support/projectionHarness.js"

for (const client of clients) suite(`postgresql (${client})`, postgresql({ client }))

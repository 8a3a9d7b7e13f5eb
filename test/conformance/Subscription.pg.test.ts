import { suite } from "@eventfold/testing/SubscriptionSuite"
import { clients } from "../support/pgClients.js"
import { postgresql } from "../support/projectionHarness.js"

for (const client of clients) suite(`postgresql (${client})`, postgresql({ client }))

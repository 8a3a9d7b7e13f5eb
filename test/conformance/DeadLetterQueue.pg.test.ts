import { clients } from "../support/pgClients.js"
import { postgresql } from "../support/projectionHarness.js"
import { suite } from "./deadLetterQueueSuite.js"

for (const client of clients) suite(`postgresql (${client})`, postgresql({ client }))

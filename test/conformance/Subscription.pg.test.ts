import { postgresql } from "../support/projectionHarness.js"
import { suite } from "./subscriptionSuite.js"

suite("postgresql", postgresql())

import { postgresql } from "../support/projectionHarness.js"
import { suite } from "./checkpointStoreSuite.js"

suite("postgresql", postgresql())

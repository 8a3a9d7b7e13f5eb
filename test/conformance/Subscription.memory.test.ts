import { memory } from "../support/projectionHarness.js"
import { suite } from "./subscriptionSuite.js"

suite("memory", memory)

import { memory } from "../support/projectionHarness.js"
import { suite } from "./checkpointStoreSuite.js"

suite("memory", memory)

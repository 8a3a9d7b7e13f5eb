import { memory } from "../support/projectionHarness.js"
import { suite } from "./deadLetterQueueSuite.js"

suite("memory", memory)

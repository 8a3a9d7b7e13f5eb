import { memory } from "../support/projectionHarness.js"
import { suite } from "./projectionSuite.js"

suite("memory", memory)

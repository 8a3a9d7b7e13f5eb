import { postgresql } from "../support/projectionHarness.js"
import { suite } from "./projectionSuite.js"

suite("postgresql", postgresql())

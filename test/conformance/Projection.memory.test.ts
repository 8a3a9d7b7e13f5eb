import { memory } from "@eventfold/testing/ConformanceBackend"
import { suite } from "@eventfold/testing/ProjectionSuite"

suite("memory", memory)

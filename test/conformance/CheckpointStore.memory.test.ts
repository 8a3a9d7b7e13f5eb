import { suite } from "@eventfold/testing/CheckpointStoreSuite"
import { memory } from "@eventfold/testing/ConformanceBackend"

suite("memory", memory)

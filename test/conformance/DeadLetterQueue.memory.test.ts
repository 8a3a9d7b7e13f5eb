import { memory } from "@eventfold/testing/ConformanceBackend"
import { suite } from "@eventfold/testing/DeadLetterQueueSuite"

suite("memory", memory)

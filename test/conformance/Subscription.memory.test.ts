import { memory } from "@eventfold/testing/ConformanceBackend"
import { suite } from "@eventfold/testing/SubscriptionSuite"

suite("memory", memory)

import { EventStore } from "@eventfold/core"
import { Harness, suite } from "@eventfold/testing/EventStoreSuite"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"

// One memory backend shared by every store the suite builds, as one database would be.
const MemoryHarness = Layer.sync(Harness, () => {
  const backend = EventStore.makeMemoryBackend()
  return {
    store: (registry) => Effect.succeed(EventStore.make(backend, registry)),
    transaction: Option.none(),
    sideWrite: Option.none(),
    sideRead: Option.none()
  }
})

suite("memory", MemoryHarness)

import { EventStore, Outbox } from "@eventfold/core"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { registry } from "./eventStoreSuite.js"
import { OutboxHarness, suite } from "./outboxSuite.js"

// A new memory event store and outbox per test; the store without the outbox shares its data.
const MemoryHarness = Layer.succeed(OutboxHarness, {
  fresh: Effect.map(Outbox.makeMemory, ({ outbox, withOutbox }) => {
    const backend = EventStore.makeMemoryBackend()
    const withEntries = EventStore.make(withOutbox(backend), registry)
    const without = EventStore.make(backend, registry)
    return {
      store: ({ outbox: enabled }: { readonly outbox: boolean }) => (enabled ? withEntries : without),
      outbox,
      transaction: Option.none()
    }
  })
})

suite("memory", MemoryHarness)

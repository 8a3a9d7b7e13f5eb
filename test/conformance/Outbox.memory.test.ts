import { EventStore, Outbox } from "@eventfold/core"
import { registry } from "@eventfold/testing/EventStoreSuite"
import { OutboxHarness, suite } from "@eventfold/testing/OutboxSuite"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"

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

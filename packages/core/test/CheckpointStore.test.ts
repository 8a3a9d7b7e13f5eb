import { assert, describe, it } from "@effect/vitest"
import { CheckpointStore, Event, EventRegistry, EventStore } from "@eventfold/core"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"

const Noted = Event.make("Noted", { text: Schema.String })
const fresh = CheckpointStore.layerMemory.pipe(
  Layer.provideMerge(EventStore.layerMemory({ registry: EventRegistry.make(Noted) }))
)

// The conformance suites share a log between tests; these need one of their own.
describe("CheckpointStore (memory, a log of its own)", () => {
  it.effect("lag on an empty log: at 0, with a head at 0 and nothing behind", () =>
    Effect.gen(function* () {
      const checkpoints = yield* CheckpointStore.CheckpointStore
      assert.deepStrictEqual(yield* checkpoints.lag("projection"), {
        name: "projection",
        position: 0n,
        headPosition: 0n,
        eventsBehind: 0,
        timeBehindMillis: 0
      })
    }).pipe(Effect.provide(fresh))
  )
})

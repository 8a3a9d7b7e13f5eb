/**
 * Payloads nested 10,000 deep (issue 12): deeper than `JSON.stringify`, Schema's parser
 * and its error formatter can recurse. Appending one is a typed `InvalidEventError`;
 * reading one is a typed `EventDecodeError` that names the event. Nothing throws.
 */
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, EventStore, ExpectedVersion } from "@eventfold/core"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Schema from "effect/Schema"

interface Tree {
  readonly child?: Tree | undefined
}
const Tree: Schema.Schema<Tree> = Schema.Struct({ child: Schema.optional(Schema.suspend(() => Tree)) })
const Loose = Event.make("Loose", { data: Schema.Unknown })
const Recursive = Event.make("Recursive", { tree: Tree })
const Flat = Event.make("Flat", { sku: Schema.String })
const registry = EventRegistry.make(Loose, Recursive, Flat)

/** `{ child: { child: ... } }`, `depth` levels, built without recursion. */
const nested = (depth: number): Tree => {
  let tree: Tree = {}
  for (let i = 1; i < depth; i++) tree = { child: tree }
  return tree
}

describe("a payload nested 10,000 deep", () => {
  it.effect("cannot be appended: InvalidEventError, whatever its schema", () =>
    Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      for (const event of [
        Loose.make({ data: nested(10_000) }),
        // Built without its constructor, whose validation recurses as deep.
        { _tag: "Recursive", tree: nested(10_000) } as Event.Any
      ]) {
        const error = yield* Effect.flip(
          store.append({ aggregateId: crypto.randomUUID(), aggregateType: "Deep" }, [{ event }], {
            expectedVersion: ExpectedVersion.noStream
          })
        )
        assert.deepInclude(error, { _tag: "InvalidEventError", eventType: event._tag })
        assert.include(error.message, "Maximum call stack size exceeded")
        assert.include(Cause.pretty(Cause.fail(error)), error.message)
      }
    }).pipe(Effect.provide(EventStore.layerMemory({ registry })))
  )

  it("stored by another program, does not decode: EventDecodeError naming the event", () => {
    const meta = { eventId: crypto.randomUUID(), globalPosition: 7n }
    for (const [type, payload] of [
      ["Recursive", { tree: nested(10_000) }],
      // A declared field whose value Schema's explanation would print.
      ["Flat", { sku: nested(10_000) }]
    ] as const) {
      const decoded = registry.decode(type, payload, meta)
      assert.isTrue(Either.isLeft(decoded))
      if (Either.isLeft(decoded)) {
        assert.deepInclude(decoded.left, { _tag: "EventDecodeError", eventType: type, ...meta })
        assert.isString(decoded.left.message)
        // Printable, as a runner's log or the program's error report prints it.
        assert.include(Cause.pretty(Cause.fail(decoded.left)), decoded.left.message)
      }
    }
  })
})

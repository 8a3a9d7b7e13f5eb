/**
 * Reads filtered by event definitions: the definitions select by their names, and the
 * events come out typed as theirs (checked by `npm run check`: the reads below use the
 * events' fields without a cast); names among the filters keep any event.
 */
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, EventStore, ExpectedVersion } from "@eventfold/core"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"

const OrderPlaced = Event.make("OrderPlaced", { total: Schema.Number })
const OrderShipped = Event.make("OrderShipped", { tracking: Schema.String })
const OrderCancelled = Event.make("OrderCancelled", { reason: Schema.String })
const registry = EventRegistry.make(OrderPlaced, OrderShipped, OrderCancelled)

/** Whether two types are the same (not merely assignable to each other). */
type Equals<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false
const sameType = <A, B>(_: Equals<A, B>) => {}
type EventOf<S> = S extends Stream.Stream<EventStore.RecordedEvent<infer E>, infer _E, infer _R> ? E : never

const collect = <A, E>(stream: Stream.Stream<A, E>) => Effect.map(Stream.runCollect(stream), Chunk.toReadonlyArray)

const orders = Effect.gen(function* () {
  const store = yield* EventStore.EventStore
  const order = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
  yield* store.append(
    order,
    [
      { event: OrderPlaced.make({ total: 12 }) },
      { event: OrderShipped.make({ tracking: "T-1" }) },
      { event: OrderCancelled.make({ reason: "late" }) }
    ],
    { expectedVersion: ExpectedVersion.noStream }
  )
  return store
})

describe("typed reads", () => {
  it.effect("readAll filtered by definitions yields their events, typed as theirs", () =>
    Effect.gen(function* () {
      const store = yield* orders
      const placed = store.readAll({ eventTypes: [OrderPlaced] })
      sameType<EventOf<typeof placed>, typeof OrderPlaced.Type>(true)
      const totals = (yield* collect(placed)).map((recorded) => recorded.event.total)
      assert.deepStrictEqual(totals, [12])

      const two = store.readAll({ eventTypes: [OrderPlaced, OrderShipped], direction: "backward" })
      sameType<EventOf<typeof two>, typeof OrderPlaced.Type | typeof OrderShipped.Type>(true)
      const described = (yield* collect(two)).map((recorded) =>
        recorded.event._tag === "OrderPlaced" ? `placed ${recorded.event.total}` : `shipped ${recorded.event.tracking}`
      )
      assert.deepStrictEqual(described, ["shipped T-1", "placed 12"])
    }).pipe(Effect.provide(EventStore.layerMemory({ registry })))
  )

  it.effect("names, alone or beside definitions, select the same events and keep any event", () =>
    Effect.gen(function* () {
      const store = yield* orders
      const mixed = store.readAll({ eventTypes: [OrderPlaced, "OrderShipped"] })
      sameType<EventOf<typeof mixed>, Event.Any>(true)
      const unfiltered = store.readAll()
      sameType<EventOf<typeof unfiltered>, Event.Any>(true)
      const named = store.readAll({ eventTypes: ["OrderPlaced", "OrderShipped"] })
      sameType<EventOf<typeof named>, Event.Any>(true)
      assert.deepStrictEqual(
        (yield* collect(mixed)).map((recorded) => recorded.eventType),
        ["OrderPlaced", "OrderShipped"]
      )
      assert.deepStrictEqual(
        (yield* collect(named)).map((recorded) => recorded.eventType),
        ["OrderPlaced", "OrderShipped"]
      )
    }).pipe(Effect.provide(EventStore.layerMemory({ registry })))
  )

  it.effect("subscribe and subscribeMessages filtered by definitions are typed as well", () =>
    Effect.gen(function* () {
      const store = yield* orders
      const shipped = store.subscribe({ eventTypes: [OrderShipped] })
      sameType<EventOf<typeof shipped>, typeof OrderShipped.Type>(true)
      const [first] = yield* collect(shipped.pipe(Stream.take(1)))
      assert.strictEqual(first?.event.tracking, "T-1")

      const messages = yield* collect(
        store.subscribeMessages({ eventTypes: [OrderCancelled] }).pipe(
          Stream.filterMap((message) =>
            message._tag === "Event" ? Option.some(message.event.event.reason) : Option.none()
          ),
          Stream.take(1)
        )
      )
      assert.deepStrictEqual(messages, ["late"])
    }).pipe(Effect.provide(EventStore.layerMemory({ registry })))
  )

  it.effect("a definition the store's registry does not hold is refused, even under a held name", () =>
    Effect.gen(function* () {
      const store = yield* orders
      const Unregistered = Event.make("Refunded", { amount: Schema.Number })
      // Same name as a registered type, other fields: reading by it would mistype the events.
      const Namesake = Event.make("OrderPlaced", { total: Schema.String })
      for (const definition of [Unregistered, Namesake]) {
        const readAll = yield* Effect.flip(collect(store.readAll({ eventTypes: [definition] })))
        assert.deepInclude(readAll, {
          _tag: "InvalidEventError",
          reason: `eventTypes: the store's registry does not hold this definition of ${definition.type}`
        })
        const subscribe = yield* Effect.flip(collect(store.subscribe({ eventTypes: [definition] })))
        assert.strictEqual(subscribe._tag, "InvalidEventError")
      }
    }).pipe(Effect.provide(EventStore.layerMemory({ registry })))
  )
})

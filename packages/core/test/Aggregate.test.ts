import { assert, describe, it } from "@effect/vitest"
import { Aggregate, AggregateRepository, Event, EventRegistry, EventStore, ExpectedVersion } from "@eventfold/core"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"

// The spec's OrderAggregate, in a few lines.
const OrderCreated = Event.make("OrderCreated", { customer_id: Schema.String, total: Schema.Number })
const OrderShipped = Event.make("OrderShipped", { tracking_number: Schema.String })

interface OrderState {
  readonly status: "draft" | "created" | "shipped"
  readonly customerId: string | null
  readonly total: number
  readonly trackingNumber: string | null
}

const Order = Aggregate.make({
  type: "Order",
  events: [OrderCreated, OrderShipped],
  initialState: (): OrderState => ({ status: "draft", customerId: null, total: 0, trackingNumber: null }),
  evolve: (state, event): OrderState => {
    switch (event._tag) {
      case "OrderCreated":
        return { ...state, status: "created", customerId: event.customer_id, total: event.total }
      case "OrderShipped":
        return { ...state, status: "shipped", trackingNumber: event.tracking_number }
    }
  }
})

class OrderError extends Data.TaggedError("OrderError")<{ readonly message: string }> {}

const create = Aggregate.command(Order, (_state, input: { customerId: string; total: number }, root) =>
  root.version > 0
    ? Effect.fail(new OrderError({ message: "Order already exists" }))
    : Effect.succeed([OrderCreated.make({ customer_id: input.customerId, total: input.total })])
)

const ship = Aggregate.command(Order, (state, input: { trackingNumber: string }) =>
  state.status !== "created"
    ? Effect.fail(new OrderError({ message: "Cannot ship order in current state" }))
    : Effect.succeed([OrderShipped.make({ tracking_number: input.trackingNumber })])
)

const registry = EventRegistry.make(OrderCreated, OrderShipped)
const StoreLive = EventStore.layerMemory({ registry })

describe("Aggregate and AggregateRepository", () => {
  it.effect("create, save, load and ship an order", () =>
    Effect.gen(function* () {
      const repo = yield* AggregateRepository.make(Order)
      const id = crypto.randomUUID()
      const created = yield* repo.create(id).pipe(create({ customerId: "c-1", total: 299.99 }))
      assert.strictEqual(created.version, 1)
      assert.strictEqual(created.persistedVersion, 0)
      assert.strictEqual(created.pending.length, 1)
      const saved = yield* repo.save(created)
      assert.deepStrictEqual([saved.version, saved.persistedVersion, saved.pending.length], [1, 1, 0])

      const shipped = yield* repo.load(id).pipe(ship({ trackingNumber: "T-1" }), Effect.flatMap(repo.save))
      assert.strictEqual(shipped.version, 2)
      const loaded = yield* repo.load(id)
      assert.deepStrictEqual(loaded.state, {
        status: "shipped",
        customerId: "c-1",
        total: 299.99,
        trackingNumber: "T-1"
      })
      assert.strictEqual(loaded.version, 2)
    }).pipe(Effect.provide(StoreLive))
  )

  it.effect("invariants: no double create, no shipping a draft or a shipped order", () =>
    Effect.gen(function* () {
      const repo = yield* AggregateRepository.make(Order)
      const id = crypto.randomUUID()
      const draft = yield* repo.create(id)
      const notCreated = yield* Effect.flip(Effect.succeed(draft).pipe(ship({ trackingNumber: "T" })))
      assert.strictEqual(notCreated.message, "Cannot ship order in current state")
      const created = yield* Effect.succeed(draft).pipe(create({ customerId: "c", total: 1 }))
      const twice = yield* Effect.flip(Effect.succeed(created).pipe(create({ customerId: "c", total: 1 })))
      assert.strictEqual(twice.message, "Order already exists")
      const shipped = yield* Effect.succeed(created).pipe(ship({ trackingNumber: "T" }))
      const again = yield* Effect.flip(Effect.succeed(shipped).pipe(ship({ trackingNumber: "T2" })))
      assert.strictEqual(again._tag, "OrderError")
    }).pipe(Effect.provide(StoreLive))
  )

  it.effect("a concurrent writer makes save fail with ConcurrencyError; saving twice is idempotent", () =>
    Effect.gen(function* () {
      const repo = yield* AggregateRepository.make(Order)
      const id = crypto.randomUUID()
      yield* repo.create(id).pipe(create({ customerId: "c", total: 5 }), Effect.flatMap(repo.save))
      const a = yield* repo.load(id).pipe(ship({ trackingNumber: "A" }))
      const b = yield* repo.load(id).pipe(ship({ trackingNumber: "B" }))
      const savedA = yield* repo.save(a)
      assert.deepStrictEqual(yield* repo.save(a), savedA)
      const conflict = yield* Effect.flip(repo.save(b))
      assert.deepInclude(conflict, { _tag: "ConcurrencyError", actualVersion: 2 })
      assert.deepStrictEqual((conflict as { expectedVersion: unknown }).expectedVersion, ExpectedVersion.exact(1))
      assert.strictEqual((yield* repo.load(id)).state.trackingNumber, "A")
    }).pipe(Effect.provide(StoreLive))
  )

  it.effect("loading a missing aggregate fails with StreamNotFoundError", () =>
    Effect.gen(function* () {
      const repo = yield* AggregateRepository.make(Order)
      const error = yield* Effect.flip(repo.load(crypto.randomUUID()))
      assert.strictEqual(error._tag, "StreamNotFoundError")
    }).pipe(Effect.provide(StoreLive))
  )

  it.effect("an event of another aggregate type in the stream is a typed error, not a bad fold", () =>
    Effect.gen(function* () {
      const Stray = Event.make("Stray", { x: Schema.Number })
      const store = yield* EventStore.EventStore
      const id = crypto.randomUUID()
      const eventId = crypto.randomUUID()
      const written = yield* store.append(
        { aggregateId: id, aggregateType: "Order" },
        [{ event: Stray.make({ x: 1 }), eventId }],
        { expectedVersion: ExpectedVersion.noStream }
      )
      const repo = yield* AggregateRepository.make(Order)
      const error = yield* Effect.flip(repo.load(id))
      // Named by id and position, although loading reads neither.
      assert.deepInclude(error, {
        _tag: "UnknownEventTypeError",
        eventType: "Stray",
        eventId,
        globalPosition: written.firstPosition
      })
    }).pipe(
      Effect.provide(
        EventStore.layerMemory({
          registry: EventRegistry.make(OrderCreated, OrderShipped, Event.make("Stray", { x: Schema.Number }))
        })
      )
    )
  )

  it.effect("a repository over a registry with other schemas for its events is a wiring defect", () =>
    Effect.gen(function* () {
      const exit = yield* Effect.exit(AggregateRepository.make(Order))
      assert.isTrue(exit._tag === "Failure")
    }).pipe(Effect.provide(EventStore.layerMemory({ registry: EventRegistry.make() })))
  )
})

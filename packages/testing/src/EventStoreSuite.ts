/**
 * The EventStore contract (DESIGN §3), run against every backend. A backend counts
 * once it passes this suite unchanged.
 *
 * @since 0.1.0
 */

import { assert, describe, layer } from "@effect/vitest"
import {
  Aggregate,
  AggregateRepository,
  type Errors,
  Event,
  EventMetadata,
  EventRegistry,
  EventStore,
  ExpectedVersion
} from "@eventfold/core"
import * as Arr from "effect/Array"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as Tracer from "effect/Tracer"
import { orSkip } from "./internal/skip.js"
import { recordingSpans } from "./internal/spans.js"

/**
 * What a backend gives the EventStore suite: stores over one shared storage, and its
 * transactions if it has any.
 *
 * @since 0.1.0
 * @category models
 */
export class Harness extends Context.Tag("@eventfold/testing/EventStoreSuite/Harness")<
  Harness,
  {
    readonly store: (registry: EventRegistry.EventRegistry) => Effect.Effect<EventStore.Service>
    /** Runs an effect in one database transaction; none for backends without transactions. */
    readonly transaction: Option.Option<
      <A, E>(effect: Effect.Effect<A, E>) => Effect.Effect<A, E | Errors.EventStoreError>
    >
    /** Runs a statement of the backend's own in the current transaction (to prove the store joined it). */
    readonly sideWrite: Option.Option<(value: string) => Effect.Effect<void, Errors.EventStoreError>>
    readonly sideRead: Option.Option<(value: string) => Effect.Effect<boolean, Errors.EventStoreError>>
  }
>() {}

/**
 * An event of the EventStore suite.
 *
 * @since 0.1.0
 * @category models
 */
export const ItemAdded = Event.make("ItemAdded", {
  sku: Schema.String,
  quantity: Schema.Int,
  price: Schema.Number
})
/**
 * An event of the EventStore suite.
 *
 * @since 0.1.0
 * @category models
 */
export const NoteWritten = Event.make("NoteWritten", { text: Schema.String })
/**
 * The registry of the EventStore suite's events (`Harness.store(registry)` is asked for it and others).
 *
 * @since 0.1.0
 * @category models
 */
export const registry = EventRegistry.make(ItemAdded, NoteWritten)

const uuid = () => crypto.randomUUID()
const stream = (aggregateType = "Cart") => ({ aggregateId: uuid(), aggregateType })
const note = (text: string): EventStore.EventToAppend => ({ event: NoteWritten.make({ text }) })
const notes = (n: number, prefix = "n") => Arr.makeBy(n, (i) => note(`${prefix}${i + 1}`))
const collect = <A, E>(s: Stream.Stream<A, E>) => Effect.map(Stream.runCollect(s), Chunk.toReadonlyArray)

// Hostile input for the property test of `append`: strings made of the pieces that break
// databases and readers, numbers JSON cannot hold, dates outside what PostgreSQL stores,
// ids that are not UUIDs, versions past INTEGER, and values Schema.Unknown lets through.
const Hostile = Event.make("Hostile", {
  text: Schema.String,
  n: Schema.Number,
  at: Schema.Date,
  amount: Schema.BigInt,
  maybe: Schema.optional(Schema.String),
  anything: Schema.Unknown
})
const hostileRegistry = EventRegistry.make(Hostile)

const piece = FastCheck.constantFrom(
  "\u0000",
  "\ud800",
  "\udfff",
  "\ud83d\ude00",
  "\n",
  "\r\n",
  "'",
  '"',
  "\\",
  "\\u0000",
  "%",
  "null",
  "\u2028",
  "\uffff"
)
const hostileText = FastCheck.oneof(
  FastCheck.string({ unit: "binary", maxLength: 8 }),
  FastCheck.array(FastCheck.oneof(piece, FastCheck.string({ maxLength: 3 })), { maxLength: 6 }).map((p) => p.join("")),
  FastCheck.constantFrom("", "x".repeat(255), "x".repeat(256), "\ud83d\ude00".repeat(128))
)
// Each field is mostly valid, so that most appends carry one or two hostile values and a
// good share lands (about half: a property test that refuses everything checks little).
const mostly = <A, B>(valid: FastCheck.Arbitrary<A>, hostile: FastCheck.Arbitrary<B>) =>
  FastCheck.oneof({ arbitrary: valid, weight: 12 }, { arbitrary: hostile, weight: 1 })
const anyText = mostly(
  FastCheck.array(FastCheck.oneof(piece, FastCheck.string({ unit: "grapheme", maxLength: 4 })), {
    maxLength: 5
    // biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is what PostgreSQL rejects
  }).map((p) => p.join("").replace(/\u0000|\p{Surrogate}/gu, "?")),
  hostileText
)
const nameText = mostly(
  FastCheck.string({ unit: "grapheme", minLength: 1, maxLength: 30 }).filter((t) => t.length <= 255),
  hostileText
)
const hostileNumber = mostly(
  FastCheck.double({ noNaN: true, noDefaultInfinity: true }),
  FastCheck.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY)
)
const hostileDate = mostly(
  FastCheck.oneof(
    FastCheck.date({ min: new Date("0001-01-01T00:00:00.000Z"), max: new Date("9999-12-31T23:59:59.999Z") }),
    FastCheck.constantFrom(new Date("0001-01-01T00:00:00.000Z"), new Date("9999-12-31T23:59:59.999Z"))
  ),
  FastCheck.oneof(
    FastCheck.integer({ min: -8.64e15, max: 8.64e15 }).map((t) => new Date(t)),
    FastCheck.constantFrom(
      new Date(Number.NaN),
      new Date("0000-12-31T23:59:59.999Z"),
      new Date("+010000-01-01T00:00:00.000Z")
    )
  )
)
class NotData {
  readonly field = 1
}
// biome-ignore lint/suspicious/noSparseArray: a hole is what JSON turns into null
const sparse = [1, , 3]
const leaf = FastCheck.oneof(
  {
    arbitrary: FastCheck.oneof(
      FastCheck.jsonValue({ maxDepth: 2 }),
      anyText,
      FastCheck.constantFrom<unknown>(-0, undefined)
    ),
    weight: 5
  },
  {
    arbitrary: FastCheck.oneof(
      hostileText,
      FastCheck.constantFrom(Number.NaN, Number.POSITIVE_INFINITY),
      FastCheck.bigInt(),
      hostileDate,
      FastCheck.constant(new NotData()),
      FastCheck.constant(new Map([[1, 2]])),
      FastCheck.constant(sparse),
      FastCheck.constant(Symbol.for("s")),
      FastCheck.constant(() => 1)
    ),
    weight: 1
  }
)
const hostileValue = FastCheck.oneof(
  leaf,
  FastCheck.array(leaf, { maxLength: 3 }),
  FastCheck.dictionary(anyText, leaf, { maxKeys: 3 })
)
// Ids must be new to the store on every run (fast-check repeats values across runs): the
// markers "fresh" and "FRESH" become a new UUID (upper case for the second), "same" one
// shared by a whole append.
const hostileUuid = mostly(
  FastCheck.constantFrom("fresh", "FRESH"),
  FastCheck.oneof(FastCheck.constant("same"), hostileText)
)
const resolveIds = (input: HostileAppend): HostileAppend => {
  const same = crypto.randomUUID()
  const id = (value: string) =>
    value === "fresh"
      ? crypto.randomUUID()
      : value === "FRESH"
        ? crypto.randomUUID().toUpperCase()
        : value === "same"
          ? same
          : value
  return {
    ...input,
    stream: { ...input.stream, aggregateId: id(input.stream.aggregateId) },
    events: input.events.map((e) => ({ ...e, eventId: e.eventId === undefined ? undefined : id(e.eventId) })),
    tenantId: input.tenantId === undefined ? undefined : id(input.tenantId)
  }
}
interface HostileEvent {
  readonly fields: {
    readonly text: string
    readonly n: number
    readonly at: Date
    readonly amount: bigint
    readonly maybe?: string
    readonly anything: unknown
  }
  readonly eventId: string | undefined
  readonly timestamp: Date | undefined
}
const hostileEvent: FastCheck.Arbitrary<HostileEvent> = FastCheck.record({
  fields: FastCheck.record(
    {
      text: anyText,
      n: hostileNumber,
      at: hostileDate,
      amount: FastCheck.bigInt(),
      maybe: anyText,
      anything: hostileValue
    },
    { requiredKeys: ["text", "n", "at", "amount", "anything"] }
  ),
  eventId: FastCheck.option(hostileUuid, { nil: undefined }),
  timestamp: FastCheck.option(hostileDate, { nil: undefined })
})
const hostileAppend = FastCheck.record({
  stream: FastCheck.record({ aggregateId: hostileUuid, aggregateType: nameText }),
  events: mostly(FastCheck.array(hostileEvent, { minLength: 1, maxLength: 3 }), FastCheck.constant([])),
  expected: FastCheck.oneof(
    { arbitrary: FastCheck.constant(ExpectedVersion.noStream), weight: 4 },
    { arbitrary: FastCheck.constant(ExpectedVersion.any), weight: 4 },
    { arbitrary: FastCheck.constant(ExpectedVersion.exact(0)), weight: 3 },
    {
      arbitrary: FastCheck.constantFrom(2 ** 31 - 3, 2 ** 31 - 1, 2 ** 31, 2 ** 40).map((v) =>
        ExpectedVersion.exact(v)
      ),
      weight: 1
    }
  ),
  tenantId: FastCheck.option(hostileUuid, { nil: undefined }),
  actorId: FastCheck.option(nameText, { nil: undefined })
})

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
// biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is what PostgreSQL rejects
const UNSTORABLE = /\u0000|\p{Surrogate}/u
const badText = (s: string) => s.length === 0 || s.length > 255 || UNSTORABLE.test(s)
const badDate = (d: Date) =>
  Number.isNaN(d.getTime()) ||
  d.getTime() < Date.parse("0001-01-01T00:00:00.000Z") ||
  d.getTime() > Date.parse("9999-12-31T23:59:59.999Z")
/** Why `value` is not JSON data that reads back as it is (the spec the store must meet), or undefined. */
const notData = (value: unknown, inArray: boolean): string | undefined => {
  switch (typeof value) {
    case "string":
      return UNSTORABLE.test(value) ? "unstorable string" : undefined
    case "number":
      return Number.isFinite(value) ? undefined : "non-finite number"
    case "boolean":
      return undefined
    case "undefined":
      return inArray ? "undefined in an array" : undefined
    case "object": {
      if (value === null) return undefined
      if (Array.isArray(value)) {
        if (Object.getPrototypeOf(value) !== Array.prototype) return "exotic array"
        for (let i = 0; i < value.length; i++) {
          if (!(i in value)) return "sparse array"
          const problem = notData(value[i], true)
          if (problem !== undefined) return problem
        }
        return undefined
      }
      const prototype = Object.getPrototypeOf(value)
      if (prototype !== Object.prototype && prototype !== null) return "not a plain object"
      for (const [key, v] of Object.entries(value)) {
        // A property set to undefined is dropped, its name with it.
        if (v === undefined) continue
        if (UNSTORABLE.test(key)) return "unstorable key"
        const problem = notData(v, false)
        if (problem !== undefined) return problem
      }
      return undefined
    }
    default:
      return typeof value
  }
}
type HostileAppend = typeof hostileAppend extends FastCheck.Arbitrary<infer A> ? A : never
/** Why the store must refuse the append (the spec it must meet), or undefined when it must take it. */
const hostileProblem = (input: HostileAppend): string | undefined => {
  if (!UUID.test(input.stream.aggregateId)) return "aggregateId"
  if (badText(input.stream.aggregateType)) return "aggregateType"
  if (input.events.length === 0) return "no events"
  if (input.tenantId !== undefined && !UUID.test(input.tenantId)) return "tenantId"
  if (input.actorId !== undefined && badText(input.actorId)) return "actorId"
  if (input.expected._tag === "Exact" && input.expected.version + input.events.length > 2 ** 31 - 1) return "version"
  const ids = new Set<string>()
  for (const e of input.events) {
    if (e.eventId !== undefined) {
      if (!UUID.test(e.eventId)) return "eventId"
      if (ids.has(e.eventId.toLowerCase())) return "duplicate eventId"
      ids.add(e.eventId.toLowerCase())
    }
    if (e.timestamp !== undefined && badDate(e.timestamp)) return "timestamp"
    if (Number.isNaN(e.fields.at.getTime())) return "at"
    if (UNSTORABLE.test(e.fields.text) || (e.fields.maybe !== undefined && UNSTORABLE.test(e.fields.maybe))) {
      return "text"
    }
    if (!Number.isFinite(e.fields.n)) return "n"
    const problem = notData(e.fields.anything, false)
    if (problem !== undefined) return `anything: ${problem}`
  }
  return undefined
}
/** As JSON keeps data: -0 is 0, an undefined property is absent. */
const asData = (value: unknown): unknown => {
  if (Object.is(value, -0)) return 0
  if (Array.isArray(value)) return value.map(asData)
  if (value instanceof Date) return value.getTime()
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => [k, asData(v)])
    )
  }
  return value
}

/**
 * Registers the EventStore conformance tests (vitest, through `@effect/vitest`) against the
 * backend the layer provides (the first argument names the `describe` block).
 *
 * @since 0.1.0
 * @category constructors
 */
export const suite = (name: string, backend: Layer.Layer<Harness, unknown>) =>
  layer(backend, { excludeTestServices: true, timeout: "120 seconds" })(`EventStore conformance: ${name}`, (it) => {
    const withStore = Effect.flatMap(Harness, (h) => h.store(registry))

    describe("append and readStream", () => {
      it.effect("appends to a new stream and reads it back decoded, with its envelope", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const s = stream()
          const tenantId = uuid()
          const timestamp = new Date("2024-05-06T07:08:09.123Z")
          const eventId = uuid()
          const result = yield* store.append(
            s,
            [
              { event: ItemAdded.make({ sku: "A-1", quantity: 2, price: 9.99 }), eventId, timestamp },
              note("gift wrap")
            ],
            { expectedVersion: ExpectedVersion.noStream, tenantId, actorId: "user-7" }
          )
          assert.strictEqual(result.version, 2)
          assert.strictEqual(result.lastPosition - result.firstPosition, 1n)

          const events = yield* collect(store.readStream(s))
          assert.deepStrictEqual(
            events.map((e) => e.version),
            [1, 2]
          )
          const [first, second] = events
          assert.deepStrictEqual<unknown>(first!.event, { _tag: "ItemAdded", sku: "A-1", quantity: 2, price: 9.99 })
          assert.deepStrictEqual<unknown>(second!.event, { _tag: "NoteWritten", text: "gift wrap" })
          assert.strictEqual(first!.eventId, eventId)
          assert.strictEqual(first!.eventType, "ItemAdded")
          assert.strictEqual(first!.aggregateId, s.aggregateId)
          assert.strictEqual(first!.aggregateType, "Cart")
          assert.strictEqual(first!.tenantId, tenantId)
          assert.strictEqual(first!.actorId, "user-7")
          assert.strictEqual(first!.timestamp.toISOString(), timestamp.toISOString())
          assert.strictEqual(first!.globalPosition, result.firstPosition)
          assert.strictEqual(second!.globalPosition, result.lastPosition)
          assert.strictEqual(typeof first!.globalPosition, "bigint")
          assert.instanceOf(first!.createdAt, Date)
          // Every read hands out events of its own: what one reader does to its copy, no other sees.
          const [again] = yield* collect(store.readStream(s))
          assert.notStrictEqual(again!.event, first!.event)
          ;(first!.event as { sku?: string }).sku = "changed by a careless reader"
          const [third] = yield* collect(store.readStreamEvents(s))
          assert.deepStrictEqual<unknown>(third!.event, { _tag: "ItemAdded", sku: "A-1", quantity: 2, price: 9.99 })
        })
      )

      it.effect("an event without a timestamp is stamped by the fiber's clock", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const s = stream()
          const now = Date.parse("2025-01-02T03:04:05.678Z")
          const stopped: Clock.Clock = {
            [Clock.ClockTypeId]: Clock.ClockTypeId,
            unsafeCurrentTimeMillis: () => now,
            currentTimeMillis: Effect.succeed(now),
            unsafeCurrentTimeNanos: () => BigInt(now) * 1_000_000n,
            currentTimeNanos: Effect.succeed(BigInt(now) * 1_000_000n),
            sleep: () => Effect.void
          }
          yield* store
            .append(s, [note("stamped")], { expectedVersion: ExpectedVersion.noStream })
            .pipe(Effect.withClock(stopped))
          const [event] = yield* collect(store.readStream(s))
          assert.strictEqual(event!.timestamp.getTime(), now)
        })
      )

      it.effect("reads a range of versions, in both directions", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const s = stream()
          yield* store.append(s, notes(10), { expectedVersion: ExpectedVersion.noStream })
          const range = yield* collect(store.readStream(s, { fromVersion: 3, toVersion: 6 }))
          assert.deepStrictEqual(
            range.map((e) => e.version),
            [3, 4, 5, 6]
          )
          const back = yield* collect(store.readStream(s, { fromVersion: 8, direction: "backward" }))
          assert.deepStrictEqual(
            back.map((e) => e.version),
            [10, 9, 8]
          )
          const none = yield* collect(store.readStream(stream()))
          assert.strictEqual(none.length, 0)
        })
      )

      it.effect("streams are told apart by aggregate type as well as id", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const id = uuid()
          yield* store.append({ aggregateId: id, aggregateType: "Cart" }, notes(2), {
            expectedVersion: ExpectedVersion.noStream
          })
          const other = yield* store.append({ aggregateId: id, aggregateType: "Invoice" }, notes(1, "invoice"), {
            expectedVersion: ExpectedVersion.noStream
          })
          assert.strictEqual(other.version, 1)
          // Every read of a stream selects it by type as well as id.
          const texts = (events: ReadonlyArray<{ readonly event: unknown }>) =>
            events.map((e) => (e.event as { text: string }).text)
          const invoice = { aggregateId: id, aggregateType: "Invoice" }
          assert.deepStrictEqual(texts(yield* collect(store.readStream(invoice))), ["invoice1"])
          assert.deepStrictEqual(texts(yield* collect(store.readStream(invoice, { direction: "backward" }))), [
            "invoice1"
          ])
          assert.deepStrictEqual(texts(yield* collect(store.readStreamEvents(invoice))), ["invoice1"])
          assert.deepStrictEqual(
            texts(yield* collect(store.readStreamEvents({ aggregateId: id, aggregateType: "Cart" }))),
            ["n1", "n2"]
          )
        })
      )

      it.effect("reads a stream longer than a page, in order", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const s = stream()
          for (let i = 0; i < 6; i++) {
            yield* store.append(s, notes(200, `b${i}-`), { expectedVersion: ExpectedVersion.exact(i * 200) })
          }
          const events = yield* collect(store.readStream(s))
          assert.strictEqual(events.length, 1200)
          assert.isTrue(events.every((e, i) => e.version === i + 1))
          // The envelope-less read for folding: the same events, versions and order.
          const folded = yield* collect(store.readStreamEvents(s))
          assert.deepStrictEqual(
            folded,
            events.map((e) => ({ version: e.version, event: e.event }))
          )
          const tail = yield* collect(store.readStreamEvents(s, { fromVersion: 1101 }))
          assert.deepStrictEqual(
            tail.map((e) => e.version),
            Arr.makeBy(100, (i) => 1101 + i)
          )
          assert.strictEqual((yield* collect(store.readStreamEvents(stream()))).length, 0)
        })
      )
    })

    describe("expected version", () => {
      it.effect("noStream, streamExists, exact and any are each enforced", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const s = stream()
          const missing = yield* Effect.flip(
            store.append(s, notes(1), { expectedVersion: ExpectedVersion.streamExists })
          )
          assert.strictEqual(missing._tag, "ConcurrencyError")
          assert.strictEqual((missing as Errors.ConcurrencyError).actualVersion, 0)

          yield* store.append(s, notes(1), { expectedVersion: ExpectedVersion.noStream })
          const again = yield* Effect.flip(store.append(s, notes(1), { expectedVersion: ExpectedVersion.noStream }))
          assert.deepInclude(again, { _tag: "ConcurrencyError", actualVersion: 1, aggregateId: s.aggregateId })

          assert.strictEqual(
            (yield* store.append(s, notes(1), { expectedVersion: ExpectedVersion.streamExists })).version,
            2
          )
          assert.strictEqual(
            (yield* store.append(s, notes(2), { expectedVersion: ExpectedVersion.exact(2) })).version,
            4
          )

          const stale = yield* Effect.flip(store.append(s, notes(1), { expectedVersion: ExpectedVersion.exact(2) }))
          assert.deepInclude(stale, { _tag: "ConcurrencyError", actualVersion: 4 })
          assert.deepStrictEqual((stale as Errors.ConcurrencyError).expectedVersion, ExpectedVersion.exact(2))
          assert.include(stale.message, "version 4")

          const ahead = yield* Effect.flip(store.append(s, notes(1), { expectedVersion: ExpectedVersion.exact(9) }))
          assert.deepInclude(ahead, { _tag: "ConcurrencyError", actualVersion: 4 })

          assert.strictEqual((yield* store.append(s, notes(1), { expectedVersion: ExpectedVersion.any })).version, 5)
          assert.strictEqual(
            (yield* store.append(stream(), notes(1), { expectedVersion: ExpectedVersion.any })).version,
            1
          )
          assert.strictEqual(
            (yield* store.append(stream(), notes(1), { expectedVersion: ExpectedVersion.exact(0) })).version,
            1
          )
          // The failed appends wrote nothing.
          const events = yield* collect(store.readStream(s))
          assert.deepStrictEqual(
            events.map((e) => e.version),
            [1, 2, 3, 4, 5]
          )
        })
      )

      for (const size of [2, 1]) {
        it.effect(`a race of appends of ${size}: exactly one wins, losers learn its version, no gap`, () =>
          Effect.gen(function* () {
            const store = yield* withStore
            const s = stream()
            yield* store.append(s, notes(3), { expectedVersion: ExpectedVersion.noStream })
            const results = yield* Effect.all(
              Arr.makeBy(12, (i) =>
                Effect.either(store.append(s, notes(size, `w${i}-`), { expectedVersion: ExpectedVersion.exact(3) }))
              ),
              { concurrency: "unbounded" }
            )
            const wins = results.filter(Either.isRight)
            const losses = results.filter(Either.isLeft).map((r) => r.left)
            assert.strictEqual(wins.length, 1)
            assert.strictEqual(losses.length, 11)
            for (const loss of losses) assert.deepInclude(loss, { _tag: "ConcurrencyError", actualVersion: 3 + size })
            const events = yield* collect(store.readStream(s))
            assert.deepStrictEqual(
              events.map((e) => e.version),
              Arr.makeBy(3 + size, (i) => i + 1)
            )
            // Every event of the winner, none of a loser.
            const prefixes = new Set(
              events.slice(3).map((e) => (e.event as unknown as { text: string }).text.split("-")[0])
            )
            assert.strictEqual(prefixes.size, 1)
          })
        )
      }

      it.effect("a stale single-event writer learns the version, and appends once it has caught up", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const s = stream()
          yield* store.append(s, notes(4), { expectedVersion: ExpectedVersion.noStream })
          const stale = yield* Effect.flip(store.append(s, notes(1), { expectedVersion: ExpectedVersion.exact(2) }))
          assert.deepInclude(stale, { _tag: "ConcurrencyError", actualVersion: 4 })
          const ahead = yield* Effect.flip(store.append(s, notes(1), { expectedVersion: ExpectedVersion.exact(6) }))
          assert.deepInclude(ahead, { _tag: "ConcurrencyError", actualVersion: 4 })
          const caughtUp = yield* store.append(s, notes(1), { expectedVersion: ExpectedVersion.exact(4) })
          assert.strictEqual(caughtUp.version, 5)
          assert.deepStrictEqual(
            (yield* collect(store.readStream(s))).map((e) => e.version),
            [1, 2, 3, 4, 5]
          )
        })
      )

      it.effect(
        "`any` and `streamExists` never fail for a lost race: 16 writers on one stream all land, in order",
        () =>
          Effect.gen(function* () {
            const store = yield* withStore
            const s = stream()
            yield* store.append(s, notes(1), { expectedVersion: ExpectedVersion.noStream })
            const writers = 16
            const appends = 25
            const results = yield* Effect.all(
              Arr.makeBy(writers, (w) =>
                Effect.forEach(Arr.range(1, appends), (i) =>
                  Effect.either(
                    store.append(s, i % 3 === 0 ? notes(2, `w${w}.${i}-`) : notes(1, `w${w}.${i}-`), {
                      expectedVersion: w % 2 === 0 ? ExpectedVersion.any : ExpectedVersion.streamExists
                    })
                  )
                )
              ),
              { concurrency: "unbounded" }
            )
            const failures = results.flat().filter(Either.isLeft)
            assert.deepStrictEqual(
              failures.map((f) => f.left.message),
              []
            )
            const events = yield* collect(store.readStream(s))
            const total = 1 + writers * appends + writers * Math.floor(appends / 3)
            assert.deepStrictEqual(
              events.map((e) => e.version),
              Arr.makeBy(total, (i) => i + 1)
            )
            // Each append's events are together, in its order, and each writer's appends in the writer's order.
            const texts = events.slice(1).map((e) => (e.event as unknown as { text: string }).text)
            for (let w = 0; w < writers; w++) {
              const mine = texts.filter((t) => t.startsWith(`w${w}.`))
              const order = mine.map((t) => Number(t.slice(`w${w}.`.length).split("-")[0]))
              assert.deepStrictEqual(
                order,
                [...order].sort((a, b) => a - b),
                `writer ${w}`
              )
            }
            for (let i = 0; i < texts.length; i++) {
              const [append, n] = texts[i]!.split("-")
              if (n === "2") assert.strictEqual(texts[i - 1], `${append}-1`)
            }
          })
      )

      it.effect.prop(
        "concurrent writers with `any` and retried exact expectations never duplicate or skip a version",
        [FastCheck.array(FastCheck.integer({ min: 1, max: 4 }), { minLength: 2, maxLength: 10 })],
        ([batches]) =>
          Effect.gen(function* () {
            const store = yield* withStore
            const s = stream()
            const writer = (size: number, i: number) =>
              i % 2 === 0
                ? store.append(s, notes(size), { expectedVersion: ExpectedVersion.any })
                : // An optimistic writer: read the version, append exactly after it, retry on conflict.
                  collect(store.readStream(s)).pipe(
                    Effect.flatMap((events) =>
                      store.append(s, notes(size), { expectedVersion: ExpectedVersion.exact(events.length) })
                    ),
                    Effect.retry({ while: (e) => e._tag === "ConcurrencyError", times: 50 })
                  )
            yield* Effect.all(batches.map(writer), { concurrency: "unbounded" })
            const events = yield* collect(store.readStream(s))
            const total = batches.reduce((a, b) => a + b, 0)
            assert.deepStrictEqual(
              events.map((e) => e.version),
              Arr.makeBy(total, (i) => i + 1)
            )
          }),
        { fastCheck: { numRuns: 15 } }
      )
    })

    describe("idempotent append", () => {
      it.effect("re-appending the same event ids at the same versions returns the original result", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const s = stream()
          yield* store.append(s, notes(2), { expectedVersion: ExpectedVersion.noStream })
          const batch = [
            { ...note("x"), eventId: uuid() },
            { ...note("y"), eventId: uuid() }
          ]
          const first = yield* store.append(s, batch, { expectedVersion: ExpectedVersion.exact(2) })
          const replay = yield* store.append(s, batch, { expectedVersion: ExpectedVersion.exact(2) })
          assert.deepStrictEqual(replay, first)
          const anyReplay = yield* store.append(s, batch, { expectedVersion: ExpectedVersion.any })
          assert.deepStrictEqual(anyReplay, first)
          assert.strictEqual((yield* collect(store.readStream(s))).length, 4)
        })
      )

      it.effect("a single event re-appended returns the original result, even under a stale expectation", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const s = stream()
          yield* store.append(s, notes(2), { expectedVersion: ExpectedVersion.noStream })
          const event = { ...note("x"), eventId: uuid() }
          const first = yield* store.append(s, [event], { expectedVersion: ExpectedVersion.exact(2) })
          assert.deepStrictEqual(yield* store.append(s, [event], { expectedVersion: ExpectedVersion.exact(2) }), first)
          assert.deepStrictEqual(yield* store.append(s, [event], { expectedVersion: ExpectedVersion.any }), first)
          // Appended at version 3, so an expectation of version 0 (no stream) is not a replay of it.
          const misplaced = yield* Effect.flip(store.append(s, [event], { expectedVersion: ExpectedVersion.noStream }))
          assert.deepInclude(misplaced, { _tag: "DuplicateEventError", eventId: event.eventId })
          // Stored in another stream: a duplicate, whatever that stream's expectation.
          const other = stream()
          yield* store.append(other, notes(1), { expectedVersion: ExpectedVersion.noStream })
          for (const expectedVersion of [ExpectedVersion.exact(1), ExpectedVersion.exact(7), ExpectedVersion.any]) {
            const duplicate = yield* Effect.flip(store.append(other, [event], { expectedVersion }))
            assert.deepInclude(duplicate, { _tag: "DuplicateEventError", eventId: event.eventId })
          }
          assert.strictEqual((yield* collect(store.readStream(s))).length, 3)
          assert.strictEqual((yield* collect(store.readStream(other))).length, 1)
        })
      )

      it.effect("ids stored, but not at consecutive versions in the batch's order, are a DuplicateEventError", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const s = stream()
          const [a, b, c] = [uuid(), uuid(), uuid()]
          const first = yield* store.append(
            s,
            [a, b, c].map((eventId, i) => ({ ...note(`e${i}`), eventId })),
            { expectedVersion: ExpectedVersion.noStream }
          )
          assert.strictEqual(first.version, 3)
          for (const ids of [
            [a, c],
            [b, a],
            [a, b, c, uuid()]
          ]) {
            const error = yield* Effect.flip(
              store.append(
                s,
                ids.map((eventId) => ({ ...note("again"), eventId })),
                { expectedVersion: ExpectedVersion.noStream }
              )
            )
            assert.strictEqual(error._tag, "DuplicateEventError", ids.join(","))
          }
          // The exact batch is a replay.
          const replayed = yield* store.append(
            s,
            [a, b, c].map((eventId, i) => ({ ...note(`e${i}`), eventId })),
            { expectedVersion: ExpectedVersion.noStream }
          )
          assert.deepStrictEqual(replayed, first)
          assert.strictEqual((yield* collect(store.readStream(s))).length, 3)
        })
      )

      it.effect("an event id stored elsewhere is a DuplicateEventError and nothing is written", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const s = stream()
          const eventId = uuid()
          yield* store.append(s, [{ ...note("a"), eventId }], { expectedVersion: ExpectedVersion.noStream })
          // Same id, another stream.
          const other = stream()
          const elsewhere = yield* Effect.flip(
            store.append(other, [note("b"), { ...note("c"), eventId }], { expectedVersion: ExpectedVersion.any })
          )
          assert.deepInclude(elsewhere, { _tag: "DuplicateEventError", eventId })
          assert.strictEqual((yield* collect(store.readStream(other))).length, 0)
          // Same id, a stream of the same aggregate id but another type, where it would take the same version.
          const otherType = yield* Effect.flip(
            store.append({ ...s, aggregateType: `${s.aggregateType}Other` }, [{ ...note("a"), eventId }], {
              expectedVersion: ExpectedVersion.noStream
            })
          )
          assert.deepInclude(otherType, { _tag: "DuplicateEventError", eventId })
          // Same id, same stream, another version.
          const shifted = yield* Effect.flip(
            store.append(s, [note("d"), { ...note("a"), eventId }], { expectedVersion: ExpectedVersion.exact(1) })
          )
          assert.strictEqual(shifted._tag, "DuplicateEventError")
          // Same id twice in one batch.
          const twice = yield* Effect.flip(
            store.append(
              stream(),
              [{ ...note("e"), eventId: uuid().toUpperCase() }].flatMap((e) => [e, e]),
              {
                expectedVersion: ExpectedVersion.any
              }
            )
          )
          assert.strictEqual(twice._tag, "InvalidEventError")
          assert.strictEqual((yield* collect(store.readStream(s))).length, 1)
        })
      )
    })

    describe("global log", () => {
      it.effect("readAll is in one increasing order, resumable after a position, in both directions", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const aggregateType = `Log${uuid().slice(0, 8)}`
          const streams = Arr.makeBy(4, () => stream(aggregateType))
          for (let round = 0; round < 3; round++) {
            for (const s of streams)
              yield* store.append(s, notes(2, `r${round}-`), { expectedVersion: ExpectedVersion.any })
          }
          const all = yield* collect(store.readAll({ aggregateTypes: [aggregateType] }))
          assert.strictEqual(all.length, 24)
          for (let i = 1; i < all.length; i++) assert.isTrue(all[i]!.globalPosition > all[i - 1]!.globalPosition)
          const again = yield* collect(store.readAll({ aggregateTypes: [aggregateType] }))
          assert.deepStrictEqual(
            again.map((e) => e.eventId),
            all.map((e) => e.eventId)
          )

          const after = yield* collect(
            store.readAll({ aggregateTypes: [aggregateType], after: all[9]!.globalPosition })
          )
          assert.deepStrictEqual(
            after.map((e) => e.eventId),
            all.slice(10).map((e) => e.eventId)
          )
          const limited = yield* collect(store.readAll({ aggregateTypes: [aggregateType], limit: 5 }))
          assert.deepStrictEqual(
            limited.map((e) => e.eventId),
            all.slice(0, 5).map((e) => e.eventId)
          )
          const window = yield* collect(
            store.readAll({
              aggregateTypes: [aggregateType],
              after: all[2]!.globalPosition,
              before: all[7]!.globalPosition
            })
          )
          assert.deepStrictEqual(
            window.map((e) => e.eventId),
            all.slice(3, 7).map((e) => e.eventId)
          )
          const backward = yield* collect(
            store.readAll({
              aggregateTypes: [aggregateType],
              direction: "backward",
              before: all[20]!.globalPosition,
              limit: 6
            })
          )
          assert.deepStrictEqual(
            backward.map((e) => e.eventId),
            all
              .slice(14, 20)
              .reverse()
              .map((e) => e.eventId)
          )
          // Backward, bounded below by `after` (exclusive), and down to the log's first event.
          const backwardWindow = yield* collect(
            store.readAll({
              aggregateTypes: [aggregateType],
              direction: "backward",
              after: all[15]!.globalPosition,
              before: all[20]!.globalPosition
            })
          )
          assert.deepStrictEqual(
            backwardWindow.map((e) => e.eventId),
            all
              .slice(16, 20)
              .reverse()
              .map((e) => e.eventId)
          )
          const toStart = yield* collect(store.readAll({ aggregateTypes: [aggregateType], direction: "backward" }))
          assert.deepStrictEqual(
            toStart.map((e) => e.eventId),
            [...all].reverse().map((e) => e.eventId)
          )
          const zero = yield* collect(store.readAll({ aggregateTypes: [aggregateType], limit: 0 }))
          assert.strictEqual(zero.length, 0)
        })
      )

      it.effect("filters by tenant, aggregate type, event type and time window", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const tenantA = uuid()
          const tenantB = uuid()
          const typeX = `X${uuid().slice(0, 8)}`
          const typeY = `Y${uuid().slice(0, 8)}`
          const t = (day: number) => new Date(Date.UTC(2023, 0, day))
          const item = (day: number): EventStore.EventToAppend => ({
            event: ItemAdded.make({ sku: `s${day}`, quantity: 1, price: 1 }),
            timestamp: t(day)
          })
          yield* store.append(stream(typeX), [item(1), { ...note("n"), timestamp: t(2) }], {
            expectedVersion: ExpectedVersion.noStream,
            tenantId: tenantA
          })
          yield* store.append(stream(typeY), [item(3)], {
            expectedVersion: ExpectedVersion.noStream,
            tenantId: tenantA
          })
          yield* store.append(stream(typeX), [item(4)], {
            expectedVersion: ExpectedVersion.noStream,
            tenantId: tenantB
          })
          yield* store.append(stream(typeX), [item(5)], { expectedVersion: ExpectedVersion.noStream })

          const types = [typeX, typeY]
          const byTenant = yield* collect(store.readAll({ tenantId: tenantA }))
          assert.deepStrictEqual(
            byTenant.map((e) => e.timestamp.getUTCDate()),
            [1, 2, 3]
          )
          const byTenantUpper = yield* collect(store.readAll({ tenantId: tenantA.toUpperCase() }))
          assert.strictEqual(byTenantUpper.length, 3)
          const byType = yield* collect(store.readAll({ aggregateTypes: [typeY] }))
          assert.deepStrictEqual(
            byType.map((e) => e.timestamp.getUTCDate()),
            [3]
          )
          const byEventType = yield* collect(store.readAll({ aggregateTypes: types, eventTypes: ["NoteWritten"] }))
          assert.deepStrictEqual(
            byEventType.map((e) => e.eventType),
            ["NoteWritten"]
          )
          const window = yield* collect(store.readAll({ aggregateTypes: types, since: t(2), until: t(5) }))
          assert.deepStrictEqual(
            window.map((e) => e.timestamp.getUTCDate()),
            [2, 3, 4]
          )
          const combined = yield* collect(
            store.readAll({ aggregateTypes: [typeX], tenantId: tenantA, eventTypes: ["ItemAdded"] })
          )
          assert.deepStrictEqual(
            combined.map((e) => e.timestamp.getUTCDate()),
            [1]
          )
          const noTypes = yield* collect(store.readAll({ aggregateTypes: [] }))
          assert.strictEqual(noTypes.length, 0)
        })
      )

      it.effect("reads a log longer than a page, sparse filters included", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const typeDense = `D${uuid().slice(0, 8)}`
          const typeSparse = `S${uuid().slice(0, 8)}`
          for (let i = 0; i < 7; i++) {
            yield* store.append(stream(typeDense), notes(150), { expectedVersion: ExpectedVersion.noStream })
            yield* store.append(stream(typeSparse), notes(1), { expectedVersion: ExpectedVersion.noStream })
          }
          const dense = yield* collect(store.readAll({ aggregateTypes: [typeDense] }))
          assert.strictEqual(dense.length, 1050)
          const sparse = yield* collect(store.readAll({ aggregateTypes: [typeSparse] }))
          assert.strictEqual(sparse.length, 7)
          const limited = yield* collect(store.readAll({ aggregateTypes: [typeDense], limit: 1001 }))
          assert.strictEqual(limited.length, 1001)
        })
      )
    })

    describe("decoding", () => {
      // A writer whose schema is looser than the reader's: it can store what the reader rejects.
      const Loose = Event.make("ItemAdded", { sku: Schema.String, quantity: Schema.Unknown, price: Schema.Unknown })
      const Mystery = Event.make("Mystery", { clue: Schema.String })
      const looseRegistry = EventRegistry.make(Loose, NoteWritten, Mystery)

      it.effect("a malformed payload is an EventDecodeError naming the event; other reads go on", () =>
        Effect.gen(function* () {
          const h = yield* Harness
          const writer = yield* h.store(looseRegistry)
          const store = yield* withStore
          const aggregateType = `Bad${uuid().slice(0, 8)}`
          const bad = stream(aggregateType)
          const good = stream(aggregateType)
          yield* writer.append(good, notes(1), { expectedVersion: ExpectedVersion.noStream })
          const eventId = uuid()
          const written = yield* writer.append(
            bad,
            [
              note("ok"),
              {
                event: Loose.make({ sku: "s", quantity: "three", price: null }),
                eventId
              }
            ],
            { expectedVersion: ExpectedVersion.noStream }
          )
          yield* writer.append(good, notes(1), { expectedVersion: ExpectedVersion.any })

          const error = yield* Effect.flip(collect(store.readStream(bad)))
          assert.strictEqual(error._tag, "EventDecodeError")
          const decodeError = error as Errors.EventDecodeError
          assert.strictEqual(decodeError.eventId, eventId)
          assert.strictEqual(decodeError.eventType, "ItemAdded")
          assert.strictEqual(decodeError.globalPosition, written.lastPosition)
          assert.include(decodeError.message, "quantity")
          // The envelope-less read names the event the same way, after the events before it.
          const delivered: Array<number> = []
          const foldError = yield* store.readStreamEvents(bad).pipe(
            Stream.runForEach((e) => Effect.sync(() => delivered.push(e.version))),
            Effect.flip
          )
          assert.deepStrictEqual(delivered, [1])
          assert.deepInclude(foldError, { _tag: "EventDecodeError", eventId, globalPosition: written.lastPosition })

          // The events before the bad one are delivered, then the error.
          const seen: Array<string> = []
          yield* store.readAll({ aggregateTypes: [aggregateType] }).pipe(
            Stream.runForEach((e) => Effect.sync(() => seen.push(e.eventId))),
            Effect.flip
          )
          assert.strictEqual(seen.length, 2)
          // Another stream reads fine, and the log resumes after the bad event.
          assert.strictEqual((yield* collect(store.readStream(good))).length, 2)
          const rest = yield* collect(
            store.readAll({ aggregateTypes: [aggregateType], after: decodeError.globalPosition })
          )
          assert.strictEqual(rest.length, 1)
          // And nothing was lost: a reader that knows the loose shape gets it all.
          assert.strictEqual((yield* collect(writer.readAll({ aggregateTypes: [aggregateType] }))).length, 4)
        })
      )

      it.effect("an unknown stored event type is an UnknownEventTypeError naming the event", () =>
        Effect.gen(function* () {
          const h = yield* Harness
          const writer = yield* h.store(looseRegistry)
          const store = yield* withStore
          const s = stream(`Unk${uuid().slice(0, 8)}`)
          const eventId = uuid()
          yield* writer.append(s, [{ event: Mystery.make({ clue: "?" }), eventId }], {
            expectedVersion: ExpectedVersion.noStream
          })
          const error = yield* Effect.flip(collect(store.readStream(s)))
          assert.deepInclude(error, { _tag: "UnknownEventTypeError", eventType: "Mystery", eventId })
          const foldError = yield* Effect.flip(collect(store.readStreamEvents(s)))
          assert.deepInclude(foldError, { _tag: "UnknownEventTypeError", eventType: "Mystery", eventId })
        })
      )

      it.effect("an older stored shape decodes into today's type through an upcast", () =>
        Effect.gen(function* () {
          const h = yield* Harness
          // v1 stored the price in cents as "amount"; v2 has "price" in units.
          const V1 = Event.make("PriceSet", { amount: Schema.Int })
          const fields = { price: Schema.Number, currency: Schema.String }
          const V2 = Event.make("PriceSet", fields, {
            upcasts: [
              Schema.transform(Schema.Struct({ amount: Schema.Int }), Schema.Struct(fields), {
                strict: true,
                decode: ({ amount }) => ({ price: amount / 100, currency: "EUR" }),
                encode: ({ price }) => ({ amount: Math.round(price * 100) })
              })
            ]
          })
          const old = yield* h.store(EventRegistry.make(V1))
          const current = yield* h.store(EventRegistry.make(V2))
          const s = stream("Product")
          yield* old.append(s, [{ event: V1.make({ amount: 1250 }) }], { expectedVersion: ExpectedVersion.noStream })
          yield* current.append(s, [{ event: V2.make({ price: 3, currency: "USD" }) }], {
            expectedVersion: ExpectedVersion.exact(1)
          })
          const events = yield* collect(current.readStream(s))
          assert.deepStrictEqual(
            events.map((e): unknown => e.event),
            [
              { _tag: "PriceSet", price: 12.5, currency: "EUR" },
              { _tag: "PriceSet", price: 3, currency: "USD" }
            ]
          )
        })
      )

      it.effect.prop(
        "any event the schema accepts round-trips unchanged, or is rejected whole with InvalidEventError",
        [ItemAdded, NoteWritten],
        ([item, written]) =>
          Effect.gen(function* () {
            const store = yield* withStore
            const s = stream()
            // Strings with NUL or lone surrogates are rejected on append (PostgreSQL cannot store them).
            // biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is what PostgreSQL rejects
            const storable = (text: string) => !/\u0000|\p{Surrogate}/u.test(text)
            const result = yield* Effect.either(
              store.append(s, [{ event: item }, { event: written }], { expectedVersion: ExpectedVersion.noStream })
            )
            // Non-finite numbers have no JSON form: rejected too, never stored as null.
            if (!storable(item.sku) || !storable(written.text) || !Number.isFinite(item.price)) {
              assert.isTrue(Either.isLeft(result) && result.left._tag === "InvalidEventError")
              return
            }
            assert.isTrue(Either.isRight(result))
            const events = yield* collect(store.readStream(s))
            // -0 becomes 0 in JSON; every other number and string is kept exactly.
            assert.deepStrictEqual(
              events.map((e): unknown => e.event),
              [{ ...item, price: item.price === 0 ? 0 : item.price }, written]
            )
          }),
        { fastCheck: { numRuns: 40 } }
      )
    })

    describe("bad input", () => {
      it.effect("is rejected with InvalidEventError or UnknownEventTypeError, and nothing is written", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const s = stream()
          const expectInvalid = (
            target: EventStore.StreamId,
            events: ReadonlyArray<EventStore.EventToAppend>,
            options: EventStore.AppendOptions = { expectedVersion: ExpectedVersion.any },
            tag = "InvalidEventError"
          ) =>
            Effect.gen(function* () {
              const error = yield* Effect.flip(store.append(target, events, options))
              assert.strictEqual(error._tag, tag, error.message)
              assert.isAbove(error.message.length, 10)
            })
          yield* expectInvalid(s, [])
          yield* expectInvalid({ aggregateId: "not-a-uuid", aggregateType: "Cart" }, notes(1))
          yield* expectInvalid({ aggregateId: "'; DROP TABLE events; --", aggregateType: "Cart" }, notes(1))
          yield* expectInvalid({ aggregateId: s.aggregateId, aggregateType: "" }, notes(1))
          yield* expectInvalid({ aggregateId: s.aggregateId, aggregateType: "x".repeat(256) }, notes(1))
          yield* expectInvalid({ aggregateId: s.aggregateId, aggregateType: "Ca\u0000rt" }, notes(1))
          yield* expectInvalid(s, [{ ...note("a"), eventId: "123" }])
          yield* expectInvalid(s, notes(1), { expectedVersion: ExpectedVersion.any, tenantId: "tenant-1" })
          yield* expectInvalid(s, notes(1), { expectedVersion: ExpectedVersion.any, actorId: "a\u0000b" })
          yield* expectInvalid(s, [note("ok"), note("nul \u0000 inside")])
          yield* expectInvalid(s, [note("ok"), note("lone \ud800 surrogate")])
          yield* expectInvalid(s, [
            note("ok"),
            { event: { _tag: "NoteWritten", text: 42 } as unknown as typeof NoteWritten.Type }
          ])
          yield* expectInvalid(s, [{ ...note("late"), timestamp: new Date(Number.NaN) }])
          yield* expectInvalid(s, [{ event: ItemAdded.make({ sku: "nan", quantity: 1, price: Number.NaN }) }])
          yield* expectInvalid(s, [
            { event: ItemAdded.make({ sku: "inf", quantity: 1, price: Number.POSITIVE_INFINITY }) }
          ])
          yield* expectInvalid(s, [note("ok"), { event: { _tag: "Nope" } }], undefined, "UnknownEventTypeError")
          // A schema that lets any value through: a bigint cannot be JSON, a null can.
          const Anything = Event.make("Anything", { value: Schema.Unknown })
          const loose = yield* Effect.flatMap(Harness, (h) => h.store(EventRegistry.make(Anything)))
          const bigint = yield* Effect.flip(
            loose.append(s, [{ event: Anything.make({ value: 1n }) }], { expectedVersion: ExpectedVersion.any })
          )
          assert.strictEqual(bigint._tag, "InvalidEventError")
          assert.include(bigint.message, "bigint")
          const withNull = yield* loose.append(stream(), [{ event: Anything.make({ value: [null, { a: null }] }) }], {
            expectedVersion: ExpectedVersion.noStream
          })
          assert.strictEqual(withNull.version, 1)
          assert.strictEqual((yield* collect(store.readStream(s))).length, 0)

          // Hostile but valid text is stored and read back verbatim.
          const hostile = "'; DROP TABLE events; -- \" \\ \n ☃ 𝄞 \\u0000"
          const h = { aggregateId: uuid(), aggregateType: hostile.slice(0, 40) }
          yield* store.append(h, [note(hostile)], { expectedVersion: ExpectedVersion.noStream, actorId: hostile })
          const [back] = yield* collect(store.readStream(h))
          assert.deepStrictEqual<unknown>(back!.event, { _tag: "NoteWritten", text: hostile })
          assert.strictEqual(back!.actorId, hostile)
          assert.strictEqual(back!.aggregateType, hostile.slice(0, 40))
          // And filtered on: types with quotes, backslashes, commas and braces match only themselves.
          const types = [hostile.slice(0, 40), 'a"b', "c\\d", "e,f", "{g}", "NULL"]
          const positions = new Map<string, bigint>()
          for (const type of types.slice(1)) {
            const written = yield* store.append({ aggregateId: uuid(), aggregateType: type }, notes(1), {
              expectedVersion: ExpectedVersion.noStream
            })
            positions.set(type, written.firstPosition)
          }
          for (const type of types) {
            const found = yield* collect(store.readAll({ aggregateTypes: [type] }))
            assert.deepStrictEqual(
              found.map((e) => e.aggregateType),
              [type],
              type
            )
          }
          const both = yield* collect(store.readAll({ aggregateTypes: ['a"b', "e,f"], eventTypes: ["NoteWritten"] }))
          assert.deepStrictEqual(
            both.map((e) => e.globalPosition),
            [positions.get('a"b'), positions.get("e,f")]
          )
        })
      )

      it.effect.prop(
        "hostile input: an append fails with InvalidEventError and writes nothing, or lands and reads back equal",
        [hostileAppend],
        ([generated]) =>
          Effect.gen(function* () {
            const input = resolveIds(generated)
            const store = yield* Effect.flatMap(Harness, (h) => h.store(hostileRegistry))
            // Other tests leave events this registry cannot decode: look at Hostile events only.
            const [last] = yield* collect(store.readAll({ direction: "backward", limit: 1, eventTypes: ["Hostile"] }))
            const before = last?.globalPosition ?? 0n
            const events = input.events.map((e) => ({
              event: Hostile.make(e.fields, true),
              ...(e.eventId === undefined ? {} : { eventId: e.eventId }),
              ...(e.timestamp === undefined ? {} : { timestamp: e.timestamp })
            }))
            const result = yield* Effect.either(
              store.append(input.stream, events, {
                expectedVersion: input.expected,
                ...(input.tenantId === undefined ? {} : { tenantId: input.tenantId }),
                ...(input.actorId === undefined ? {} : { actorId: input.actorId })
              })
            )
            const written = yield* collect(store.readAll({ after: before, eventTypes: ["Hostile"] }))
            const problem = hostileProblem(input)
            // On a new stream, an exact expectation other than 0 is a conflict, not bad input.
            const conflict = problem === undefined && input.expected._tag === "Exact" && input.expected.version !== 0
            if (Either.isLeft(result)) {
              assert.strictEqual(
                result.left._tag,
                conflict ? "ConcurrencyError" : "InvalidEventError",
                `${result.left.message} (expected: ${problem ?? "a conflict"})`
              )
              assert.isTrue(problem !== undefined || conflict, `refused input that should land: ${result.left.message}`)
              assert.strictEqual(written.length, 0, "a refused append wrote events")
              return
            }
            assert.isFalse(conflict, "an exact expectation past a new stream's version landed")
            assert.isUndefined(problem, `stored input it should have refused: ${problem}`)
            assert.strictEqual(written.length, events.length)
            const back = yield* collect(store.readStream(input.stream))
            assert.deepStrictEqual(
              back.map((e) => asData(e.event)),
              input.events.map((e) => asData({ _tag: "Hostile", ...e.fields }))
            )
            for (const [i, e] of back.entries()) {
              assert.strictEqual(e.actorId, input.actorId ?? null)
              assert.strictEqual(e.tenantId, input.tenantId?.toLowerCase() ?? null)
              const timestamp = input.events[i]!.timestamp
              if (timestamp !== undefined) assert.strictEqual(e.timestamp.getTime(), timestamp.getTime())
            }
          }),
        { fastCheck: { numRuns: 200 } }
      )

      it.effect("bounds past the storable range are refused on append and mean open ends on reads", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const s = stream()
          for (const timestamp of [new Date(-8.64e15), new Date(8.64e15), new Date("0000-12-31T23:59:59.999Z")]) {
            const error = yield* Effect.flip(
              store.append(s, [{ ...note("t"), timestamp }], { expectedVersion: ExpectedVersion.any })
            )
            assert.strictEqual(error._tag, "InvalidEventError")
            assert.include(error.message, "years 1 to 9999")
          }
          for (const version of [2 ** 31, 2 ** 31 - 1]) {
            const error = yield* Effect.flip(
              store.append(s, notes(1), { expectedVersion: ExpectedVersion.exact(version) })
            )
            assert.strictEqual(error._tag, "InvalidEventError", error.message)
          }
          const edges = [new Date("0001-01-01T00:00:00.000Z"), new Date("9999-12-31T23:59:59.999Z")]
          const landed = yield* store.append(
            s,
            edges.map((timestamp) => ({ ...note("edge"), timestamp })),
            { expectedVersion: ExpectedVersion.noStream }
          )
          const back = yield* collect(store.readStream(s))
          assert.deepStrictEqual(
            back.map((e) => e.timestamp.toISOString()),
            edges.map((d) => d.toISOString())
          )
          const window = (options: EventStore.ReadAllOptions) =>
            collect(store.readAll({ after: landed.firstPosition - 1n, ...options })).pipe(
              Effect.map((events) => events.map((e) => e.version))
            )
          assert.deepStrictEqual(yield* window({ since: new Date(-8.64e15), until: new Date(8.64e15) }), [1, 2])
          assert.deepStrictEqual(yield* window({ since: new Date(8.64e15) }), [])
          assert.deepStrictEqual(yield* window({ until: new Date(-8.64e15) }), [])
          assert.deepStrictEqual(yield* window({ until: edges[1]! }), [1])
          assert.deepStrictEqual(yield* window({ before: 2n ** 70n }), [1, 2])
          assert.deepStrictEqual(yield* window({ after: 2n ** 70n }), [])
          assert.deepStrictEqual(yield* window({ before: -5n }), [])
          const versions = (options: EventStore.ReadStreamOptions) =>
            collect(store.readStream(s, options)).pipe(Effect.map((events) => events.map((e) => e.version)))
          assert.deepStrictEqual(yield* versions({ fromVersion: -(2 ** 40), toVersion: 2 ** 40 }), [1, 2])
          assert.deepStrictEqual(yield* versions({ fromVersion: 2 ** 40 }), [])
          assert.deepStrictEqual(yield* versions({ toVersion: 2 ** 40, direction: "backward" }), [2, 1])
          const events = yield* collect(store.readStreamEvents(s, { fromVersion: 2 ** 40 }))
          assert.strictEqual(events.length, 0)
        })
      )

      it.effect("accepts upper-case UUIDs and returns them in canonical lower case", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const id = uuid().toUpperCase()
          yield* store.append({ aggregateId: id, aggregateType: "Cart" }, notes(1), {
            expectedVersion: ExpectedVersion.noStream
          })
          const [event] = yield* collect(store.readStream({ aggregateId: id, aggregateType: "Cart" }))
          assert.strictEqual(event!.aggregateId, id.toLowerCase())
        })
      )

      it.effect("invalid read options are rejected", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const a = yield* Effect.flip(collect(store.readAll({ tenantId: "nope" })))
          assert.strictEqual(a._tag, "InvalidEventError")
          const b = yield* Effect.flip(collect(store.readAll({ limit: -1 })))
          assert.strictEqual(b._tag, "InvalidEventError")
          const c = yield* Effect.flip(collect(store.readStream({ aggregateId: "x", aggregateType: "Cart" })))
          assert.strictEqual(c._tag, "InvalidEventError")
        })
      )
    })

    describe("tenants", () => {
      /** Every expectation, as a single event and as a batch. */
      const attempts = (version: number) =>
        [
          ExpectedVersion.any,
          ExpectedVersion.noStream,
          ExpectedVersion.streamExists,
          ExpectedVersion.exact(version),
          ExpectedVersion.exact(version + 1)
        ].flatMap((expectedVersion) => [
          { expectedVersion, events: notes(1, "intruder") },
          { expectedVersion, events: notes(3, "intruders") }
        ])

      it.effect("inside a tenant scope, reads see only the scope's tenant", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const [tenantA, tenantB] = [uuid(), uuid()]
          const [a, b, none] = [stream(), stream(), stream()]
          const [start] = yield* collect(store.readAll({ direction: "backward", limit: 1 }))
          const after = start?.globalPosition ?? 0n
          yield* store.append(a, notes(2, "a"), { expectedVersion: ExpectedVersion.noStream, tenantId: tenantA })
          yield* store.append(b, notes(2, "b"), { expectedVersion: ExpectedVersion.noStream, tenantId: tenantB })
          yield* store.append(none, notes(2, "none"), { expectedVersion: ExpectedVersion.noStream })
          // Without a tenant the scope's tenant is the append's.
          const scoped = yield* store.forTenant(tenantA.toUpperCase())
          assert.strictEqual(scoped.tenantId, tenantA)
          yield* scoped.append(a, notes(1, "a-more"), { expectedVersion: ExpectedVersion.exact(2) })

          assert.deepStrictEqual(
            (yield* collect(scoped.readStream(a))).map((e) => [e.version, e.tenantId]),
            [
              [1, tenantA],
              [2, tenantA],
              [3, tenantA]
            ]
          )
          assert.strictEqual((yield* collect(scoped.readStreamEvents(a))).length, 3)
          for (const other of [b, none]) {
            assert.strictEqual((yield* collect(scoped.readStream(other))).length, 0)
            assert.strictEqual((yield* collect(scoped.readStream(other, { direction: "backward" }))).length, 0)
            assert.strictEqual((yield* collect(scoped.readStreamEvents(other))).length, 0)
          }
          const log = yield* collect(scoped.readAll({ after }))
          assert.deepStrictEqual(
            log.map((e) => [e.aggregateId, e.version]),
            [
              [a.aggregateId, 1],
              [a.aggregateId, 2],
              [a.aggregateId, 3]
            ]
          )
          assert.deepStrictEqual(
            (yield* collect(scoped.readAll({ after, tenantId: tenantA }))).map((e) => e.eventId),
            log.map((e) => e.eventId)
          )
          assert.deepStrictEqual(
            (yield* collect(scoped.readAll({ direction: "backward", limit: 3 }))).map((e) => e.version),
            [3, 2, 1]
          )
          // A filter naming another tenant is refused, not quietly emptied.
          const refused = yield* Effect.flip(collect(scoped.readAll({ tenantId: tenantB })))
          assert.strictEqual(refused._tag, "InvalidEventError")
          const refusedLive = yield* Effect.flip(collect(scoped.subscribe({ tenantId: tenantB })))
          assert.strictEqual(refusedLive._tag, "InvalidEventError")
          // Live: B's events between A's are never delivered.
          const live = yield* collect(scoped.subscribe({ after }).pipe(Stream.take(3)))
          assert.deepStrictEqual(
            live.map((e) => e.eventId),
            log.map((e) => e.eventId)
          )
          // The unscoped store still sees everyone.
          assert.strictEqual((yield* collect(store.readStream(b))).length, 2)
        })
      )

      it.effect("inside a tenant scope, an append to another tenant's stream fails typed and writes nothing", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const [tenantA, tenantB] = [uuid(), uuid()]
          const a = stream()
          yield* store.append(a, notes(2, "a"), { expectedVersion: ExpectedVersion.noStream, tenantId: tenantA })
          const scopedB = yield* store.forTenant(tenantB)
          for (const { events, expectedVersion } of attempts(2)) {
            const error = yield* Effect.flip(scopedB.append(a, events, { expectedVersion }))
            assert.strictEqual(error._tag, "TenantMismatchError", `${expectedVersion._tag}, ${events.length} events`)
            if (error._tag === "TenantMismatchError") {
              assert.strictEqual(error.reason, "StreamOfAnotherTenant")
              assert.strictEqual(error.tenantId, tenantB)
              assert.strictEqual(error.aggregateId, a.aggregateId)
            }
          }
          // Naming another tenant than the scope's is refused before anything is sent.
          const outside = yield* Effect.flip(
            scopedB.append(stream(), notes(1), { expectedVersion: ExpectedVersion.any, tenantId: tenantA })
          )
          assert.strictEqual(outside._tag, "TenantMismatchError")
          if (outside._tag === "TenantMismatchError") assert.strictEqual(outside.reason, "OutsideScope")
          const noTenant = yield* Effect.flip(
            scopedB.append(stream(), notes(1), { expectedVersion: ExpectedVersion.any, tenantId: null })
          )
          assert.strictEqual(noTenant._tag, "TenantMismatchError")
          // Replaying A's own event ids from B's scope is no replay.
          const stored = yield* collect(store.readStream(a))
          const replay = yield* Effect.flip(
            scopedB.append(
              a,
              stored.map((e) => ({ event: e.event, eventId: e.eventId, timestamp: e.timestamp })),
              { expectedVersion: ExpectedVersion.noStream }
            )
          )
          assert.strictEqual(replay._tag, "TenantMismatchError")
          const after = yield* collect(store.readStream(a))
          assert.deepStrictEqual(
            after.map((e) => [e.version, e.tenantId]),
            [
              [1, tenantA],
              [2, tenantA]
            ]
          )
          // A's own scope still appends, at the next version.
          const scopedA = yield* store.forTenant(tenantA)
          const result = yield* scopedA.append(a, notes(1), { expectedVersion: ExpectedVersion.exact(2) })
          assert.strictEqual(result.version, 3)
          // A scoped store does not enter another tenant; a malformed tenant is invalid.
          assert.strictEqual((yield* Effect.flip(scopedA.forTenant(tenantB)))._tag, "InvalidEventError")
          assert.strictEqual(yield* scopedA.forTenant(tenantA.toUpperCase()), scopedA)
          assert.strictEqual((yield* Effect.flip(store.forTenant("tenant-1")))._tag, "InvalidEventError")
        })
      )

      it.effect("a stream's tenant is fixed by its first append, also outside any scope", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const [tenantA, tenantB] = [uuid(), uuid()]
          const cases = [
            { first: tenantA, later: tenantB },
            { first: tenantA, later: null },
            { first: null, later: tenantA }
          ]
          for (const { first, later } of cases) {
            const s = stream()
            yield* store.append(s, notes(1), { expectedVersion: ExpectedVersion.noStream, tenantId: first })
            for (const { events, expectedVersion } of attempts(1)) {
              const error = yield* Effect.flip(store.append(s, events, { expectedVersion, tenantId: later }))
              assert.strictEqual(error._tag, "TenantMismatchError", `${first} later ${later}, ${expectedVersion._tag}`)
              if (error._tag === "TenantMismatchError") assert.strictEqual(error.reason, "StreamOfAnotherTenant")
            }
            const stored = yield* collect(store.readStream(s))
            assert.deepStrictEqual(
              stored.map((e) => [e.version, e.tenantId]),
              [[1, first]]
            )
            // The same tenant appends as usual, and a replay of its own ids is still a replay.
            const more = { ...note("more"), eventId: uuid() }
            const appended = yield* store.append(s, [more], {
              expectedVersion: ExpectedVersion.exact(1),
              tenantId: first
            })
            const replayed = yield* store.append(s, [more], {
              expectedVersion: ExpectedVersion.exact(1),
              tenantId: first
            })
            assert.deepStrictEqual(replayed, appended)
            const replayOther = yield* Effect.flip(
              store.append(s, [more], { expectedVersion: ExpectedVersion.exact(1), tenantId: later })
            )
            assert.strictEqual(replayOther._tag, "TenantMismatchError")
          }
        })
      )

      it.effect("a repository in a tenant scope neither loads nor saves another tenant's aggregate", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const Notebook = Aggregate.make({
            type: "Notebook",
            events: [NoteWritten],
            initialState: (): ReadonlyArray<string> => [],
            evolve: (state, event) => [...state, event.text]
          })
          const [tenantA, tenantB] = [uuid(), uuid()]
          const id = uuid()
          const write = (text: string) =>
            Aggregate.command(Notebook, () => Effect.succeed([NoteWritten.make({ text })]))(undefined)
          yield* Effect.gen(function* () {
            const repo = yield* AggregateRepository.make(Notebook)
            const root = yield* repo.create(id).pipe(write("A's secret"), Effect.flatMap(repo.save))
            assert.strictEqual(root.version, 1)
          }).pipe(EventStore.withTenant(tenantA), Effect.provideService(EventStore.EventStore, store))

          yield* Effect.gen(function* () {
            const repo = yield* AggregateRepository.make(Notebook)
            const loaded = yield* Effect.flip(repo.load(id))
            assert.strictEqual(loaded._tag, "StreamNotFoundError")
            const saved = yield* Effect.flip(repo.create(id).pipe(write("B's note"), Effect.flatMap(repo.save)))
            assert.strictEqual(saved._tag, "TenantMismatchError")
          }).pipe(Effect.provide(EventStore.layerTenant(tenantB)), Effect.provideService(EventStore.EventStore, store))
          const events = yield* collect(store.readStream({ aggregateId: id, aggregateType: "Notebook" }))
          assert.deepStrictEqual<unknown>(
            events.map((e) => [e.tenantId, e.event]),
            [[tenantA, { _tag: "NoteWritten", text: "A's secret" }]]
          )
        })
      )
    })

    describe("metadata", () => {
      const metadataOf = (events: ReadonlyArray<EventStore.RecordedEvent>) => events.map((e) => e.metadata)

      it.effect("correlation and causation come from the fiber's context, the append's options override them", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          // A type of its own: other tests' events never come up in its reads of the log.
          const metaType = `Meta${uuid().slice(0, 8)}`
          const [plain, command, overridden, cleared] = [stream(), stream(metaType), stream(), stream()]
          yield* store.append(plain, [note("a")], { expectedVersion: ExpectedVersion.noStream })
          yield* store
            .append(command, notes(2), { expectedVersion: ExpectedVersion.noStream })
            .pipe(EventMetadata.withCommand({ commandId: "cmd-1" }), EventMetadata.withCorrelationId("req-9"))
          yield* store
            .append(overridden, [note("b")], {
              expectedVersion: ExpectedVersion.noStream,
              correlationId: "corr-own",
              causationId: "cause-own"
            })
            .pipe(EventMetadata.withCommand({ commandId: "cmd-2", correlationId: "req-2" }))
          yield* store
            .append(cleared, [note("c")], { expectedVersion: ExpectedVersion.noStream, correlationId: null })
            .pipe(EventMetadata.withCommand({ commandId: "cmd-3" }))

          assert.deepStrictEqual(metadataOf(yield* collect(store.readStream(plain))), [EventMetadata.empty])
          const expected = { correlationId: "req-9", causationId: "cmd-1", traceparent: null }
          assert.deepStrictEqual(metadataOf(yield* collect(store.readStream(command))), [expected, expected])
          assert.deepStrictEqual(metadataOf(yield* collect(store.readStream(overridden))), [
            { correlationId: "corr-own", causationId: "cause-own", traceparent: null }
          ])
          assert.deepStrictEqual(metadataOf(yield* collect(store.readStream(cleared))), [
            { correlationId: null, causationId: "cmd-3", traceparent: null }
          ])
          // The global log and subscriptions carry the same.
          const byStream = yield* collect(store.readAll({ aggregateTypes: [metaType] }))
          assert.deepStrictEqual(metadataOf(byStream), [expected, expected])
          const [first] = yield* collect(store.subscribe({ aggregateTypes: [metaType] }).pipe(Stream.take(1)))
          assert.deepStrictEqual(first!.metadata, expected)
          // A reaction to an event is caused by it, in its correlation (its own id when it has none).
          assert.deepStrictEqual(EventMetadata.causalityOf(first!), {
            correlationId: "req-9",
            causationId: first!.eventId
          })
          const [lone] = yield* collect(store.readStream(plain))
          assert.deepStrictEqual(EventMetadata.causalityOf(lone!), {
            correlationId: lone!.eventId,
            causationId: lone!.eventId
          })
        })
      )

      it.effect("an append records the trace context of its span, or of a propagated parent", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const [traced, propagated, untraced] = [stream(), stream(), stream()]
          const [, spans] = yield* recordingSpans(
            store.append(traced, notes(2), { expectedVersion: ExpectedVersion.noStream })
          )
          const append = spans.find((span) => span.name === "EventStore.append")!
          const [one, two] = yield* collect(store.readStream(traced))
          assert.strictEqual(one!.metadata.traceparent, `00-${append.traceId}-${append.spanId}-01`)
          assert.strictEqual(two!.metadata.traceparent, one!.metadata.traceparent)
          assert.deepStrictEqual(EventMetadata.spanLink(one!)?.span, {
            _tag: "ExternalSpan",
            traceId: append.traceId,
            spanId: append.spanId,
            sampled: true,
            context: Context.empty()
          })

          // No tracer installed: a trace an upstream service propagated is recorded, a local span is not.
          const upstream = Tracer.externalSpan({
            traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
            spanId: "00f067aa0ba902b7",
            sampled: false
          })
          yield* store
            .append(propagated, [note("p")], { expectedVersion: ExpectedVersion.noStream })
            .pipe(Effect.withParentSpan(upstream))
          yield* store
            .append(untraced, [note("u")], { expectedVersion: ExpectedVersion.noStream })
            .pipe(Effect.withSpan("a local span nobody exports"))
          const [p] = yield* collect(store.readStream(propagated))
          assert.strictEqual(p!.metadata.traceparent, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
          const [u] = yield* collect(store.readStream(untraced))
          assert.deepStrictEqual(u!.metadata, EventMetadata.empty)
        })
      )

      it.effect("metadata that cannot be stored is an InvalidEventError and nothing is written", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const s = stream()
          for (const bad of [
            { correlationId: "" },
            { correlationId: "x".repeat(256) },
            { causationId: "nul\u0000" },
            { causationId: "\ud800" },
            { correlationId: 42 as unknown as string }
          ]) {
            const error = yield* Effect.flip(
              store.append(s, [note("x")], { expectedVersion: ExpectedVersion.noStream, ...bad })
            )
            assert.strictEqual(error._tag, "InvalidEventError", JSON.stringify(bad))
          }
          const fromContext = yield* Effect.flip(
            store
              .append(s, [note("x")], { expectedVersion: ExpectedVersion.noStream })
              .pipe(EventMetadata.withCorrelationId("y".repeat(300)))
          )
          assert.strictEqual(fromContext._tag, "InvalidEventError")
          assert.deepStrictEqual(yield* collect(store.readStream(s)), [])
        })
      )
    })

    describe("transactions", () => {
      it.effect("append joins the caller's transaction: a rollback leaves nothing, a commit keeps both", (ctx) =>
        Effect.gen(function* () {
          const h = yield* Harness
          const { sideRead, sideWrite, transaction } = yield* orSkip(
            ctx,
            Option.all({ transaction: h.transaction, sideWrite: h.sideWrite, sideRead: h.sideRead }),
            "this backend has no transactions"
          )
          const store = yield* withStore
          const s = stream()
          const marker = uuid()
          const failed = yield* Effect.flip(
            transaction(
              Effect.gen(function* () {
                yield* sideWrite(marker)
                yield* store.append(s, notes(3), { expectedVersion: ExpectedVersion.noStream })
                return yield* Effect.fail("boom" as const)
              })
            )
          )
          assert.strictEqual(failed, "boom")
          assert.strictEqual((yield* collect(store.readStream(s))).length, 0)
          assert.isFalse(yield* sideRead(marker))

          yield* transaction(
            Effect.gen(function* () {
              yield* sideWrite(marker)
              yield* store.append(s, notes(2), { expectedVersion: ExpectedVersion.noStream })
              // A conflict inside the transaction is a typed error and does not poison it.
              const conflict = yield* Effect.flip(
                store.append(s, notes(1), { expectedVersion: ExpectedVersion.noStream })
              )
              assert.strictEqual(conflict._tag, "ConcurrencyError")
              // A batch as well, and a duplicate id.
              const batchConflict = yield* Effect.flip(
                store.append(s, notes(3), { expectedVersion: ExpectedVersion.exact(1) })
              )
              assert.strictEqual(batchConflict._tag, "ConcurrencyError")
              const [first] = yield* collect(store.readStream(s))
              const duplicate = yield* Effect.flip(
                store.append(stream(), [{ ...note("again"), eventId: first!.eventId }], {
                  expectedVersion: ExpectedVersion.noStream
                })
              )
              assert.strictEqual(duplicate._tag, "DuplicateEventError")
              yield* store.append(s, notes(1), { expectedVersion: ExpectedVersion.exact(2) })
            })
          )
          assert.strictEqual((yield* collect(store.readStream(s))).length, 3)
          assert.isTrue(yield* sideRead(marker))
        })
      )
    })
  })

/**
 * The Outbox contract (the outbox half of DESIGN §2 and §5), run against every
 * backend: entries are written with the append, handed out at the head of their
 * aggregate under a lease, settled, retried, held behind failures, purged.
 *
 * @since 0.1.0
 */

import { assert, describe, layer } from "@effect/vitest"
import {
  type Errors,
  EventMetadata,
  type EventStore,
  ExpectedVersion,
  Outbox,
  OutboxRelay,
  Publisher,
  Telemetry
} from "@eventfold/core"
import * as Arr from "effect/Array"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { ItemAdded, NoteWritten } from "./EventStoreSuite.js"
import { eventually } from "./internal/eventually.js"
import { recorded } from "./internal/metrics.js"
import { orSkip } from "./internal/skip.js"

/**
 * One backend's event store and outbox over storage of their own.
 *
 * @since 0.1.0
 * @category models
 */
export interface OutboxBackend {
  readonly store: (options: { readonly outbox: boolean }) => EventStore.Service
  readonly outbox: Outbox.Service
  /** Runs an effect in one database transaction; none for backends without transactions. */
  readonly transaction: Option.Option<
    <A, E>(effect: Effect.Effect<A, E>) => Effect.Effect<A, E | Errors.EventStoreError>
  >
}

/**
 * What a backend gives the Outbox suite: a fresh event store and outbox for each test.
 *
 * @since 0.1.0
 * @category models
 */
export class OutboxHarness extends Context.Tag("@eventfold/testing/OutboxSuite/OutboxHarness")<
  OutboxHarness,
  { readonly fresh: Effect.Effect<OutboxBackend, never, Scope.Scope> }
>() {}

const uuid = () => crypto.randomUUID()
const note = (text: string): EventStore.EventToAppend => ({ event: NoteWritten.make({ text }) })
const notes = (n: number, prefix = "n") => Arr.makeBy(n, (i) => note(`${prefix}${i + 1}`))
const cart = () => ({ aggregateId: uuid(), aggregateType: "Cart" })
const lease = Duration.seconds(30)
const versions = (entries: ReadonlyArray<Outbox.Entry>) =>
  entries.map((e) => `${e.message.aggregateId.slice(0, 4)}:${e.message.version}`)

/**
 * Registers the Outbox conformance tests (vitest, through `@effect/vitest`) against the
 * backend the layer provides (the first argument names the `describe` block).
 *
 * @since 0.1.0
 * @category constructors
 */
export const suite = (name: string, harness: Layer.Layer<OutboxHarness, unknown>) =>
  layer(harness, { excludeTestServices: true, timeout: "120 seconds" })(`Outbox conformance: ${name}`, (it) => {
    const fresh = Effect.flatMap(OutboxHarness, (h) => h.fresh)

    describe("writing entries", () => {
      it.scoped("an append with the outbox enabled writes one entry per event, with its envelope", () =>
        Effect.gen(function* () {
          const { outbox, store } = yield* fresh
          const s = cart()
          const tenantId = uuid()
          const eventId = uuid()
          const timestamp = new Date("2024-05-06T07:08:09.123Z")
          const result = yield* store({ outbox: true })
            .append(
              s,
              [{ event: ItemAdded.make({ sku: "A-1", quantity: 2, price: 9.99 }), eventId, timestamp }, note("wrap")],
              { expectedVersion: ExpectedVersion.noStream, tenantId, actorId: "user-7" }
            )
            .pipe(EventMetadata.withCommand({ commandId: "cmd-7", correlationId: "req-7" }))
          const rows = yield* outbox.list()
          assert.strictEqual(rows.length, 2)
          const [first, second] = rows
          assert.deepInclude(first!.message, {
            eventId,
            eventType: "ItemAdded",
            aggregateId: s.aggregateId,
            aggregateType: "Cart",
            version: 1,
            globalPosition: result.firstPosition,
            tenantId,
            actorId: "user-7"
          })
          assert.strictEqual(first!.message.timestamp.toISOString(), timestamp.toISOString())
          // The relay sends the append's metadata as message headers.
          const metadata = { correlationId: "req-7", causationId: "cmd-7", traceparent: null }
          assert.deepStrictEqual(first!.message.metadata, metadata)
          assert.deepStrictEqual(second!.message.metadata, metadata)
          // And what it claims carries it too.
          const claimed = yield* outbox.claim({ owner: "m", limit: 10, lease })
          assert.deepStrictEqual(
            claimed.map((entry) => entry.message.metadata),
            [metadata, metadata]
          )
          assert.deepStrictEqual(JSON.parse(first!.message.payloadJson), { sku: "A-1", quantity: 2, price: 9.99 })
          assert.deepInclude(first!, { status: "pending", retryCount: 0, lastError: null, publishedAt: null })
          assert.deepInclude(second!.message, {
            eventType: "NoteWritten",
            version: 2,
            globalPosition: result.lastPosition
          })
        })
      )

      it.scoped("appends with the outbox disabled, and idempotent replays, write no entry", () =>
        Effect.gen(function* () {
          const { outbox, store } = yield* fresh
          yield* store({ outbox: false }).append(cart(), notes(3), { expectedVersion: ExpectedVersion.noStream })
          assert.strictEqual((yield* outbox.list()).length, 0)

          const s = cart()
          const events = notes(2).map((e) => ({ ...e, eventId: uuid() }))
          yield* store({ outbox: true }).append(s, events, { expectedVersion: ExpectedVersion.noStream })
          yield* store({ outbox: true }).append(s, events, { expectedVersion: ExpectedVersion.noStream })
          assert.strictEqual((yield* outbox.list()).length, 2)
        })
      )

      it.scoped("a rolled-back append leaves no entry", (ctx) =>
        Effect.gen(function* () {
          const backend = yield* fresh
          const { outbox, store } = backend
          const transaction = yield* orSkip(ctx, backend.transaction, "this backend has no transactions")
          const failure = yield* transaction(
            Effect.zipRight(
              store({ outbox: true }).append(cart(), notes(2), { expectedVersion: ExpectedVersion.noStream }),
              Effect.fail("rollback" as const)
            )
          ).pipe(Effect.flip)
          assert.strictEqual(failure, "rollback")
          assert.strictEqual((yield* outbox.list()).length, 0)
          assert.strictEqual((yield* outbox.stats).pending, 0)
        })
      )

      it.scoped("a committed append signals the wakeups", () =>
        Effect.gen(function* () {
          const { outbox, store } = yield* fresh
          const wakeups = yield* Ref.make(0)
          yield* outbox.wakeups.pipe(
            Stream.runForEach(() => Ref.update(wakeups, (n) => n + 1)),
            Effect.forkScoped
          )
          const append = Effect.suspend(() =>
            store({ outbox: true }).append(cart(), notes(1), { expectedVersion: ExpectedVersion.noStream })
          )
          // When the listener is in place cannot be seen from here: append until a wakeup comes,
          // giving each append a moment. Every wakeup is a committed append's.
          const first = yield* append.pipe(
            Effect.zipRight(
              Effect.option(eventually(Ref.get(wakeups), (n) => n > 0, { every: "10 millis", timeout: "0.5 seconds" }))
            ),
            Effect.repeat({ until: Option.isSome, times: 40 })
          )
          assert.isTrue(Option.isSome(first), "no wakeup after 40 committed appends")
          // Listening now: each committed append wakes it.
          for (let i = 0; i < 3; i++) {
            const before = yield* Ref.get(wakeups)
            yield* append
            yield* eventually(Ref.get(wakeups), (n) => n > before, {
              every: "10 millis",
              timeout: "10 seconds",
              what: `a wakeup for committed append ${i + 1}`
            })
          }
        })
      )
    })

    describe("claiming", () => {
      it.scoped("claims in global order, per aggregate a run of consecutive versions, under a lease", () =>
        Effect.gen(function* () {
          const { outbox, store } = yield* fresh
          const writer = store({ outbox: true })
          const a = cart()
          const b = cart()
          yield* writer.append(a, notes(2), { expectedVersion: ExpectedVersion.noStream })
          yield* writer.append(b, notes(2), { expectedVersion: ExpectedVersion.noStream })
          yield* writer.append(a, notes(1), { expectedVersion: ExpectedVersion.exact(2) })

          const first = yield* outbox.claim({ owner: "r1", limit: 3, lease })
          assert.deepStrictEqual(
            first.map((e) => [e.message.aggregateId, e.message.version]),
            [
              [a.aggregateId, 1],
              [a.aggregateId, 2],
              [b.aggregateId, 1]
            ]
          )
          // A's version 3 waits behind r1's lease on 1 and 2; B's version 2 behind its version 1.
          assert.deepStrictEqual(yield* outbox.claim({ owner: "r2", limit: 10, lease }), [])
          const stats = yield* outbox.stats
          assert.deepInclude(stats, { pending: 5, inFlight: 3, published: 0, failed: 0, held: 0 })
          assert.isTrue(Option.isSome(stats.oldestPendingAge))

          yield* outbox.settle({ owner: "r1", published: first.map((e) => e.id), failed: [], released: [] })
          const second = yield* outbox.claim({ owner: "r2", limit: 10, lease })
          assert.deepStrictEqual(
            second.map((e) => [e.message.aggregateId, e.message.version]),
            [
              [b.aggregateId, 2],
              [a.aggregateId, 3]
            ]
          )
          const published = yield* outbox.list({ status: "published" })
          assert.strictEqual(published.length, 3)
          assert.isTrue(published.every((row) => row.publishedAt !== null && row.claimedBy === null))
        })
      )

      it.scoped("a released entry, or one whose lease ran out, can be claimed again", () =>
        Effect.gen(function* () {
          const { outbox, store } = yield* fresh
          yield* store({ outbox: true }).append(cart(), notes(2), { expectedVersion: ExpectedVersion.noStream })
          const first = yield* outbox.claim({ owner: "r1", limit: 10, lease })
          assert.strictEqual(first.length, 2)
          assert.strictEqual(yield* outbox.release("r1"), 2)
          const second = yield* outbox.claim({ owner: "r2", limit: 10, lease: Duration.millis(1) })
          assert.deepStrictEqual(versions(second), versions(first))
          // r2 "crashed": once its lease is over, r3 gets the entries. Real time: a lease ends
          // by the store's clock (PostgreSQL's now()), which no TestClock moves.
          const third = yield* eventually(outbox.claim({ owner: "r3", limit: 10, lease }), (c) => c.length > 0, {
            every: "5 millis",
            what: "r2's lease to run out"
          })
          assert.deepStrictEqual(versions(third), versions(first))
          // r2's late report of a failure no longer touches r3's entries; its ack still counts.
          yield* outbox.settle({
            owner: "r2",
            published: [second[0]!.id],
            failed: [],
            released: [{ id: second[1]!.id, error: "late" }]
          })
          const rows = yield* outbox.list()
          assert.deepStrictEqual(
            rows.map((r) => [r.status, r.claimedBy, r.lastError]),
            [
              ["published", null, null],
              ["pending", "r3", null]
            ]
          )
        })
      )

      it.scoped("several claimers at once, failing now and then: each version goes out once, in order", () =>
        Effect.gen(function* () {
          const { outbox, store } = yield* fresh
          const writer = store({ outbox: true })
          const streams = Arr.makeBy(8, () => cart())
          // Interleaved appends: each stream gets 10 events in 5 appends.
          for (let round = 0; round < 5; round++) {
            for (const s of streams) {
              yield* writer.append(s, notes(2), { expectedVersion: ExpectedVersion.exact(round * 2) })
            }
          }
          const total = 80
          const published: Array<{ readonly aggregateId: string; readonly version: number }> = []
          const holders = new Map<string, string>()
          let failures = 0
          const worker = (owner: string) =>
            Effect.gen(function* () {
              const claimed = yield* outbox.claim({ owner, limit: 4, lease })
              if (claimed.length === 0) return 0
              for (const entry of claimed) {
                const holder = holders.get(entry.message.aggregateId)
                assert.isUndefined(holder, `${owner} claimed an aggregate ${holder} holds`)
              }
              for (const entry of claimed) holders.set(entry.message.aggregateId, owner)
              // Let the other claimers run while this one holds its entries.
              yield* Effect.yieldNow()
              // As a relay does: per aggregate in order; a failure hands back the rest of that aggregate.
              const settlement = {
                owner,
                published: [] as Array<string>,
                failed: [] as Array<Outbox.Settlement["failed"][number]>,
                released: [] as Array<{ id: string }>
              }
              const broken = new Set<string>()
              for (const entry of claimed) {
                const aggregate = entry.message.aggregateId
                if (broken.has(aggregate)) settlement.released.push({ id: entry.id })
                else if (Math.random() < 0.15) {
                  broken.add(aggregate)
                  failures++
                  settlement.failed.push({ id: entry.id, error: "flaky", retryAfter: Duration.millis(2) })
                } else {
                  settlement.published.push(entry.id)
                  published.push({ aggregateId: aggregate, version: entry.message.version })
                }
              }
              for (const entry of claimed) holders.delete(entry.message.aggregateId)
              yield* outbox.settle(settlement)
              return claimed.length
            }).pipe(
              // Until all is published; a claimer that found nothing (held or backing off) polls again shortly.
              Effect.repeat({
                while: () => published.length < total,
                schedule: Schedule.identity<number>().pipe(
                  Schedule.addDelay((claimed) => Duration.millis(claimed === 0 ? 3 : 0))
                )
              })
            )
          yield* Effect.all(
            Arr.makeBy(4, (i) => worker(`w${i}`)),
            { concurrency: "unbounded" }
          ).pipe(
            Effect.timeoutFail({
              duration: "45 seconds",
              onTimeout: () => new Error(`claimers did not finish: ${published.length} of ${total} published`)
            })
          )
          assert.strictEqual(published.length, total)
          assert.isAbove(failures, 0)
          for (const s of streams) {
            assert.deepStrictEqual(
              published.filter((p) => p.aggregateId === s.aggregateId).map((p) => p.version),
              Arr.makeBy(10, (i) => i + 1)
            )
          }
          assert.deepInclude(yield* outbox.stats, { pending: 0, published: total, failed: 0, inFlight: 0 })
        })
      )
    })

    describe("failures", () => {
      it.scoped(
        "a failed attempt is counted, noted and retried after its delay; a spent budget holds the aggregate",
        () =>
          Effect.gen(function* () {
            const { outbox, store } = yield* fresh
            const writer = store({ outbox: true })
            const a = cart()
            const b = cart()
            yield* writer.append(a, notes(3), { expectedVersion: ExpectedVersion.noStream })
            yield* writer.append(b, notes(1), { expectedVersion: ExpectedVersion.noStream })

            const first = yield* outbox.claim({ owner: "r1", limit: 10, lease })
            assert.strictEqual(first.length, 4)
            const [a1, a2, a3, b1] = first
            const settledAt = Date.now()
            yield* outbox.settle({
              owner: "r1",
              published: [b1!.id],
              failed: [{ id: a1!.id, error: "rejected: too large", retryAfter: Duration.seconds(1) }],
              released: [{ id: a2!.id }, { id: a3!.id }]
            })
            let rows = yield* outbox.list({ aggregateId: a.aggregateId })
            assert.deepStrictEqual(
              rows.map((r) => [r.status, r.retryCount, r.lastError, r.claimedBy]),
              [
                ["pending", 1, "rejected: too large", null],
                ["pending", 0, null, null],
                ["pending", 0, null, null]
              ]
            )
            assert.isNotNull(rows[0]!.nextAttemptAt)
            // Backing off: neither the entry nor the later ones of its aggregate are handed out.
            assert.deepStrictEqual(yield* outbox.claim({ owner: "r2", limit: 10, lease }), [])
            // Real time: the delay runs on the store's clock (PostgreSQL's now()); handed out once it is over.
            const retry = yield* eventually(outbox.claim({ owner: "r2", limit: 10, lease }), (c) => c.length > 0, {
              every: "20 millis",
              what: "the retry delay to end"
            })
            assert.isAtLeast(Date.now() - settledAt, 990, "handed out again before its retry delay")
            assert.deepStrictEqual(versions(retry), versions([a1!, a2!, a3!]))
            assert.strictEqual(retry[0]!.retryCount, 1)

            // Budget spent: failed, and versions 2 and 3 are held.
            yield* outbox.settle({
              owner: "r2",
              published: [],
              failed: [{ id: a1!.id, error: "rejected again", retryAfter: null }],
              released: [{ id: a2!.id }, { id: a3!.id }]
            })
            assert.deepStrictEqual(yield* outbox.claim({ owner: "r3", limit: 10, lease }), [])
            assert.deepInclude(yield* outbox.stats, { pending: 2, failed: 1, published: 1, held: 2, inFlight: 0 })
            rows = yield* outbox.list({ status: "failed" })
            assert.deepStrictEqual(
              rows.map((r) => [r.message.eventId, r.retryCount, r.lastError]),
              [[a1!.message.eventId, 2, "rejected again"]]
            )

            // Other aggregates go on.
            const c = cart()
            yield* writer.append(c, notes(1), { expectedVersion: ExpectedVersion.noStream })
            const other = yield* outbox.claim({ owner: "r3", limit: 10, lease })
            assert.deepStrictEqual(
              other.map((e) => e.message.aggregateId),
              [c.aggregateId]
            )

            // retryFailed puts it back with a fresh budget, and the aggregate moves again.
            assert.strictEqual(yield* outbox.retryFailed({ eventIds: [uuid()] }), 0)
            assert.strictEqual(yield* outbox.retryFailed(), 1)
            const again = yield* outbox.claim({ owner: "r4", limit: 10, lease })
            assert.deepStrictEqual(versions(again), versions([a1!, a2!, a3!]))
            assert.strictEqual(again[0]!.retryCount, 0)
            assert.deepInclude(yield* outbox.stats, { failed: 0, held: 0 })
          })
      )
    })

    describe("held entries", () => {
      it.scoped("entries held behind a failed or leased one never fill a claim: the aggregates after them flow", () =>
        Effect.gen(function* () {
          const { outbox, store } = yield* fresh
          const writer = store({ outbox: true })
          const failed = cart()
          const leased = cart()
          yield* writer.append(failed, notes(6), { expectedVersion: ExpectedVersion.noStream })
          yield* writer.append(leased, notes(6), { expectedVersion: ExpectedVersion.noStream })
          // The first aggregate's version 1 fails for good; the second's version 1 is out on a lease.
          const [f1] = yield* outbox.claim({ owner: "r1", limit: 1, lease })
          yield* outbox.settle({
            owner: "r1",
            published: [],
            failed: [{ id: f1!.id, error: "poison", retryAfter: null }],
            released: []
          })
          yield* outbox.settle({ owner: "r1", published: [], failed: [], released: [] })
          const [l1] = yield* outbox.claim({ owner: "r2", limit: 1, lease })
          assert.strictEqual(l1!.message.aggregateId, leased.aggregateId)
          const later = cart()
          yield* writer.append(later, notes(2), { expectedVersion: ExpectedVersion.noStream })
          // Ten entries wait behind the two heads, ahead of the later aggregate in the log: a claim of
          // three must pass them by, not stop at them.
          const claimed = yield* outbox.claim({ owner: "r3", limit: 3, lease })
          assert.deepStrictEqual(
            versions(claimed),
            versions(claimed.filter((e) => e.message.aggregateId === later.aggregateId))
          )
          assert.deepStrictEqual(
            claimed.map((e) => [e.message.aggregateId, e.message.version]),
            [
              [later.aggregateId, 1],
              [later.aggregateId, 2]
            ]
          )
        })
      )
    })

    describe("parking", () => {
      it.scoped("a parked entry is set aside with who and why, and the rest of its aggregate flows on", () =>
        Effect.gen(function* () {
          const { outbox, store } = yield* fresh
          const writer = store({ outbox: true })
          const poisoned = cart()
          yield* writer.append(poisoned, notes(3), { expectedVersion: ExpectedVersion.noStream })
          const [p1, p2, p3] = yield* outbox.claim({ owner: "r1", limit: 10, lease })
          yield* outbox.settle({
            owner: "r1",
            published: [p1!.id],
            failed: [{ id: p2!.id, error: "max_payload size exceeded", retryAfter: null }],
            released: [{ id: p3!.id }]
          })
          assert.deepInclude(yield* outbox.stats, { failed: 1, held: 1, parked: 0 })
          assert.deepStrictEqual(yield* outbox.claim({ owner: "r2", limit: 10, lease }), [])

          // Input the columns could not store is refused alike on every backend, and parks nothing.
          for (const bad of [
            { eventIds: ["not-a-uuid"], by: "ops", reason: "r" },
            { eventIds: [p2!.message.eventId], by: "", reason: "r" },
            { eventIds: [p2!.message.eventId], by: "x".repeat(256), reason: "r" },
            { eventIds: [p2!.message.eventId], by: "ops", reason: "nul \u0000 inside" }
          ]) {
            const error = yield* Effect.flip(outbox.park(bad))
            assert.strictEqual(error._tag, "OutboxError")
          }
          assert.strictEqual((yield* Effect.flip(outbox.retryFailed({ eventIds: ["nope"] })))._tag, "OutboxError")
          assert.deepInclude(yield* outbox.stats, { failed: 1, parked: 0 })

          // Only failed entries are parked: a pending or published one is left as it is.
          const ids = [p1!.message.eventId, p3!.message.eventId]
          assert.strictEqual(yield* outbox.park({ eventIds: ids, by: "ops", reason: "no" }), 0)
          const parked = yield* outbox.park({
            eventIds: [p2!.message.eventId.toUpperCase()],
            by: "alice (on call)",
            reason: "payload over the broker's max_payload; consumers rebuild from the store"
          })
          assert.strictEqual(parked, 1)
          assert.deepInclude(yield* outbox.stats, { failed: 0, held: 0, parked: 1, pending: 1, published: 1 })
          const [row] = yield* outbox.list({ status: "parked" })
          assert.strictEqual(row!.message.eventId, p2!.message.eventId)
          assert.strictEqual(row!.lastError, "max_payload size exceeded")
          assert.deepInclude(row!.parked, {
            by: "alice (on call)",
            reason: "payload over the broker's max_payload; consumers rebuild from the store"
          })
          assert.instanceOf(row!.parked!.at, Date)

          // Version 3 flows on, and so do later ones.
          yield* writer.append(poisoned, notes(1), { expectedVersion: ExpectedVersion.exact(3) })
          const next = yield* outbox.claim({ owner: "r3", limit: 10, lease })
          assert.deepStrictEqual(
            next.map((e) => e.message.version),
            [3, 4]
          )
          yield* outbox.settle({ owner: "r3", published: next.map((e) => e.id), failed: [], released: [] })

          // retryFailed leaves parked entries alone unless they are named.
          assert.strictEqual(yield* outbox.retryFailed(), 0)
          assert.strictEqual(yield* outbox.retryFailed({ eventIds: [p2!.message.eventId] }), 1)
          const [back] = yield* outbox.list({ aggregateId: poisoned.aggregateId, status: "pending" })
          assert.strictEqual(back!.message.version, 2)
          assert.isNull(back!.parked)
          assert.deepStrictEqual(
            (yield* outbox.claim({ owner: "r4", limit: 10, lease })).map((e) => e.message.version),
            [2]
          )
        })
      )
    })

    describe("relay metrics", () => {
      it.scoped(
        "the relay counts what it sent, what was refused and what gave up, times its publishes, and samples the backlog, while metrics are on",
        () =>
          Effect.gen(function* () {
            const { outbox, store } = yield* fresh
            const writer = store({ outbox: true })
            const good = cart()
            const bad = cart()
            // A destination of this test's own: the series below are this test's alone.
            const destination = `orders-${uuid()}`
            const publisher = Publisher.make({
              system: "test",
              destination,
              publishOne: (message) =>
                message.aggregateId === bad.aggregateId
                  ? Effect.fail(new Publisher.PublishError({ reason: "Rejected", message: "too large" }))
                  : Effect.succeed({ duplicate: false })
            })
            const relay = yield* OutboxRelay.make({ start: false, retryBudget: 1 }).pipe(
              Effect.provideService(Outbox.Outbox, outbox),
              Effect.provideService(Publisher.Publisher, publisher)
            )
            const messaging = {
              [Telemetry.Attributes.messagingSystem]: "test",
              [Telemetry.Attributes.messagingOperationName]: "publish",
              [Telemetry.Attributes.messagingOperationType]: "send",
              [Telemetry.Attributes.messagingDestination]: destination
            }
            const tagged = <Type, In, Out>(metric: Metric.Metric<Type, In, Out>, extra: Record<string, string> = {}) =>
              Metric.value(
                Metric.taggedWithLabels(
                  metric,
                  Object.entries({ ...messaging, ...extra }).map(([key, value]) => MetricLabel.make(key, value))
                )
              )
            const gauges = Effect.all([
              Metric.value(Telemetry.outboxMetrics.pending),
              Metric.value(Telemetry.outboxMetrics.oldestPendingAge)
            ])
            // Values no sample can have: a gauge that keeps them was not sampled.
            const unsampled = Effect.all([
              Metric.set(Telemetry.outboxMetrics.pending, -1),
              Metric.set(Telemetry.outboxMetrics.oldestPendingAge, -1)
            ])

            // Off: the relay publishes and records nothing.
            yield* unsampled
            yield* writer.append(cart(), notes(1), { expectedVersion: ExpectedVersion.noStream })
            assert.strictEqual((yield* relay.drain).published, 1)
            for (const name of [Telemetry.Metrics.messagesSent, Telemetry.Metrics.publishDuration]) {
              assert.isFalse(yield* recorded(name, messaging), `${name} recorded with metrics off`)
            }
            assert.deepStrictEqual(
              (yield* gauges).map((g) => g.value),
              [-1, -1]
            )

            // On: three acknowledged; the bad aggregate's first refused (its budget spent), its second not tried.
            yield* writer.append(good, notes(3), { expectedVersion: ExpectedVersion.noStream })
            yield* writer.append(bad, notes(2), { expectedVersion: ExpectedVersion.noStream })
            const report = yield* relay.drain.pipe(
              Effect.locally(Telemetry.metricsEnabled, true),
              // The budget spent is logged as an error: expected here.
              Logger.withMinimumLogLevel(LogLevel.None)
            )
            assert.deepInclude(report, { published: 3, failed: 1, exhausted: 1, released: 1 })
            assert.strictEqual((yield* tagged(Telemetry.outboxMetrics.sent)).count, 3)
            assert.strictEqual(
              (yield* tagged(Telemetry.outboxMetrics.sent, { [Telemetry.Attributes.errorType]: "Rejected" })).count,
              1
            )
            assert.strictEqual((yield* tagged(Telemetry.outboxMetrics.failed)).count, 1)
            // One publish: the second claim of the drain found the bad aggregate held.
            assert.strictEqual((yield* tagged(Telemetry.outboxMetrics.duration)).count, 1)
            // Sampled once, before the first claim: the drain's second batch came within the poll interval.
            const [pending, oldest] = yield* gauges
            assert.strictEqual(pending.value, 5)
            assert.isAtLeast(oldest.value, 0)
            assert.isBelow(oldest.value, 60)
          })
      )
    })

    describe("maintenance", () => {
      it.scoped("deletePublished removes published entries older than the given age, nothing else", () =>
        Effect.gen(function* () {
          const { outbox, store } = yield* fresh
          yield* store({ outbox: true }).append(cart(), notes(3), { expectedVersion: ExpectedVersion.noStream })
          const claimed = yield* outbox.claim({ owner: "r1", limit: 2, lease })
          yield* outbox.settle({ owner: "r1", published: claimed.map((e) => e.id), failed: [], released: [] })
          assert.strictEqual(yield* outbox.deletePublished("7 days"), 0)
          // Real time: the age is measured by the store's clock (PostgreSQL's now()).
          const deleted = yield* eventually(outbox.deletePublished("10 millis"), (n) => n > 0, {
            every: "5 millis",
            what: "the published entries to be 10 ms old"
          })
          assert.strictEqual(deleted, 2)
          const rows = yield* outbox.list()
          assert.deepStrictEqual(
            rows.map((r) => [r.status, r.message.version]),
            [["pending", 3]]
          )
          assert.deepInclude(yield* outbox.stats, { pending: 1, published: 0 })
        })
      )
    })
  })

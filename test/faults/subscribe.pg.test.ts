/**
 * Subscriptions on PostgreSQL under concurrency and faults (DESIGN §5):
 *
 * - the skip test: 8 writers, in transactions that do other work first, commit after
 *   random delays or roll back at random, while subscribers follow the log: every
 *   committed event is delivered exactly once, in one order, none of the rolled back;
 * - a transaction that appended and stays open holds readers back: the stall is
 *   reported (log, Stalled message, the eventfold_log_writers view) and readers resume
 *   when it ends; a long transaction that never wrote to the log holds nobody back;
 * - appends wake subscribers through NOTIFY; a lost LISTEN connection is logged,
 *   polled around and reconnected.
 *
 * Sizes come from the environment for local stress runs:
 * EVENTFOLD_SKIP_TEST_EVENTS (default 20000), EVENTFOLD_SKIP_TEST_WRITERS (default 8).
 */

import { assert, describe, layer } from "@effect/vitest"
import { Event, EventRegistry, type EventStore, ExpectedVersion, type Subscription, Telemetry } from "@eventfold/core"
import { PgEventStore } from "@eventfold/pg"
import * as Arr from "effect/Array"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Logger from "effect/Logger"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import pg from "pg"
import { Backend, eventually, postgresql } from "../support/projectionHarness.js"

const Noted = Event.make("Noted", { writer: Schema.Int, n: Schema.Int })
const registry = EventRegistry.make(Noted)

const envInt = (name: string, fallback: number) => {
  const value = Number.parseInt(process.env[name] ?? "", 10)
  return Number.isSafeInteger(value) && value > 0 ? value : fallback
}
const TOTAL_EVENTS = envInt("EVENTFOLD_SKIP_TEST_EVENTS", 20_000)
const WRITERS = envInt("EVENTFOLD_SKIP_TEST_WRITERS", 8)

const uuid = () => crypto.randomUUID()
const collect = <A, E>(s: Stream.Stream<A, E>) => Effect.map(Stream.runCollect(s), Chunk.toReadonlyArray)

/** A store of its own (its own watcher), with the given subscription settings. */
const storeWith = (subscriptions: NonNullable<PgEventStore.Options["subscriptions"]>) =>
  Effect.flatMap(Backend, (b) => {
    const database = Option.getOrThrow(b.database)
    return PgEventStore.make({ registry, subscriptions }).pipe(
      Effect.provide(database.pool),
      Scope.extend(database.scope)
    )
  })

/** A bystander session that counts the notifications appends send, for as long as the scope lasts. */
const notificationCounter = (url: string) =>
  Effect.gen(function* () {
    const received = yield* Ref.make(0)
    yield* Effect.acquireRelease(
      Effect.promise(async () => {
        const client = new pg.Client({ connectionString: url })
        await client.connect()
        client.on("notification", () => Effect.runSync(Ref.update(received, (n) => n + 1)))
        await client.query("LISTEN eventfold_events")
        return client
      }),
      (client) => Effect.promise(() => client.end())
    )
    return received
  })

/** Collects what the watcher logs while `effect` runs (the watcher logs through its first subscriber's logger). */
const capturingLogs = <A, E, R>(effect: (logs: Ref.Ref<Array<string>>) => Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const logs = yield* Ref.make<Array<string>>([])
    const logger = Logger.make(({ logLevel, message }) =>
      Effect.runSync(Ref.update(logs, (l) => [...l, `${logLevel.label} ${[message].flat().join(" ")}`]))
    )
    return yield* effect(logs).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
  })

layer(postgresql({ poolSize: 12 }), { excludeTestServices: true, timeout: "240 seconds" })(
  "Subscriptions on PostgreSQL",
  (it) => {
    describe("the skip test", () => {
      it.effect(
        `${WRITERS} writers, ${TOTAL_EVENTS} events, random commit delays and rollbacks: each committed event once, in one order`,
        () =>
          Effect.gen(function* () {
            const b = yield* Backend
            const sql = Option.getOrThrow(b.database).sql
            const store = yield* b.store(registry)
            const aggregateType = `Skip${uuid().slice(0, 8)}`
            const streams = Arr.makeBy(64, () => ({ aggregateId: uuid(), aggregateType }))
            const committed = new Set<string>()
            const rolledBack = new Set<string>()
            const perWriter = Math.ceil(TOTAL_EVENTS / WRITERS)

            const writer = (w: number) =>
              Effect.gen(function* () {
                let written = 0
                let n = 0
                while (written < perWriter) {
                  const size = Math.min(yield* Random.nextIntBetween(1, 6), perWriter - written)
                  const events = Arr.makeBy(
                    size,
                    (): EventStore.EventToAppend => ({
                      event: Noted.make({ writer: w, n: n++ }),
                      eventId: uuid()
                    })
                  )
                  const stream = streams[yield* Random.nextIntBetween(0, streams.length)]!
                  const rollback = (yield* Random.next) < 0.1
                  const otherWork = (yield* Random.next) < 0.5
                  const bare = !rollback && (yield* Random.next) < 0.2
                  // Commit delays: mostly short, sometimes long enough to overtake many others.
                  const delay =
                    (yield* Random.next) < 0.03
                      ? yield* Random.nextIntBetween(20, 80)
                      : yield* Random.nextIntBetween(0, 4)
                  const ids = events.map((e) => e.eventId!)
                  if (bare) {
                    yield* store.append(stream, events, { expectedVersion: ExpectedVersion.any })
                    for (const id of ids) committed.add(id)
                  } else {
                    const result = yield* sql
                      .withTransaction(
                        Effect.gen(function* () {
                          // Work before the append: the transaction is older than its positions.
                          if (otherWork) yield* sql`INSERT INTO side_effects (value) VALUES (${uuid()})`
                          yield* store.append(stream, events, { expectedVersion: ExpectedVersion.any })
                          if (delay > 0) yield* Effect.sleep(`${delay} millis`)
                          if (otherWork) yield* sql`SELECT count(*) FROM side_effects`
                          if (rollback) return yield* Effect.fail("rollback" as const)
                        })
                      )
                      .pipe(Effect.either)
                    for (const id of ids) (result._tag === "Right" ? committed : rolledBack).add(id)
                  }
                  written += size
                }
              })

            const seen: Array<EventStore.RecordedEvent> = []
            const late: Array<EventStore.RecordedEvent> = []
            const startPosition =
              (yield* collect(store.readAll({ direction: "backward", limit: 1 })))[0]?.globalPosition ?? 0n
            const first = yield* Effect.fork(
              Stream.runForEach(store.subscribe({ aggregateTypes: [aggregateType], batchSize: 1000 }), (e) =>
                Effect.sync(() => seen.push(e))
              )
            )
            // A naive reader, for comparison: readAll after the last position it saw.
            let naiveCursor = startPosition
            let naiveCount = 0
            const naive = yield* Effect.fork(
              Effect.gen(function* () {
                const page = yield* collect(store.readAll({ aggregateTypes: [aggregateType], after: naiveCursor }))
                naiveCount += page.length
                if (page.length > 0) naiveCursor = page[page.length - 1]!.globalPosition
                yield* Effect.sleep("20 millis")
              }).pipe(Effect.forever)
            )
            const writers = yield* Effect.fork(Effect.all(Arr.makeBy(WRITERS, writer), { concurrency: "unbounded" }))
            // A second subscriber joins midway: catch-up, then live, under load.
            yield* Effect.sleep("1 second")
            const second = yield* Effect.fork(
              Stream.runForEach(store.subscribe({ aggregateTypes: [aggregateType], batchSize: 250 }), (e) =>
                Effect.sync(() => late.push(e))
              )
            )
            const started = Date.now()
            yield* Fiber.join(writers)
            const wrote = Date.now() - started
            // Everything committed arrives...
            yield* eventually(
              Effect.sync(() => seen.length >= committed.size && late.length >= committed.size),
              (done) => done,
              { every: "50 millis", timeout: "60 seconds" }
            )
            // ...and nothing more (no duplicate, nothing rolled back), however long we wait.
            yield* Effect.sleep("1 second")
            yield* Fiber.interrupt(first)
            yield* Fiber.interrupt(second)
            yield* Fiber.interrupt(naive)

            const log = yield* collect(store.readAll({ aggregateTypes: [aggregateType] }))
            assert.strictEqual(log.length, committed.size)
            for (const [name, delivered] of [
              ["first", seen],
              ["second", late]
            ] as const) {
              assert.strictEqual(delivered.length, committed.size, `${name}: count`)
              assert.strictEqual(new Set(delivered.map((e) => e.eventId)).size, delivered.length, `${name}: duplicates`)
              assert.isFalse(
                delivered.some((e) => rolledBack.has(e.eventId)),
                `${name}: delivered a rolled-back event`
              )
              // One order: the log's.
              assert.deepStrictEqual(
                delivered.map((e) => e.eventId),
                log.map((e) => e.eventId),
                `${name}: order`
              )
            }
            const checks = yield* Metric.value(Metric.counter(Telemetry.Metrics.horizonChecks, { incremental: true }))
            yield* Effect.logInfo(
              `skip test: ${committed.size} committed, ${rolledBack.size} rolled back, written in ${wrote} ms; a naive position reader saw ${naiveCount} of ${committed.size}; ${checks.count} horizon checks`
            )
          })
      )
    })

    describe("stalls", () => {
      it.effect(
        "an open transaction that appended holds readers back, is reported, and readers resume when it ends",
        () =>
          capturingLogs((logs) =>
            Effect.gen(function* () {
              const b = yield* Backend
              const sql = Option.getOrThrow(b.database).sql
              const store = yield* storeWith({ pollInterval: "100 millis", stallThreshold: "700 millis" })
              const aggregateType = `Stall${uuid().slice(0, 8)}`
              const s = () => ({ aggregateId: uuid(), aggregateType })
              const messages: Array<Subscription.Message> = []
              const follower = yield* Effect.fork(
                Stream.runForEach(store.subscribeMessages({ aggregateTypes: [aggregateType] }), (m) =>
                  Effect.sync(() => messages.push(m))
                )
              )
              const events = () => messages.filter((m) => m._tag === "Event")
              yield* store.append(s(), [{ event: Noted.make({ writer: 0, n: 0 }) }], {
                expectedVersion: ExpectedVersion.noStream
              })
              // Delivered before the long transaction begins. (Had no refresh seen it commit before
              // that transaction took a position, it would be held back with the later ones.)
              yield* eventually(Effect.sync(events), (e) => e.length === 1, { every: "5 millis", timeout: "5 seconds" })
              const pid = yield* Ref.make(0)
              const release = yield* Effect.makeLatch(false)
              const holder = yield* Effect.fork(
                sql.withTransaction(
                  Effect.gen(function* () {
                    const [row] = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
                    yield* Ref.set(pid, row!.pid)
                    yield* store.append(s(), [{ event: Noted.make({ writer: 1, n: 1 }) }], {
                      expectedVersion: ExpectedVersion.noStream
                    })
                    yield* release.await
                  })
                )
              )
              yield* Effect.sleep("100 millis")
              // Appended and committed after the holder took its position: held back with it.
              yield* store.append(s(), [{ event: Noted.make({ writer: 2, n: 2 }) }], {
                expectedVersion: ExpectedVersion.noStream
              })
              yield* Effect.sleep("1500 millis")
              assert.strictEqual(events().length, 1, "nothing past the open transaction's position is delivered")
              const stalled = messages.filter(
                (m): m is Extract<Subscription.Message, { _tag: "Stalled" }> => m._tag === "Stalled"
              )
              assert.isAtLeast(stalled.length, 1)
              const stall = stalled.at(-1)!.stall
              const holderPid = yield* Ref.get(pid)
              assert.strictEqual(stall.holders.length, 1)
              assert.deepInclude(stall.holders[0]!, { pid: holderPid, state: "idle in transaction" })
              assert.isAtLeast(stall.holders[0]!.transactionAgeMillis!, 700)
              assert.isAtLeast(stall.heldForMillis, 700)
              assert.isTrue(stall.position < stall.waitingUpTo)
              const warning = (yield* Ref.get(logs)).find((l) => l.startsWith("WARN") && l.includes("held back"))
              assert.isDefined(warning)
              assert.include(warning!, `pid ${holderPid}`)
              assert.include(warning!, "idle in transaction")
              // Queryable from SQL too, from any session.
              const writers = yield* sql<{ pid: number; state: string }>`SELECT pid, state FROM eventfold_log_writers`
              assert.isTrue(writers.some((w) => w.pid === holderPid && w.state === "idle in transaction"))

              yield* release.open
              yield* Fiber.join(holder)
              yield* eventually(Effect.sync(events), (e) => e.length === 3, {
                every: "20 millis",
                timeout: "5 seconds"
              })
              assert.deepStrictEqual(
                events().map(
                  (m) => ((m as { event: EventStore.RecordedEvent }).event.event as typeof Noted.Type).writer
                ),
                [0, 1, 2]
              )
              yield* Effect.sleep("300 millis")
              assert.isTrue((yield* Ref.get(logs)).some((l) => l.startsWith("INFO") && l.includes("resumed")))
              yield* Fiber.interrupt(follower)
            })
          )
      )

      it.effect("a long transaction that never wrote to the log holds nobody back", () =>
        Effect.gen(function* () {
          const b = yield* Backend
          const sql = Option.getOrThrow(b.database).sql
          const store = yield* storeWith({ pollInterval: "100 millis", stallThreshold: "500 millis" })
          const aggregateType = `Unrelated${uuid().slice(0, 8)}`
          const release = yield* Effect.makeLatch(false)
          // Holds an xid (it wrote elsewhere) and a snapshot, for the whole test.
          const unrelated = yield* Effect.fork(
            sql.withTransaction(
              Effect.zipRight(sql`INSERT INTO side_effects (value) VALUES (${uuid()})`, release.await)
            )
          )
          const messages: Array<Subscription.Message> = []
          const follower = yield* Effect.fork(
            Stream.runForEach(store.subscribeMessages({ aggregateTypes: [aggregateType] }), (m) =>
              Effect.sync(() => messages.push(m))
            )
          )
          yield* Effect.sleep("800 millis")
          const started = Date.now()
          yield* store.append({ aggregateId: uuid(), aggregateType }, [{ event: Noted.make({ writer: 0, n: 0 }) }], {
            expectedVersion: ExpectedVersion.noStream
          })
          yield* eventually(
            Effect.sync(() => messages.some((m) => m._tag === "Event")),
            (done) => done,
            { every: "5 millis", timeout: "2 seconds" }
          )
          assert.isBelow(Date.now() - started, 500)
          assert.isFalse(messages.some((m) => m._tag === "Stalled"))
          yield* release.open
          yield* Fiber.join(unrelated)
          yield* Fiber.interrupt(follower)
        })
      )

      it.effect("a held transaction that rolls back releases readers and delivers nothing of its own", () =>
        Effect.gen(function* () {
          const b = yield* Backend
          const sql = Option.getOrThrow(b.database).sql
          const store = yield* storeWith({ pollInterval: "100 millis", stallThreshold: "500 millis" })
          const aggregateType = `Rollback${uuid().slice(0, 8)}`
          const release = yield* Effect.makeLatch(false)
          const received: Array<EventStore.RecordedEvent> = []
          const follower = yield* Effect.fork(
            Stream.runForEach(store.subscribe({ aggregateTypes: [aggregateType] }), (e) =>
              Effect.sync(() => received.push(e))
            )
          )
          const doomed = yield* Effect.fork(
            sql
              .withTransaction(
                Effect.gen(function* () {
                  yield* store.append(
                    { aggregateId: uuid(), aggregateType },
                    [{ event: Noted.make({ writer: 9, n: 9 }) }],
                    {
                      expectedVersion: ExpectedVersion.noStream
                    }
                  )
                  yield* release.await
                  return yield* Effect.fail("rollback" as const)
                })
              )
              .pipe(Effect.either)
          )
          yield* Effect.sleep("100 millis")
          yield* store.append({ aggregateId: uuid(), aggregateType }, [{ event: Noted.make({ writer: 1, n: 1 }) }], {
            expectedVersion: ExpectedVersion.noStream
          })
          yield* Effect.sleep("700 millis")
          assert.strictEqual(received.length, 0)
          yield* release.open
          yield* Fiber.join(doomed)
          yield* eventually(
            Effect.sync(() => received.length),
            (n) => n >= 1,
            { every: "10 millis", timeout: "3 seconds" }
          )
          yield* Effect.sleep("300 millis")
          assert.deepStrictEqual(
            received.map((e) => (e.event as typeof Noted.Type).writer),
            [1]
          )
          yield* Fiber.interrupt(follower)
        })
      )
    })

    describe("wake-ups", () => {
      it.effect("appends wake subscribers through NOTIFY, long before the next poll", () =>
        Effect.gen(function* () {
          const store = yield* storeWith({ pollInterval: "30 seconds" })
          const aggregateType = `Notify${uuid().slice(0, 8)}`
          const received: Array<number> = []
          const follower = yield* Effect.fork(
            Stream.runForEach(store.subscribe({ aggregateTypes: [aggregateType] }), () =>
              Effect.sync(() => received.push(Date.now()))
            )
          )
          yield* Effect.sleep("500 millis")
          for (let i = 0; i < 5; i++) {
            const started = Date.now()
            yield* store.append({ aggregateId: uuid(), aggregateType }, [{ event: Noted.make({ writer: 0, n: i }) }], {
              expectedVersion: ExpectedVersion.noStream
            })
            yield* eventually(
              Effect.sync(() => received.length),
              (n) => n > i,
              { every: "2 millis", timeout: "5 seconds" }
            )
            assert.isBelow(received[i]! - started, 1000)
          }
          yield* Fiber.interrupt(follower)
        })
      )

      it.effect(
        "appends notify only while a subscriber waits (NOTIFY serializes commits), and always above READ COMMITTED",
        () =>
          Effect.gen(function* () {
            const b = yield* Backend
            const { sql, url } = Option.getOrThrow(b.database)
            const store = yield* storeWith({ pollInterval: "30 seconds" })
            const aggregateType = `Quiet${uuid().slice(0, 8)}`
            const received = yield* notificationCounter(url)
            const append = () =>
              store.append({ aggregateId: uuid(), aggregateType }, [{ event: Noted.make({ writer: 0, n: 0 }) }], {
                expectedVersion: ExpectedVersion.noStream
              })
            const notifiedBy = <E>(effect: Effect.Effect<unknown, E>) =>
              Effect.gen(function* () {
                const before = yield* Ref.get(received)
                yield* effect
                yield* Effect.sleep("150 millis")
                return (yield* Ref.get(received)) - before
              })
            const waiting = sql<{ n: number }>`SELECT count(*)::int AS n FROM eventfold_listeners WHERE waiting`
            // Nobody waits: no notification.
            yield* eventually(waiting, (rows) => rows[0]!.n === 0)
            assert.strictEqual(yield* notifiedBy(append()), 0)
            // A subscriber waits: appends notify, and it is woken long before its 30 s poll.
            const delivered: Array<EventStore.RecordedEvent> = []
            const follower = yield* Effect.fork(
              Stream.runForEach(store.subscribe({ aggregateTypes: [aggregateType] }), (e) =>
                Effect.sync(() => delivered.push(e))
              )
            )
            yield* eventually(waiting, (rows) => rows[0]!.n === 1)
            assert.isAtLeast(yield* notifiedBy(append()), 1)
            yield* eventually(
              Effect.sync(() => delivered.length),
              (n) => n === 2,
              { timeout: "5 seconds" }
            )
            yield* Fiber.interrupt(follower)
            // Gone again: its row is removed, appends are quiet; except above READ COMMITTED.
            yield* eventually(waiting, (rows) => rows[0]!.n === 0)
            assert.strictEqual(yield* notifiedBy(append()), 0)
            const repeatable = sql.withTransaction(
              Effect.zipRight(sql`SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`, append())
            )
            assert.isAtLeast(yield* notifiedBy(repeatable), 1)
          }).pipe(Effect.scoped)
      )

      it.effect(
        "a log that keeps moving is polled: busy appends do not notify, and the watcher waits again once quiet",
        () =>
          Effect.gen(function* () {
            const b = yield* Backend
            const { sql, url } = Option.getOrThrow(b.database)
            const store = yield* storeWith({ pollInterval: "30 seconds" })
            const aggregateType = `Busy${uuid().slice(0, 8)}`
            const received = yield* notificationCounter(url)
            const delivered = yield* Ref.make(0)
            const follower = yield* Effect.fork(
              Stream.runForEach(store.subscribe({ aggregateTypes: [aggregateType] }), () =>
                Ref.update(delivered, (n) => n + 1)
              )
            )
            const waiting = sql<{ n: number }>`SELECT count(*)::int AS n FROM eventfold_listeners WHERE waiting`
            yield* eventually(waiting, (rows) => rows[0]!.n === 1)
            // Four writers append without a pause for two seconds.
            let appended = 0
            const busyUntil = Date.now() + 2_000
            const writers = yield* Effect.fork(
              Effect.all(
                Array.from({ length: 4 }, () =>
                  Effect.whileLoop({
                    while: () => Date.now() < busyUntil,
                    body: () =>
                      store.append(
                        { aggregateId: uuid(), aggregateType },
                        [{ event: Noted.make({ writer: 0, n: 0 }) }],
                        { expectedVersion: ExpectedVersion.noStream }
                      ),
                    step: () => {
                      appended++
                    }
                  })
                ),
                { concurrency: "unbounded", discard: true }
              )
            )
            // The watcher sees the log moving and stops waiting for notifications ...
            yield* eventually(waiting, (rows) => rows[0]!.n === 0, { timeout: "2 seconds" })
            yield* Effect.sleep("100 millis")
            const before = yield* Ref.get(received)
            const appendedBefore = appended
            yield* Effect.sleep("1 second")
            // ... so the appends of the next second send next to none (a hiccup of the machine
            // can make the log look quiet for a moment): flipping the flag at every lull made
            // 15-20% of them notify.
            const notified = (yield* Ref.get(received)) - before
            const busy = appended - appendedBefore
            assert.isAbove(busy, 100)
            assert.isBelow(notified, busy / 20, `${notified} notifications for ${busy} appends`)
            yield* Fiber.join(writers)
            // Quiet again: it waits for notifications, and has delivered every event.
            yield* eventually(waiting, (rows) => rows[0]!.n === 1)
            yield* eventually(Ref.get(delivered), (n) => n === appended, { timeout: "5 seconds" })
            yield* Fiber.interrupt(follower)
          }).pipe(Effect.scoped)
      )

      it.effect("a lost LISTEN connection is reported, polled around, and reconnected", () =>
        capturingLogs((logs) =>
          Effect.gen(function* () {
            const b = yield* Backend
            const sql = Option.getOrThrow(b.database).sql
            const store = yield* storeWith({ pollInterval: "300 millis" })
            const aggregateType = `Listen${uuid().slice(0, 8)}`
            const received: Array<EventStore.RecordedEvent> = []
            const follower = yield* Effect.fork(
              Stream.runForEach(store.subscribe({ aggregateTypes: [aggregateType] }), (e) =>
                Effect.sync(() => received.push(e))
              )
            )
            const listeners = sql<{ pid: number }>`
              SELECT pid FROM pg_stat_activity
               WHERE datname = current_database() AND application_name LIKE '%(listen)'`
            const [listener] = yield* eventually(listeners, (rows) => rows.length > 0, {
              every: "20 millis",
              timeout: "5 seconds"
            })
            yield* sql`SELECT pg_terminate_backend(${listener!.pid})`
            yield* store.append({ aggregateId: uuid(), aggregateType }, [{ event: Noted.make({ writer: 0, n: 0 }) }], {
              expectedVersion: ExpectedVersion.noStream
            })
            yield* eventually(
              Effect.sync(() => received.length),
              (n) => n >= 1,
              { every: "10 millis", timeout: "5 seconds" }
            )
            assert.isTrue((yield* Ref.get(logs)).some((l) => l.startsWith("WARN") && l.includes("LISTEN")))
            const back = yield* eventually(listeners, (rows) => rows.some((r) => r.pid !== listener!.pid), {
              every: "50 millis",
              timeout: "10 seconds"
            })
            assert.isTrue(back.length >= 1)
            yield* Fiber.interrupt(follower)
          })
        )
      )
    })
  }
)

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
 * EVENTFOLD_SKIP_TEST_EVENTS (default 20000), EVENTFOLD_SKIP_TEST_WRITERS (default 8),
 * EVENTFOLD_SKIP_TEST_BUDGET_SECONDS (default 150: the skip test fails, saying how far it
 * got, when it is not done by then).
 */

import type * as SqlClient from "@effect/sql/SqlClient"
import { assert, describe, layer } from "@effect/vitest"
import { Event, EventRegistry, type EventStore, ExpectedVersion, type Subscription, Telemetry } from "@eventfold/core"
import { PgEventStore } from "@eventfold/pg"
import * as Arr from "effect/Array"
import * as Chunk from "effect/Chunk"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Logger from "effect/Logger"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import pg from "pg"
import { Backend, eventually, postgresql } from "../support/projectionHarness.js"

/** The channel appends notify. */
const channel = "eventfold_events"

const Noted = Event.make("Noted", { writer: Schema.Int, n: Schema.Int })
const registry = EventRegistry.make(Noted)

const envInt = (name: string, fallback: number) => {
  const value = Number.parseInt(process.env[name] ?? "", 10)
  return Number.isSafeInteger(value) && value > 0 ? value : fallback
}
const TOTAL_EVENTS = envInt("EVENTFOLD_SKIP_TEST_EVENTS", 20_000)
const WRITERS = envInt("EVENTFOLD_SKIP_TEST_WRITERS", 8)
const BUDGET_SECONDS = envInt("EVENTFOLD_SKIP_TEST_BUDGET_SECONDS", 150)

/** The rollback a writer plans; any other failure is unexpected. */
class PlannedRollback extends Data.TaggedError("PlannedRollback") {}

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

/**
 * A bystander session that counts the notifications appends send (channel
 * `eventfold_events`, this database only, as NOTIFY is per database) for as long as the
 * scope lasts. `fence` notifies on a channel of its own and returns the count once its
 * notification arrives: PostgreSQL delivers notifications in commit order, so by then
 * every notification of a transaction that committed before the fence has been counted.
 */
const notificationCounter = (url: string) =>
  Effect.gen(function* () {
    let received = 0
    const fences = new Map<string, (count: number) => void>()
    const fenceChannel = `eventfold_test_fence_${uuid().replaceAll("-", "")}`
    const client = yield* Effect.acquireRelease(
      Effect.promise(async () => {
        const client = new pg.Client({ connectionString: url, application_name: "eventfold-test-bystander" })
        await client.connect()
        client.on("notification", (message) => {
          if (message.channel === channel) received++
          else if (message.channel === fenceChannel) {
            const token = message.payload ?? ""
            fences.get(token)?.(received)
            fences.delete(token)
          }
        })
        await client.query(`LISTEN ${channel}`)
        await client.query(`LISTEN ${fenceChannel}`)
        return client
      }),
      (client) => Effect.promise(() => client.end())
    )
    const fence = Effect.async<number>((resume) => {
      const token = uuid()
      fences.set(token, (count) => resume(Effect.succeed(count)))
      client.query("SELECT pg_notify($1, $2)", [fenceChannel, token]).catch((cause) => resume(Effect.die(cause)))
    }).pipe(
      Effect.timeoutFail({
        duration: "10 seconds",
        onTimeout: () => new Error("the bystander's own notification did not come back within 10 s")
      })
    )
    return { fence }
  })

/** How many watchers wait for notifications (their flag in `eventfold_listeners`). */
const waitingWatchers = (sql: SqlClient.SqlClient) =>
  Effect.map(sql<{ n: number }>`SELECT count(*)::int AS n FROM eventfold_listeners WHERE waiting`, (rows) => rows[0]!.n)

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
            const perWriter = Math.ceil(TOTAL_EVENTS / WRITERS)
            let attempted = 0
            const committed = new Set<string>()
            const rolledBack = new Set<string>()

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
                  attempted += size
                  if (bare) {
                    yield* store.append(stream, events, { expectedVersion: ExpectedVersion.any })
                    for (const id of ids) committed.add(id)
                  } else {
                    // Only the planned rollback is caught: any other failure fails the test, with its cause.
                    const outcome = yield* sql
                      .withTransaction(
                        Effect.gen(function* () {
                          // Work before the append: the transaction is older than its positions.
                          if (otherWork) yield* sql`INSERT INTO side_effects (value) VALUES (${uuid()})`
                          yield* store.append(stream, events, { expectedVersion: ExpectedVersion.any })
                          // Real time as the fault injected: transactions commit out of position order.
                          // Nothing in the test waits on these delays.
                          if (delay > 0) yield* Effect.sleep(`${delay} millis`)
                          if (otherWork) yield* sql`SELECT count(*) FROM side_effects`
                          if (rollback) return yield* new PlannedRollback()
                        })
                      )
                      .pipe(
                        Effect.as(committed),
                        Effect.catchTag("PlannedRollback", () => Effect.succeed(rolledBack))
                      )
                    for (const id of ids) outcome.add(id)
                  }
                  written += size
                }
              })

            const seen: Array<EventStore.RecordedEvent> = []
            const late: Array<EventStore.RecordedEvent> = []
            let naiveCount = 0
            const progress = () =>
              `attempted ${attempted} of ${perWriter * WRITERS} events, committed ${committed.size}, rolled back ${rolledBack.size}; delivered ${seen.length} to the first subscriber, ${late.length} to the second`

            // A last event, appended once every writer is done: its position is above all of
            // theirs, so a subscriber that delivered it has delivered everything it ever will below.
            const fence = { aggregateId: uuid(), aggregateType }
            const fenceId = uuid()
            const follow = (into: Array<EventStore.RecordedEvent>, batchSize: number) =>
              Effect.gen(function* () {
                const reached = yield* Deferred.make<void>()
                const fiber = yield* Effect.fork(
                  Stream.runForEach(store.subscribe({ aggregateTypes: [aggregateType], batchSize }), (e) =>
                    Effect.zipRight(
                      Effect.sync(() => into.push(e)),
                      e.eventId === fenceId ? Deferred.succeed(reached, undefined) : Effect.void
                    )
                  )
                )
                // The fence delivered; or the subscription failed, with its cause.
                const done = Effect.raceFirst(
                  Deferred.await(reached),
                  Effect.zipRight(Fiber.join(fiber), Effect.dieMessage("the subscription ended"))
                )
                return { fiber, done }
              })

            const run = Effect.gen(function* () {
              const startPosition =
                (yield* collect(store.readAll({ direction: "backward", limit: 1 })))[0]?.globalPosition ?? 0n
              const first = yield* follow(seen, 1000)
              // A naive reader, for comparison: readAll after the last position it saw.
              let naiveCursor = startPosition
              yield* Effect.forkScoped(
                Effect.gen(function* () {
                  const page = yield* collect(store.readAll({ aggregateTypes: [aggregateType], after: naiveCursor }))
                  naiveCount += page.length
                  if (page.length > 0) naiveCursor = page[page.length - 1]!.globalPosition
                }).pipe(Effect.repeat(Schedule.spaced("20 millis")))
              )
              const writers = yield* Effect.fork(
                Effect.all(Arr.makeBy(WRITERS, writer), { concurrency: "unbounded", discard: true })
              )
              // A second subscriber joins midway: catch-up, then live, under load.
              yield* eventually(
                Effect.sync(() => committed.size + rolledBack.size),
                (n) => n >= (perWriter * WRITERS) / 3,
                { timeout: `${BUDGET_SECONDS} seconds`, what: "a third of the events written" }
              )
              const second = yield* follow(late, 250)
              const started = Date.now()
              yield* Fiber.join(writers)
              const wrote = Date.now() - started
              yield* store.append(fence, [{ event: Noted.make({ writer: -1, n: 0 }), eventId: fenceId }], {
                expectedVersion: ExpectedVersion.noStream
              })
              yield* first.done
              yield* second.done
              yield* Fiber.interrupt(first.fiber)
              yield* Fiber.interrupt(second.fiber)
              return wrote
            })
            // A budget of its own, well inside the test's timeout, that says how far it got.
            const wrote = yield* run.pipe(
              Effect.scoped,
              Effect.timeoutFail({
                duration: `${BUDGET_SECONDS} seconds`,
                onTimeout: () => new Error(`skip test not done within ${BUDGET_SECONDS} s: ${progress()}`)
              })
            )

            // Every attempted event either committed or rolled back, as planned.
            assert.strictEqual(attempted, perWriter * WRITERS)
            assert.strictEqual(committed.size + rolledBack.size, attempted, progress())
            assert.isAbove(committed.size, 0)
            assert.isAbove(rolledBack.size, 0, "no transaction rolled back: the test proves less than it says")
            // The log holds exactly the committed events, and the fence last.
            const log = yield* collect(store.readAll({ aggregateTypes: [aggregateType] }))
            assert.strictEqual(log.length, committed.size + 1)
            assert.strictEqual(log.at(-1)!.eventId, fenceId)
            assert.isTrue(
              log.slice(0, -1).every((e) => committed.has(e.eventId)),
              "the log holds an event that was not committed"
            )
            for (const [name, delivered] of [
              ["first", seen],
              ["second", late]
            ] as const) {
              assert.isFalse(
                delivered.some((e) => rolledBack.has(e.eventId)),
                `${name}: delivered a rolled-back event`
              )
              assert.strictEqual(new Set(delivered.map((e) => e.eventId)).size, delivered.length, `${name}: duplicates`)
              assert.strictEqual(delivered.length, log.length, `${name}: count`)
              // One order: the log's; so each committed event exactly once.
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
          }),
        // The test's own budget fails first, with what was delivered so far.
        (BUDGET_SECONDS + 60) * 1000
      )
    })

    describe("stalls", () => {
      it.effect("a subscriber that starts while an append is held open hears of the stall, then catches up", () =>
        Effect.gen(function* () {
          const b = yield* Backend
          const sql = Option.getOrThrow(b.database).sql
          const writer = yield* b.store(registry)
          const aggregateType = `Start${uuid().slice(0, 8)}`
          const s = () => ({ aggregateId: uuid(), aggregateType })
          yield* writer.append(s(), [{ event: Noted.make({ writer: 0, n: 0 }) }], {
            expectedVersion: ExpectedVersion.noStream
          })
          const appended = yield* Deferred.make<void>()
          const release = yield* Effect.makeLatch(false)
          const holder = yield* Effect.fork(
            sql.withTransaction(
              Effect.gen(function* () {
                yield* writer.append(s(), [{ event: Noted.make({ writer: 1, n: 1 }) }], {
                  expectedVersion: ExpectedVersion.noStream
                })
                yield* Deferred.succeed(appended, undefined)
                yield* release.await
              })
            )
          )
          yield* Deferred.await(appended)
          // A store of its own: its watcher's first refresh already finds the open transaction.
          const store = yield* storeWith({ pollInterval: "100 millis", stallThreshold: "300 millis" })
          const messages: Array<Subscription.Message> = []
          yield* Effect.fork(
            Stream.runForEach(store.subscribeMessages({ aggregateTypes: [aggregateType] }), (m) =>
              Effect.sync(() => messages.push(m))
            )
          )
          // Real time: the stall is reported once the subscriber has waited stallThreshold.
          yield* eventually(
            Effect.sync(() => messages.filter((m) => m._tag === "Stalled").length),
            (n) => n > 0,
            { every: "20 millis", what: "a stall report to a subscriber with no settled position yet" }
          )
          assert.strictEqual(messages.filter((m) => m._tag === "Event").length, 0)
          yield* release.open
          yield* Fiber.join(holder)
          const events = yield* eventually(
            Effect.sync(() => messages.filter((m) => m._tag === "Event")),
            (e) => e.length === 2,
            { every: "20 millis", what: "both events once the transaction ended" }
          )
          assert.strictEqual(events.length, 2)
        })
      )

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
              yield* eventually(Effect.sync(events), (e) => e.length === 1, {
                every: "5 millis",
                timeout: "10 seconds"
              })
              // The holder's pid, once it has appended (taken its position) and while it stays open.
              const appended = yield* Deferred.make<number>()
              const release = yield* Effect.makeLatch(false)
              const holder = yield* Effect.fork(
                sql.withTransaction(
                  Effect.gen(function* () {
                    const [row] = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
                    yield* store.append(s(), [{ event: Noted.make({ writer: 1, n: 1 }) }], {
                      expectedVersion: ExpectedVersion.noStream
                    })
                    yield* Deferred.succeed(appended, row!.pid)
                    yield* release.await
                  })
                )
              )
              const holderPid = yield* Deferred.await(appended)
              // Appended and committed after the holder took its position: held back with it.
              const later = yield* store.append(s(), [{ event: Noted.make({ writer: 2, n: 2 }) }], {
                expectedVersion: ExpectedVersion.noStream
              })
              // Real time: a stall is reported once readers have waited stallThreshold (700 ms);
              // wait for a report that covers the later append.
              const stalled = yield* eventually(
                Effect.sync(() =>
                  messages.filter((m): m is Extract<Subscription.Message, { _tag: "Stalled" }> => m._tag === "Stalled")
                ),
                (reports) => reports.some((m) => m.stall.waitingUpTo >= later.lastPosition),
                { every: "20 millis", what: "a stall report up to the later append" }
              )
              assert.strictEqual(events().length, 1, "nothing past the open transaction's position is delivered")
              const stall = stalled.at(-1)!.stall
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
              // And as a metric: how long positions have waited, at each refresh of the watcher.
              const heldBack = Effect.map(Metric.value(PgEventStore.subscriptionMetrics.heldBack), (g) => g.value)
              assert.isAtLeast(yield* heldBack, 700)

              yield* release.open
              yield* Fiber.join(holder)
              yield* eventually(Effect.sync(events), (e) => e.length === 3, {
                every: "20 millis",
                timeout: "10 seconds"
              })
              assert.deepStrictEqual(
                events().map(
                  (m) => ((m as { event: EventStore.RecordedEvent }).event.event as typeof Noted.Type).writer
                ),
                [0, 1, 2]
              )
              yield* eventually(
                Ref.get(logs),
                (l) => l.some((line) => line.startsWith("INFO") && line.includes("resumed")),
                { every: "20 millis", what: "the watcher to log that readers resumed" }
              )
              yield* eventually(heldBack, (ms) => ms === 0, { what: "nothing held back once the holder ended" })
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
          const wrote = yield* Deferred.make<number>()
          const unrelated = yield* Effect.fork(
            sql.withTransaction(
              Effect.gen(function* () {
                yield* sql`INSERT INTO side_effects (value) VALUES (${uuid()})`
                const [row] = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
                yield* Deferred.succeed(wrote, row!.pid)
                yield* release.await
              })
            )
          )
          const messages: Array<Subscription.Message> = []
          const follower = yield* Effect.fork(
            Stream.runForEach(store.subscribeMessages({ aggregateTypes: [aggregateType] }), (m) =>
              Effect.sync(() => messages.push(m))
            )
          )
          const pid = yield* Deferred.await(wrote)
          // Real time: the transaction must be older than stallThreshold (500 ms), or a reader it
          // held back would not be reported stalled.
          yield* eventually(
            sql<{ age: number }>`
              SELECT (extract(epoch FROM clock_timestamp() - xact_start) * 1000)::float8 AS age
                FROM pg_stat_activity WHERE pid = ${pid} AND datname = current_database()`,
            (rows) => rows[0]!.age >= 600,
            { every: "20 millis", what: "the unrelated transaction to be 600 ms old" }
          )
          // The watcher is live and waits for appends.
          yield* eventually(waitingWatchers(sql), (n) => n === 1, { what: "the watcher to wait for notifications" })
          yield* store.append({ aggregateId: uuid(), aggregateType }, [{ event: Noted.make({ writer: 0, n: 0 }) }], {
            expectedVersion: ExpectedVersion.noStream
          })
          // Delivered while the unrelated transaction is still open, and with no stall.
          yield* eventually(
            Effect.sync(() => messages.some((m) => m._tag === "Event")),
            (done) => done,
            { every: "5 millis", timeout: "10 seconds", what: "the event, with the unrelated transaction open" }
          )
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
          const messages: Array<Subscription.Message> = []
          const follower = yield* Effect.fork(
            Stream.runForEach(store.subscribeMessages({ aggregateTypes: [aggregateType] }), (m) =>
              Effect.sync(() => messages.push(m))
            )
          )
          const writers = () =>
            messages.flatMap((m) => (m._tag === "Event" ? [(m.event.event as typeof Noted.Type).writer] : []))
          // Delivered before the doomed transaction begins: the watcher has a horizon by then. (A
          // watcher whose first look finds a writer has none, and tells subscribers nothing.)
          yield* store.append({ aggregateId: uuid(), aggregateType }, [{ event: Noted.make({ writer: 0, n: 0 }) }], {
            expectedVersion: ExpectedVersion.noStream
          })
          yield* eventually(Effect.sync(writers), (w) => w.length === 1, {
            every: "5 millis",
            timeout: "10 seconds",
            what: "the first event"
          })
          const appended = yield* Deferred.make<void>()
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
                  yield* Deferred.succeed(appended, undefined)
                  yield* release.await
                  return yield* Effect.fail("rollback" as const)
                })
              )
              .pipe(Effect.flip)
          )
          yield* Deferred.await(appended)
          const later = yield* store.append(
            { aggregateId: uuid(), aggregateType },
            [{ event: Noted.make({ writer: 1, n: 1 }) }],
            { expectedVersion: ExpectedVersion.noStream }
          )
          // Real time: held back behind the open transaction, readers are reported stalled after
          // stallThreshold (500 ms); the report covers the later append, which is not delivered.
          yield* eventually(
            Effect.sync(() => messages.some((m) => m._tag === "Stalled" && m.stall.waitingUpTo >= later.lastPosition)),
            (reported) => reported,
            { every: "20 millis", what: "a stall report up to the later append" }
          )
          assert.deepStrictEqual(writers(), [0])
          yield* release.open
          assert.strictEqual(yield* Fiber.join(doomed), "rollback")
          // A last append: delivered in position order, it comes after anything the doomed
          // transaction could have delivered.
          yield* store.append({ aggregateId: uuid(), aggregateType }, [{ event: Noted.make({ writer: 2, n: 2 }) }], {
            expectedVersion: ExpectedVersion.noStream
          })
          yield* eventually(Effect.sync(writers), (w) => w.includes(2), {
            every: "10 millis",
            timeout: "10 seconds",
            what: "the last append"
          })
          assert.deepStrictEqual(writers(), [0, 1, 2])
          yield* Fiber.interrupt(follower)
        })
      )
    })

    describe("wake-ups", () => {
      it.effect("appends wake subscribers through NOTIFY, long before the next poll", () =>
        Effect.gen(function* () {
          const b = yield* Backend
          const sql = Option.getOrThrow(b.database).sql
          const store = yield* storeWith({ pollInterval: "30 seconds" })
          const aggregateType = `Notify${uuid().slice(0, 8)}`
          let received = 0
          const follower = yield* Effect.fork(
            Stream.runForEach(store.subscribe({ aggregateTypes: [aggregateType] }), () => Effect.sync(() => received++))
          )
          for (let i = 0; i < 5; i++) {
            // The watcher waits for a notification; only one can wake it before its next poll.
            yield* eventually(waitingWatchers(sql), (n) => n === 1, { what: "the watcher to wait for notifications" })
            yield* store.append({ aggregateId: uuid(), aggregateType }, [{ event: Noted.make({ writer: 0, n: i }) }], {
              expectedVersion: ExpectedVersion.noStream
            })
            yield* eventually(
              Effect.sync(() => received),
              (n) => n > i,
              { every: "2 millis", timeout: "10 seconds", what: `event ${i + 1}, long before the 30 s poll` }
            )
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
            const counter = yield* notificationCounter(url)
            const append = () =>
              store.append({ aggregateId: uuid(), aggregateType }, [{ event: Noted.make({ writer: 0, n: 0 }) }], {
                expectedVersion: ExpectedVersion.noStream
              })
            // The notifications an effect's commits sent, counted between two fences.
            const notifiedBy = <E>(effect: Effect.Effect<unknown, E>) =>
              Effect.gen(function* () {
                const before = yield* counter.fence
                yield* effect
                return (yield* counter.fence) - before
              })
            const waiting = waitingWatchers(sql)
            // Nobody waits: no notification.
            yield* eventually(waiting, (n) => n === 0)
            assert.strictEqual(yield* notifiedBy(append()), 0)
            // A subscriber waits: appends notify, and it is woken long before its 30 s poll.
            const delivered: Array<EventStore.RecordedEvent> = []
            const follower = yield* Effect.fork(
              Stream.runForEach(store.subscribe({ aggregateTypes: [aggregateType] }), (e) =>
                Effect.sync(() => delivered.push(e))
              )
            )
            yield* eventually(waiting, (n) => n === 1)
            assert.isAtLeast(yield* notifiedBy(append()), 1)
            yield* eventually(
              Effect.sync(() => delivered.length),
              (n) => n === 2,
              { timeout: "10 seconds", what: "both events, long before the 30 s poll" }
            )
            yield* Fiber.interrupt(follower)
            // Gone again: its row is removed, appends are quiet; except above READ COMMITTED.
            yield* eventually(waiting, (n) => n === 0)
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
            // The log counts as busy while refreshes that see it move come within 4 settle
            // intervals: 50 ms (not the default 5 ms) keeps a loaded machine's scheduling gaps
            // from passing for lulls.
            const store = yield* storeWith({ pollInterval: "30 seconds", settleInterval: "50 millis" })
            const aggregateType = `Busy${uuid().slice(0, 8)}`
            const counter = yield* notificationCounter(url)
            const delivered = yield* Ref.make(0)
            const follower = yield* Effect.fork(
              Stream.runForEach(store.subscribe({ aggregateTypes: [aggregateType] }), () =>
                Ref.update(delivered, (n) => n + 1)
              )
            )
            const waiting = waitingWatchers(sql)
            yield* eventually(waiting, (n) => n === 1)
            // Four writers append without a pause until told to stop.
            let appended = 0
            let stop = false
            const writers = yield* Effect.fork(
              Effect.all(
                Array.from({ length: 4 }, () =>
                  Effect.whileLoop({
                    while: () => !stop,
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
            yield* eventually(waiting, (n) => n === 0, { timeout: "10 seconds", what: "the watcher to stop waiting" })
            const before = yield* counter.fence
            const appendedBefore = appended
            yield* eventually(
              Effect.sync(() => appended),
              (n) => n >= appendedBefore + 600,
              { every: "10 millis", timeout: "30 seconds", what: "600 more appends" }
            )
            // ... so the next 600 appends or more send next to none (a hiccup of the machine can
            // make the log look quiet for a moment): flipping the flag at every lull made 15-20%
            // of them notify. (Appends that read the flag before it flipped may notify: up to 4.)
            const notified = (yield* counter.fence) - before
            const busy = appended - appendedBefore
            stop = true
            yield* Fiber.join(writers)
            yield* Effect.logInfo(`busy log: ${notified} notifications for ${busy} appends`)
            assert.isBelow(notified, busy / 20, `${notified} notifications for ${busy} appends`)
            // Quiet again: it waits for notifications, and has delivered every event.
            yield* eventually(waiting, (n) => n === 1)
            yield* eventually(Ref.get(delivered), (n) => n === appended, { timeout: "10 seconds" })
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
            // pg_terminate_backend only signals: until the session has ended, it could still
            // deliver the append's notification.
            yield* eventually(
              sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ${listener!.pid}`,
              (rows) => rows[0]!.n === 0,
              { every: "10 millis", what: "the killed LISTEN session to end" }
            )
            yield* store.append({ aggregateId: uuid(), aggregateType }, [{ event: Noted.make({ writer: 0, n: 0 }) }], {
              expectedVersion: ExpectedVersion.noStream
            })
            yield* eventually(
              Effect.sync(() => received.length),
              (n) => n >= 1,
              { every: "10 millis", timeout: "10 seconds", what: "the event, without LISTEN" }
            )
            yield* eventually(
              Ref.get(logs),
              (l) => l.some((line) => line.startsWith("WARN") && line.includes("LISTEN")),
              { every: "10 millis", what: "a warning about the lost LISTEN connection" }
            )
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

/**
 * Projections on PostgreSQL under faults:
 *
 * - exactly once: a projection whose handler writes non-idempotent SQL is interrupted
 *   at random points while thousands of events are appended; its read model equals a
 *   fresh fold of the log;
 * - a handler's failed attempt leaves nothing behind (savepoints); its dead letter
 *   commits with the rest of the batch;
 * - failover between two runners in two "processes" (two pools): when the active
 *   one's lock session is killed, or the process goes away, the standby takes over and
 *   nothing is applied twice;
 * - a runner's status says which session holds it back;
 * - rebuild of a SQL read model while appends go on.
 *
 * EVENTFOLD_EXACTLY_ONCE_EVENTS (default 3000) sizes the first test.
 */

import * as SqlClient from "@effect/sql/SqlClient"
import { assert, describe, layer } from "@effect/vitest"
import {
  CheckpointStore,
  DeadLetterQueue,
  Event,
  EventRegistry,
  EventStore,
  ExpectedVersion,
  Projection
} from "@eventfold/core"
import { PgEventStore, PgPool, PgProjection } from "@eventfold/pg"
import * as Arr from "effect/Array"
import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { Backend, eventually, postgresql, testSubscriptions } from "../support/projectionHarness.js"

const Deposited = Event.make("Deposited", { amount: Schema.Int })
const registry = EventRegistry.make(Deposited)

const envInt = (name: string, fallback: number) => {
  const value = Number.parseInt(process.env[name] ?? "", 10)
  return Number.isSafeInteger(value) && value > 0 ? value : fallback
}
const EVENTS = envInt("EVENTFOLD_EXACTLY_ONCE_EVENTS", 3000)

const uuid = () => crypto.randomUUID()
const collect = <A, E>(s: Stream.Stream<A, E>) => Effect.map(Stream.runCollect(s), Chunk.toReadonlyArray)

const fast: Projection.RunOptions = {
  retry: Schedule.recurs(2),
  progressInterval: "100 millis",
  takeover: Schedule.spaced("50 millis"),
  restart: Schedule.spaced("50 millis")
}

/**
 * A balance per account, in a table of its own; the handler adds (not idempotent).
 * `onHandled` runs at the start of each handler call.
 */
const balances = (table: string, aggregateType: string, options: { readonly onHandled?: Effect.Effect<void> } = {}) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`CREATE TABLE IF NOT EXISTS ${sql(table)} (
      account uuid PRIMARY KEY, balance bigint NOT NULL, deposits integer NOT NULL)`
    const projection = Projection.make({
      name: table,
      aggregateTypes: [aggregateType],
      handlers: [
        Projection.on(Deposited, (event) =>
          Effect.gen(function* () {
            if (options.onHandled !== undefined) yield* options.onHandled
            yield* sql`INSERT INTO ${sql(table)} (account, balance, deposits)
                       VALUES (${event.aggregateId}::uuid, ${event.event.amount}, 1)
                       ON CONFLICT (account) DO UPDATE
                          SET balance = ${sql(table)}.balance + EXCLUDED.balance,
                              deposits = ${sql(table)}.deposits + 1`
          })
        )
      ],
      reset: sql`TRUNCATE ${sql(table)}`
    })
    const readModel = sql<{ account: string; balance: string; deposits: number }>`
      SELECT account, balance::text AS balance, deposits FROM ${sql(table)} ORDER BY account`.pipe(
      Effect.map((rows) => rows.map((r) => [r.account, BigInt(r.balance), r.deposits] as const))
    )
    return { projection, readModel }
  })

/** The read model a fresh fold of the log gives. */
const fold = (store: EventStore.Service, aggregateType: string) =>
  Effect.map(collect(store.readAll({ aggregateTypes: [aggregateType] })), (events) => {
    const model = new Map<string, [bigint, number]>()
    for (const e of events) {
      const [balance, deposits] = model.get(e.aggregateId) ?? [0n, 0]
      model.set(e.aggregateId, [balance + BigInt((e.event as typeof Deposited.Type).amount), deposits + 1])
    }
    return [...model]
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([account, [balance, deposits]]) => [account, balance, deposits] as const)
  })

const deposit = (amount: number): EventStore.EventToAppend => ({ event: Deposited.make({ amount }) })

/** Appends `count` deposits to `accounts`, from `writers` fibers, in small random batches. */
const appendDeposits = (
  store: EventStore.Service,
  accounts: ReadonlyArray<EventStore.StreamId>,
  count: number,
  writers = 4
) =>
  Effect.all(
    Arr.makeBy(writers, () =>
      Effect.gen(function* () {
        let left = Math.ceil(count / writers)
        while (left > 0) {
          const size = Math.min(left, yield* Random.nextIntBetween(1, 8))
          const account = accounts[yield* Random.nextIntBetween(0, accounts.length)]!
          const amounts = yield* Effect.all(Arr.makeBy(size, () => Random.nextIntBetween(1, 1000)))
          yield* store.append(account, amounts.map(deposit), { expectedVersion: ExpectedVersion.any })
          left -= size
        }
      })
    ),
    { concurrency: "unbounded", discard: true }
  )

layer(postgresql({ poolSize: 8 }), { excludeTestServices: true, timeout: "240 seconds" })(
  "Projections on PostgreSQL",
  (it) => {
    const withServices = <A, E>(f: Effect.Effect<A, E, Projection.Requirements | SqlClient.SqlClient | Scope.Scope>) =>
      Effect.flatMap(Backend, (b) =>
        f.pipe(Effect.provide(Layer.merge(b.services(registry), Option.getOrThrow(b.database).pool)), Effect.scoped)
      )

    describe("exactly once", () => {
      it.effect(
        `interrupted at random points during ${EVENTS} appended events, the read model equals a fold of the log`,
        () =>
          withServices(
            Effect.gen(function* () {
              const store = yield* EventStore.EventStore
              const checkpoints = yield* CheckpointStore.CheckpointStore
              const aggregateType = `Account${uuid().slice(0, 8)}`
              const table = `balances_${uuid().slice(0, 8)}`
              // Each run is interrupted once the handler has been called a random number of times
              // more: inside a handler, in the middle of a batch's transaction.
              const handled = yield* Ref.make(0)
              const stopAt = yield* Ref.make({ calls: Number.POSITIVE_INFINITY, reached: yield* Deferred.make<void>() })
              const onHandled = Effect.gen(function* () {
                const calls = yield* Ref.updateAndGet(handled, (n) => n + 1)
                const stop = yield* Ref.get(stopAt)
                if (calls >= stop.calls) yield* Deferred.succeed(stop.reached, undefined)
              })
              const { projection, readModel } = yield* balances(table, aggregateType, { onHandled })
              const accounts = Arr.makeBy(40, () => ({ aggregateId: uuid(), aggregateType }))

              const writing = yield* Effect.fork(appendDeposits(store, accounts, EVENTS))
              let interruptions = 0
              let progressed = 0
              const position = Effect.map(
                checkpoints.get(projection.name),
                Option.match({ onNone: () => 0n, onSome: (c) => c.position })
              )
              const head = Effect.map(
                checkpoints.lag(projection.name, { aggregateTypes: [aggregateType] }),
                (lag) => lag.headPosition
              )
              // Nothing left to handle: the writers are done and the projection is at the head.
              const caughtUp = Effect.zipRight(
                Fiber.await(writing),
                eventually(Effect.all([position, head]), ([at, end]) => at >= end, {
                  every: "100 millis",
                  timeout: "30 seconds",
                  what: "the runner to catch up"
                })
              )
              // Run, interrupt after a random number of handler calls (none: while it starts), run
              // again... while the writers write, and then until the projection has caught up.
              let writersDone = false
              while (!writersDone || (yield* position) < (yield* head)) {
                writersDone = Option.isSome(yield* Fiber.poll(writing))
                const batchSize = yield* Random.nextIntBetween(1, 60)
                const before = yield* position
                const calls = (yield* Random.next) < 0.1 ? 0 : yield* Random.nextIntBetween(1, 300)
                const reached = yield* Deferred.make<void>()
                yield* Ref.set(stopAt, { calls: (yield* Ref.get(handled)) + calls, reached })
                const runner = yield* Effect.fork(Projection.run(projection, { ...fast, batchSize }))
                if (calls > 0) yield* Effect.raceFirst(Deferred.await(reached), caughtUp)
                // A runner stops promptly wherever it is interrupted.
                yield* Fiber.interrupt(runner).pipe(
                  Effect.timeoutFail({
                    duration: "10 seconds",
                    onTimeout: () => new Error("an interrupted runner did not stop within 10 s")
                  })
                )
                interruptions++
                if ((yield* position) > before) progressed++
              }
              yield* Fiber.join(writing)
              const expected = yield* fold(store, aggregateType)
              const total = expected.reduce((n, [, , deposits]) => n + deposits, 0)
              assert.strictEqual(total, Math.ceil(EVENTS / 4) * 4)
              assert.isAtLeast(interruptions, 10)
              // Most runs committed batches before they were interrupted (somewhere in the next one).
              assert.isAtLeast(progressed, 5)
              assert.deepStrictEqual(yield* readModel, expected)
              const deadLetters = yield* DeadLetterQueue.DeadLetterQueue
              assert.strictEqual((yield* deadLetters.list({ projection: projection.name })).length, 0)
              yield* Effect.logInfo(
                `exactly once: ${total} events, ${interruptions} interruptions, ${progressed} after committed progress`
              )
            })
          )
      )

      it.effect("a failed attempt leaves nothing behind; its dead letter commits with the rest of the batch", () =>
        withServices(
          Effect.gen(function* () {
            const sql = yield* SqlClient.SqlClient
            const store = yield* EventStore.EventStore
            const aggregateType = `Ledger${uuid().slice(0, 8)}`
            const table = `ledger_${uuid().slice(0, 8)}`
            yield* sql`CREATE TABLE ${sql(table)} (event_id uuid PRIMARY KEY, amount integer NOT NULL CHECK (amount < 500))`
            yield* sql`CREATE TABLE ${sql(`${table}_seen`)} (event_id uuid PRIMARY KEY)`
            const projection = Projection.make({
              name: table,
              aggregateTypes: [aggregateType],
              handlers: [
                Projection.on(Deposited, (event) =>
                  Effect.gen(function* () {
                    // The first write succeeds, the second breaks the CHECK for large amounts.
                    yield* sql`INSERT INTO ${sql(`${table}_seen`)} (event_id) VALUES (${event.eventId}::uuid)`
                    yield* sql`INSERT INTO ${sql(table)} (event_id, amount) VALUES (${event.eventId}::uuid, ${event.event.amount})`
                  })
                )
              ]
            })
            const account = { aggregateId: uuid(), aggregateType }
            const appended = yield* store.append(account, [deposit(10), deposit(900), deposit(20)], {
              expectedVersion: ExpectedVersion.noStream
            })
            const runner = yield* Projection.start(projection, { ...fast, batchSize: 10 })
            const deadLetters = yield* DeadLetterQueue.DeadLetterQueue
            const [letter] = yield* eventually(deadLetters.list({ projection: table }), (l) => l.length === 1)
            assert.deepInclude(letter!, {
              globalPosition: appended.firstPosition + 1n,
              retryCount: 3,
              status: "failed"
            })
            assert.include(letter!.errorMessage, "check constraint")
            const checkpoints = yield* CheckpointStore.CheckpointStore
            yield* eventually(checkpoints.get(table), (c) =>
              Option.exists(c, (c) => c.position === appended.lastPosition)
            )
            const amounts = yield* sql<{ amount: number }>`SELECT amount FROM ${sql(table)} ORDER BY amount`
            assert.deepStrictEqual(
              amounts.map((r) => r.amount),
              [10, 20]
            )
            // The failing event's first write was rolled back with its savepoint.
            const seen = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql(`${table}_seen`)}`
            assert.strictEqual(seen[0]!.n, 2)
            assert.strictEqual((yield* runner.status).deadLettered, 1)
          })
        )
      )
    })

    describe("one active runner", () => {
      /** A second "process": its own pool and services on the same database. */
      const processLayer = (url: string) =>
        Layer.mergeAll(
          PgEventStore.layer({ registry, subscriptions: testSubscriptions }),
          PgProjection.layer({ heartbeat: "100 millis" }),
          Layer.effect(SqlClient.SqlClient, SqlClient.SqlClient)
        ).pipe(Layer.provideMerge(PgPool.layer({ url: Redacted.make(url), poolSize: 3, maxOverflow: 4 })))

      it.effect(
        "when the active runner's lock session is killed, or its process goes, the standby takes over; nothing applies twice",
        () =>
          Effect.gen(function* () {
            const b = yield* Backend
            const { url, sql } = Option.getOrThrow(b.database)
            const aggregateType = `Failover${uuid().slice(0, 8)}`
            const table = `failover_${uuid().slice(0, 8)}`
            const { projection, readModel } = yield* Effect.provideService(
              balances(table, aggregateType),
              SqlClient.SqlClient,
              sql
            )
            const store = yield* b.store(registry)
            const accounts = Arr.makeBy(10, () => ({ aggregateId: uuid(), aggregateType }))

            /** Starts a runner in a process of its own; returns its status and a way to end the process. */
            const spawn = (label: string, options: Projection.RunOptions = fast) =>
              Effect.gen(function* () {
                const ready = yield* Effect.makeLatch(false)
                let status: Effect.Effect<Projection.Status> = Effect.die("not started")
                // The runner ends before its pool, as in a process that shuts down.
                const fiber = yield* Effect.fork(
                  Effect.scoped(
                    Effect.gen(function* () {
                      const runner = yield* Projection.start(projection, options)
                      status = runner.status
                      yield* ready.open
                      return yield* Effect.never
                    })
                  ).pipe(Effect.provide(processLayer(url)), Effect.annotateLogs("process", label))
                )
                yield* ready.await
                return { status: Effect.suspend(() => status), stop: Fiber.interrupt(fiber) }
              })

            const a = yield* spawn("A")
            yield* eventually(a.status, (s) => s.state === "active")
            // B's failed attempts at the lock, counted by its takeover schedule.
            const attempts = yield* Ref.make(0)
            const bProcess = yield* spawn("B", {
              ...fast,
              takeover: Schedule.spaced("50 millis").pipe(Schedule.tapInput(() => Ref.update(attempts, (n) => n + 1)))
            })
            yield* eventually(Ref.get(attempts), (n) => n >= 2, { what: "B to fail at the lock twice" })
            assert.strictEqual((yield* bProcess.status).state, "standby")

            const writing = yield* Effect.fork(appendDeposits(store, accounts, 600, 2))
            // A is applying the new events when its lock session is killed.
            yield* eventually(a.status, (s) => s.handled > 0, { what: "A to handle events" })
            // Kill A's lock session, as a network failure or an administrator would.
            const killed = yield* sql<{ pid: number }>`
          SELECT l.pid FROM pg_locks l, (SELECT hashtextextended(${`eventfold.projection:${table}`}, 0) AS k) key
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND l.classid = ((key.k >> 32) & 4294967295)::oid AND l.objid = (key.k & 4294967295)::oid`
            assert.strictEqual(killed.length, 1)
            yield* sql`SELECT pg_terminate_backend(${killed[0]!.pid})`
            yield* eventually(bProcess.status, (s) => s.state === "active")
            yield* eventually(a.status, (s) => s.state !== "active")
            // A comes back as the standby; now B's process goes away, and A takes over again.
            yield* eventually(a.status, (s) => s.state === "standby")
            yield* bProcess.stop
            yield* eventually(a.status, (s) => s.state === "active")
            yield* Fiber.join(writing)

            const checkpoints = yield* Effect.provide(CheckpointStore.CheckpointStore, b.services(registry))
            const head = (yield* checkpoints.lag(table, { aggregateTypes: [aggregateType] })).headPosition
            yield* eventually(checkpoints.get(table), (c) => Option.exists(c, (c) => c.position >= head), {
              timeout: "30 seconds"
            })
            const expected = yield* fold(store, aggregateType)
            assert.deepStrictEqual(yield* Effect.provideService(readModel, SqlClient.SqlClient, sql), expected)
            yield* a.stop
          })
      )
    })

    describe("status and rebuild", () => {
      it.effect("a runner held back by an open transaction says which session holds it", () =>
        withServices(
          Effect.gen(function* () {
            const sql = yield* SqlClient.SqlClient
            const store = yield* EventStore.EventStore
            const aggregateType = `Held${uuid().slice(0, 8)}`
            const table = `held_${uuid().slice(0, 8)}`
            const { projection } = yield* balances(table, aggregateType)
            const runner = yield* Projection.start(projection, fast)
            // Handled before the holder begins: the runner's subscription has a horizon by then (a
            // watcher whose first look finds a writer has none, and reports no stall).
            yield* store.append({ aggregateId: uuid(), aggregateType }, [deposit(1)], {
              expectedVersion: ExpectedVersion.noStream
            })
            yield* eventually(runner.status, (s) => s.state === "active" && s.handled === 1, {
              what: "the runner to handle the first event"
            })
            const release = yield* Effect.makeLatch(false)
            let pid = 0
            const holder = yield* Effect.fork(
              sql.withTransaction(
                Effect.gen(function* () {
                  pid = (yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`)[0]!.pid
                  yield* store.append({ aggregateId: uuid(), aggregateType }, [deposit(1)], {
                    expectedVersion: ExpectedVersion.noStream
                  })
                  yield* release.await
                })
              )
            )
            const held = yield* eventually(runner.status, (s) => s.stall !== null, { timeout: "10 seconds" })
            assert.strictEqual(held.stall!.holders[0]!.pid, pid)
            assert.isAtLeast(held.stall!.heldForMillis, 900)
            yield* release.open
            yield* Fiber.join(holder)
            const after = yield* eventually(runner.status, (s) => s.stall === null && s.handled === 2)
            assert.strictEqual(after.state, "active")
          })
        )
      )

      it.effect(
        "a reset that deadlocks with a batch in flight (its rows written, its checkpoint not yet) is retried, not failed",
        () =>
          withServices(
            Effect.gen(function* () {
              const sql = yield* SqlClient.SqlClient
              const store = yield* EventStore.EventStore
              const aggregateType = `Deadlock${uuid().slice(0, 8)}`
              const table = `deadlock_${uuid().slice(0, 8)}`
              yield* sql`CREATE TABLE ${sql(table)} (event_id uuid PRIMARY KEY)`
              const written = yield* Deferred.make<void>()
              const release = yield* Deferred.make<void>()
              const projection = Projection.make({
                name: table,
                aggregateTypes: [aggregateType],
                handlers: [
                  Projection.on(Deposited, (event) =>
                    Effect.gen(function* () {
                      yield* sql`INSERT INTO ${sql(table)} (event_id) VALUES (${event.eventId}::uuid)`
                      // The first batch holds its transaction open here, its row written.
                      if (yield* Deferred.succeed(written, undefined)) yield* Deferred.await(release)
                    })
                  )
                ],
                reset: sql`TRUNCATE ${sql(table)}`
              })
              yield* store.append({ aggregateId: uuid(), aggregateType }, [{ event: Deposited.make({ amount: 1 }) }], {
                expectedVersion: ExpectedVersion.noStream
              })
              yield* Projection.start(projection, fast)
              yield* Deferred.await(written)
              // The reset takes the checkpoint, then waits on the batch's table for its TRUNCATE...
              const resetting = yield* Effect.fork(Projection.reset(projection))
              yield* eventually(
                sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'TRUNCATE%'`,
                ([row]) => row!.n === 1
              )
              // ... and the batch goes on to save its checkpoint, which the reset holds: a deadlock,
              // which PostgreSQL ends by failing the reset (it has waited longest).
              yield* Deferred.succeed(release, undefined)
              yield* Fiber.join(resetting)
              // The batch committed first; the reset, retried, cleared it; the runner replays the event.
              const checkpoints = yield* CheckpointStore.CheckpointStore
              const head = (yield* checkpoints.lag(table)).headPosition
              yield* eventually(checkpoints.get(table), (c) => Option.exists(c, (c) => c.position >= head))
              const rows = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql(table)}`
              assert.strictEqual(rows[0]!.n, 1)
            })
          )
      )

      it.effect("rebuilds a SQL read model from scratch while appends go on", () =>
        withServices(
          Effect.gen(function* () {
            const sql = yield* SqlClient.SqlClient
            const store = yield* EventStore.EventStore
            const aggregateType = `Rebuilt${uuid().slice(0, 8)}`
            const table = `rebuilt_${uuid().slice(0, 8)}`
            const { projection, readModel } = yield* balances(table, aggregateType)
            const accounts = Arr.makeBy(5, () => ({ aggregateId: uuid(), aggregateType }))
            yield* appendDeposits(store, accounts, 400, 2)
            yield* Projection.start(projection, fast)
            // Corrupt the read model behind the projection's back.
            yield* eventually(readModel, (rows) => rows.reduce((n, [, , d]) => n + d, 0) === 400)
            yield* sql`UPDATE ${sql(table)} SET balance = -1`
            const writing = yield* Effect.fork(appendDeposits(store, accounts, 200, 2))
            const reports: Array<Projection.RebuildProgress> = []
            const done = yield* Projection.rebuild(projection, {
              ...fast,
              reportInterval: "50 millis",
              onProgress: (p) => Effect.sync(() => reports.push(p))
            })
            assert.isTrue(done.done)
            yield* Fiber.join(writing)
            const checkpoints = yield* CheckpointStore.CheckpointStore
            const head = (yield* checkpoints.lag(table, { aggregateTypes: [aggregateType] })).headPosition
            yield* eventually(checkpoints.get(table), (c) => Option.exists(c, (c) => c.position >= head))
            assert.deepStrictEqual(yield* readModel, yield* fold(store, aggregateType))
          })
        )
      )
    })
  }
)

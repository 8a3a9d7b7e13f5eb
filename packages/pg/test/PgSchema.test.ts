/**
 * Two stores in one database, each in a PostgreSQL schema of its own (PgPool's `schema`
 * option): migrated and recorded apart, each seeing only its own events, outbox and
 * checkpoints, and neither woken by the other's notifications (the channels are the
 * database's; their payloads name the schema).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, describe, it } from "@effect/vitest"
import { type CheckpointStore, Event, EventRegistry, ExpectedVersion, type Outbox } from "@eventfold/core"
import { PgCheckpointStore, PgEventStore, PgMigrations, PgOutbox, PgPool, PgProjection } from "@eventfold/pg"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import pg from "pg"
import { eventually } from "../../../test/support/eventually.js"
import * as TestDatabase from "../../../test/support/TestDatabase.js"

const Noted = Event.make("Noted", { text: Schema.String })
const registry = EventRegistry.make(Noted)
const note = (text: string) => [{ event: Noted.make({ text }) }]
const stream = () => ({ aggregateId: crypto.randomUUID(), aggregateType: "Note" })

/** A store in `schema` of the database at `url`: its pool, migrations, event store (with outbox), checkpoints and outbox. */
const storeIn = (url: string, schema: string, prepared: boolean) =>
  Effect.gen(function* () {
    const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), schema, poolSize: 2, maxOverflow: 4 }))
    const applied = yield* PgMigrations.run.pipe(Effect.provide(context))
    const options = { registry, outbox: true, subscriptions: { pollInterval: "1 hour" } } as const
    const store = yield* (prepared ? PgEventStore.makePrepared(options) : PgEventStore.make(options)).pipe(
      Effect.provide(context)
    )
    const checkpoints = yield* PgCheckpointStore.make.pipe(Effect.provide(context))
    const outbox = yield* PgOutbox.make().pipe(Effect.provide(context))
    const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
    const projections = yield* PgProjection.makeRuntime().pipe(Effect.provide(context))
    return { applied, store, checkpoints, outbox, sql, projections }
  })

/** A session outside both stores that keeps every notification of `channels`, as [channel, payload]. */
const bystander = (url: string, channels: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    const received: Array<readonly [string, string]> = []
    yield* Effect.acquireRelease(
      Effect.promise(async () => {
        const client = new pg.Client({ connectionString: url })
        await client.connect()
        client.on("notification", (message) => {
          // The relays' heartbeats (each relay notifies itself) are not about appends.
          if (!message.payload?.startsWith("heartbeat:")) received.push([message.channel, message.payload ?? ""])
        })
        for (const channel of channels) await client.query(`LISTEN ${channel}`)
        return client
      }),
      (client) => Effect.promise(() => client.end())
    )
    return { received: Effect.sync(() => [...received]) }
  })

const notifications = PgEventStore.subscriptionMetrics.notifications

describe("PgPool's schema option", () => {
  it.scopedLive("two stores in two schemas of one database: their own events, outbox, checkpoints and migrations", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      // One name that needs quoting: it is used exactly as given.
      const a = yield* storeIn(url, "store_a", true)
      const b = yield* storeIn(url, "Store B", false)

      // Migrated apart, each recorded in its own schema; nothing in public.
      assert.strictEqual(a.applied.length, b.applied.length)
      assert.isAbove(a.applied.length, 13)
      const recorded = (schema: string) =>
        a.sql<{ n: number }>`SELECT count(*)::int AS n FROM ${a.sql(schema)}.eventfold_migrations`.pipe(
          Effect.map((rows) => rows[0]!.n)
        )
      assert.strictEqual(yield* recorded("store_a"), a.applied.length)
      assert.strictEqual(yield* recorded("Store B"), b.applied.length)
      const inPublic = yield* a.sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'`
      assert.strictEqual(inPublic[0]!.n, 0)
      // Migration 12's SECURITY DEFINER functions are bound to their own schema.
      const config = yield* a.sql<{ schema: string; config: ReadonlyArray<string> }>`
        SELECT n.nspname AS schema, p.proconfig AS config FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE p.proname = 'eventfold_stream_tenant_differs' ORDER BY 1`
      assert.deepStrictEqual(
        config.map((row) => [row.schema, row.config]),
        [
          ["Store B", ['search_path="Store B", pg_temp']],
          ["store_a", ["search_path=store_a, pg_temp"]]
        ]
      )

      // Events: each store reads its own, its positions its own.
      const sa = stream()
      const sb = stream()
      yield* a.store.append(sa, note("a1"), { expectedVersion: ExpectedVersion.noStream })
      yield* b.store.append(sb, note("b1"), { expectedVersion: ExpectedVersion.noStream })
      yield* b.store.append(sb, note("b2"), { expectedVersion: ExpectedVersion.exact(1) })
      const all = (store: typeof a.store) =>
        Effect.map(Stream.runCollect(store.readAll()), (events) =>
          Chunk.toArray(events).map((e) => [e.globalPosition, (e.event as typeof Noted.Type).text] as const)
        )
      assert.deepStrictEqual(yield* all(a.store), [[1n, "a1"]])
      assert.deepStrictEqual(yield* all(b.store), [
        [1n, "b1"],
        [2n, "b2"]
      ])

      // Outbox: each relay claims its own entries only.
      const pending = (outbox: Outbox.Service) =>
        Effect.map(outbox.list({ status: "pending" }), (rows) => rows.map((row) => row.message.aggregateId))
      assert.deepStrictEqual(yield* pending(a.outbox), [sa.aggregateId])
      assert.deepStrictEqual(yield* pending(b.outbox), [sb.aggregateId, sb.aggregateId])

      // Checkpoints: the same projection name in both, apart.
      yield* a.checkpoints.save("orders", { position: 1n })
      yield* b.checkpoints.save("orders", { position: 2n })
      const position = (checkpoints: CheckpointStore.Service) =>
        Effect.map(
          checkpoints.get("orders"),
          Option.map((c) => c.position)
        )
      assert.deepStrictEqual(yield* position(a.checkpoints), Option.some(1n))
      assert.deepStrictEqual(yield* position(b.checkpoints), Option.some(2n))

      // Projection runners: a projection of the same name is active in both stores at once
      // (advisory locks are the database's: the key carries the schema).
      const leaseA = yield* a.projections.lock("orders", { retry: Schedule.stop })
      const leaseB = yield* b.projections.lock("orders", { retry: Schedule.stop })
      assert.notStrictEqual(leaseA, leaseB)
      // Within one store, the lock still excludes a second runner.
      const second = yield* Effect.flip(Effect.scoped(a.projections.lock("orders", { retry: Schedule.stop })))
      assert.strictEqual(second._tag, "ProjectionError")
    })
  )

  it.scopedLive(
    "notifications name their schema: appends to one store wake neither the other's subscribers nor its relay",
    () =>
      Effect.gen(function* () {
        const url = yield* TestDatabase.fresh
        const a = yield* storeIn(url, "store_a", true)
        const b = yield* storeIn(url, "store_b", false)
        const heard = yield* bystander(url, ["eventfold_events", "eventfold_outbox"])

        // A subscriber of store A, polling once an hour: only a notification delivers promptly.
        const delivered = yield* Ref.make<ReadonlyArray<string>>([])
        yield* Effect.forkScoped(
          a.store
            .subscribe()
            .pipe(Stream.runForEach((e) => Ref.update(delivered, (d) => [...d, (e.event as typeof Noted.Type).text])))
        )
        const waiting = (sql: SqlClient.SqlClient) =>
          Effect.map(
            sql<{ n: number }>`SELECT count(*)::int AS n FROM eventfold_listeners WHERE waiting`,
            (r) => r[0]!.n
          )
        yield* eventually(waiting(a.sql), (n) => n === 1, { what: "store A's watcher to wait for notifications" })
        // Store B's appends notify only while a listener of B waits: one that never wakes up.
        yield* b.sql`INSERT INTO eventfold_listeners (listener_id, pid, waiting) VALUES (gen_random_uuid(), pg_backend_pid(), true)`
        // Store A's relay, counting its wake-ups.
        const relayWakeups = yield* Ref.make(0)
        const relay = yield* Effect.forkScoped(
          Stream.runForEach(a.outbox.wakeups, () => Ref.update(relayWakeups, (n) => n + 1))
        )

        const before = (yield* Metric.value(notifications)).count
        yield* b.store.append(stream(), note("b1"), { expectedVersion: ExpectedVersion.noStream })
        // The notifications of B's append went out (the bystander heard them) ...
        yield* eventually(heard.received, (r) => r.length === 2, { what: "store B's two notifications" })
        assert.deepStrictEqual([...(yield* heard.received)].sort(), [
          ["eventfold_events", "store_b"],
          ["eventfold_outbox", "store_b"]
        ])
        // Store A's own append wakes both, and reaches its subscriber long before the hourly poll.
        // A session gets notifications in commit order, so once A's own have arrived, B's had
        // reached A's LISTEN connections before them: the counts show that they woke nothing.
        yield* a.store.append(stream(), note("a1"), { expectedVersion: ExpectedVersion.noStream })
        yield* eventually(Ref.get(delivered), (d) => d.length === 1, { what: "store A's subscriber to get its event" })
        assert.deepStrictEqual(yield* Ref.get(delivered), ["a1"])
        yield* eventually(Ref.get(relayWakeups), (n) => n >= 1, { what: "store A's relay to wake" })
        assert.strictEqual(yield* Ref.get(relayWakeups), 1, "only A's append woke A's relay")
        assert.strictEqual((yield* Metric.value(notifications)).count, before + 1, "only A's append woke A's watcher")
        assert.deepStrictEqual(
          (yield* heard.received)
            .filter(([, payload]) => payload === "store_a")
            .map(([channel]) => channel)
            .sort(),
          ["eventfold_events", "eventfold_outbox"]
        )
        yield* Fiber.interrupt(relay)
      })
  )
})

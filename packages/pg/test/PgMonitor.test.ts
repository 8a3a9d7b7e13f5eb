/**
 * PgMonitor on a real PostgreSQL: every figure checked against known inputs (events
 * appended by the store, outbox entries claimed and settled, checkpoints, dead letters,
 * sessions held open), on an unmigrated database, a migrated one, a schema of its own,
 * other client setups, and a closed pool. Every failure is a typed MonitorError.
 */
import { randomBytes } from "node:crypto"
import * as SqlClient from "@effect/sql/SqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, ExpectedVersion } from "@eventfold/core"
import {
  PgCheckpointStore,
  PgDeadLetterQueue,
  PgEventStore,
  PgMigrations,
  PgMonitor,
  PgOutbox,
  PgPool
} from "@eventfold/pg"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Str from "effect/String"
import pg from "pg"
import * as TestDatabase from "../../../test/support/TestDatabase.js"
import { migrations as knownMigrations } from "../src/internal/migrations.js"

const OrderPlaced = Event.make("OrderPlaced", { total: Schema.Number })
const OrderShipped = Event.make("OrderShipped", { carrier: Schema.String })
const CustomerRegistered = Event.make("CustomerRegistered", { name: Schema.String })
const registry = EventRegistry.make(OrderPlaced, OrderShipped, CustomerRegistered)

const uniqueName = (prefix: string) => `${prefix}-${crypto.randomUUID().slice(0, 8)}`

/** A pool on `url` (in `schema` when given), its SqlClient and the monitor over it, for the scope. */
const connect = (url: string, options?: { readonly schema?: string | undefined }) =>
  Effect.gen(function* () {
    const applicationName = uniqueName("eventfold-monitor")
    const context = yield* Layer.build(
      PgPool.layer({ url: Redacted.make(url), poolSize: 2, maxOverflow: 4, applicationName, schema: options?.schema })
    )
    const monitor = Context.get(
      yield* Layer.build(PgMonitor.layer.pipe(Layer.provide(Layer.succeedContext(context)))),
      PgMonitor.PgMonitor
    )
    const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
    return { context, monitor, sql, applicationName, migrate: PgMigrations.run.pipe(Effect.provide(context)) }
  })

type Connection = Effect.Effect.Success<ReturnType<typeof connect>>

/** Fails unless `effect` fails with a MonitorError of `method` that keeps its cause (no defect). */
const monitorError = <A>(effect: Effect.Effect<A, PgMonitor.MonitorError>, method: string) =>
  Effect.gen(function* () {
    const exit = yield* Effect.exit(effect)
    if (Exit.isSuccess(exit)) return assert.fail(`PgMonitor.${method} succeeded`)
    assert.isFalse(Cause.isDie(exit.cause), `a typed failure, not a defect: ${Cause.pretty(exit.cause)}`)
    const error = Option.getOrThrow(Cause.failureOption(exit.cause))
    assert.instanceOf(error, PgMonitor.MonitorError)
    assert.strictEqual(error.method, method)
    assert.isDefined(error.cause)
    assert.include(error.message, `PgMonitor.${method} failed`)
    // Wrapped once: the cause is what failed (the overview's is the failing part's error).
    if (method !== "overview") assert.notInstanceOf(error.cause, PgMonitor.MonitorError)
    assert.notInclude(error.message.slice(1), `PgMonitor.${method} failed`)
    return error
  })

const day = 86_400_000

/** One stream's append: its events (type, payload, days before now), tenant and actor. */
interface Seed {
  readonly aggregateId: string
  readonly aggregateType: "Order" | "Customer"
  readonly tenantId: string | null
  readonly events: ReadonlyArray<{ readonly event: Event.Any; readonly daysAgo: number }>
}

/**
 * Five streams of two aggregate types (4, 3, 2, 1 and 1 events; the last two share an id),
 * in two tenants and none, with timestamps spread over 30 days, appended in this order.
 * `bigName` goes into the customer's first event (a payload that PostgreSQL moves to TOAST).
 */
const seeds = (bigName = "Ada") => {
  const tenant1 = crypto.randomUUID()
  const tenant2 = crypto.randomUUID()
  const shared = crypto.randomUUID()
  const list: ReadonlyArray<Seed> = [
    {
      aggregateId: crypto.randomUUID(),
      aggregateType: "Order",
      tenantId: tenant1,
      events: [
        { event: OrderPlaced.make({ total: 10 }), daysAgo: 30 },
        { event: OrderShipped.make({ carrier: "ups" }), daysAgo: 8 },
        { event: OrderShipped.make({ carrier: "dhl" }), daysAgo: 7 },
        { event: OrderShipped.make({ carrier: "fedex" }), daysAgo: 3 }
      ]
    },
    {
      aggregateId: crypto.randomUUID(),
      aggregateType: "Customer",
      tenantId: tenant1,
      events: [
        { event: CustomerRegistered.make({ name: bigName }), daysAgo: 3 },
        { event: CustomerRegistered.make({ name: "Grace" }), daysAgo: 1 },
        { event: CustomerRegistered.make({ name: "Edsger" }), daysAgo: 0 }
      ]
    },
    {
      aggregateId: crypto.randomUUID(),
      aggregateType: "Order",
      tenantId: tenant2,
      events: [
        { event: OrderPlaced.make({ total: 20.5 }), daysAgo: 1 },
        { event: OrderShipped.make({ carrier: "ups" }), daysAgo: 0 }
      ]
    },
    {
      aggregateId: shared,
      aggregateType: "Order",
      tenantId: null,
      events: [{ event: OrderPlaced.make({ total: 1 }), daysAgo: 0 }]
    },
    {
      aggregateId: shared,
      aggregateType: "Customer",
      tenantId: null,
      events: [{ event: CustomerRegistered.make({ name: "Barbara" }), daysAgo: 0 }]
    }
  ]
  return { tenant1, tenant2, shared, list }
}

/** The seeds appended by the store (with its outbox), each event with its timestamp and position. */
const seed = (connection: Connection, bigName?: string) =>
  Effect.gen(function* () {
    const store = yield* PgEventStore.make({ registry, outbox: true }).pipe(Effect.provide(connection.context))
    const { list, ...ids } = seeds(bigName)
    const now = Date.now()
    const streams = yield* Effect.forEach(list, (s) =>
      Effect.gen(function* () {
        const events = s.events.map((e) => ({
          ...e,
          eventId: crypto.randomUUID(),
          timestamp: new Date(now - e.daysAgo * day)
        }))
        const result = yield* store.append(
          { aggregateId: s.aggregateId, aggregateType: s.aggregateType },
          events.map(({ event, eventId, timestamp }) => ({ event, eventId, timestamp })),
          { expectedVersion: ExpectedVersion.noStream, tenantId: s.tenantId, actorId: "tester" }
        )
        return {
          ...s,
          result,
          events: events.map((e, i) => ({ ...e, version: i + 1, position: result.firstPosition + BigInt(i) }))
        }
      })
    )
    const events = streams.flatMap((s) => s.events.map((e) => ({ ...e, stream: s })))
    return { store, streams, events, ...ids }
  })

/** The payload an event is stored with: its fields without the tag. */
const payloadOf = (event: Event.Any): unknown => {
  const { _tag, ...fields } = event as unknown as { readonly _tag: string }
  return fields
}

const count = <A>(items: ReadonlyArray<A>, key: (a: A) => string) => {
  const counts = new Map<string, number>()
  for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1)
  return counts
}

describe("PgMonitor", () => {
  it.scopedLive("migrations: all pending before, none after, a newer one unknown; the overview follows", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      const connection = yield* connect(url)
      const { monitor } = connection
      const known = knownMigrations.map(({ id, name }) => ({ id, name }))

      const before = yield* monitor.migrations
      assert.deepStrictEqual(before, { applied: [], pending: known, unknown: [] })
      const fresh = yield* monitor.overview
      assert.deepStrictEqual(fresh.migrations, before)
      assert.isTrue(Option.isNone(fresh.store), "no store before the migrations")
      assert.strictEqual(fresh.database.name, new URL(url).pathname.slice(1))
      assert.strictEqual(fresh.database.schema, "public")
      assert.match(fresh.database.serverVersion, /^\d+/)
      assert.isTrue(fresh.connections.some((c) => c.applicationName === connection.applicationName))
      assert.deepInclude(Option.getOrThrow(fresh.pool), { size: 2, max: 6 })
      // The tables are not there: the figures that read them fail, typed.
      yield* monitorError(monitor.totalEvents, "totalEvents")
      yield* monitorError(monitor.indexUsage, "indexUsage")
      yield* monitorError(monitor.horizon, "horizon")
      assert.deepStrictEqual(yield* monitor.tableSizes, [])

      const startedAt = yield* connection.sql<{ readonly now: Date }>`SELECT now() AS now`
      yield* connection.migrate
      const after = yield* monitor.migrations
      assert.deepStrictEqual(
        after.applied.map(({ id, name }) => ({ id, name })),
        known
      )
      for (const m of after.applied) assert.isAtLeast(m.appliedAt.getTime(), startedAt[0]!.now.getTime())
      assert.deepStrictEqual(after.pending, [])
      assert.deepStrictEqual(after.unknown, [])
      const migrated = yield* monitor.overview
      const store = Option.getOrThrow(migrated.store)
      assert.deepStrictEqual(store.horizon, { lastPosition: 0n, writers: [] })
      assert.deepInclude(store.outbox, { pending: 0, published: 0, failed: 0, held: 0, parked: 0, inFlight: 0 })
      assert.deepStrictEqual(store.projections, [])
      assert.deepStrictEqual(store.deadLetters, [])
      assert.strictEqual(store.sizes.length, 6)
      // Never analyzed, and small: counted rather than unknown.
      assert.isNull(store.sizes[0]!.estimatedRows)
      assert.strictEqual(store.estimatedEvents, 0n)
      assert.strictEqual(store.streams, 0n)

      // Migrated by a newer Eventfold: nothing pending, the newer migration unknown.
      const newest = known.at(-1)!.id + 1
      yield* connection.sql`INSERT INTO eventfold_migrations (migration_id, name) VALUES (${newest}, 'from_the_future')`
      const newer = yield* monitor.migrations
      assert.deepStrictEqual(newer.pending, [])
      assert.deepStrictEqual(newer.unknown, [{ id: newest, name: "from_the_future" }])
      assert.strictEqual(newer.applied.length, known.length + 1)
      assert.isTrue(Option.isSome((yield* monitor.overview).store))
    })
  )

  it.scopedLive("totals, breakdowns by type and day, and the largest streams are exact", () =>
    Effect.gen(function* () {
      const connection = yield* connect(yield* TestDatabase.fresh)
      yield* connection.migrate
      const { monitor, sql } = connection
      const { events, streams } = yield* seed(connection)

      assert.strictEqual(yield* monitor.totalEvents, BigInt(events.length))
      assert.deepStrictEqual(yield* monitor.eventsByAggregateType, [
        { aggregateType: "Order", events: 7n },
        { aggregateType: "Customer", events: 4n }
      ])
      // A tie (4 and 4) is broken by name.
      assert.deepStrictEqual(yield* monitor.eventsByEventType, [
        { eventType: "CustomerRegistered", events: 4n },
        { eventType: "OrderShipped", events: 4n },
        { eventType: "OrderPlaced", events: 3n }
      ])

      // The server's calendar date of each event (its session time zone), newest first.
      const dated = yield* Effect.forEach(events, (e) =>
        Effect.map(
          sql<{ readonly date: string }>`SELECT to_char(${e.timestamp}::timestamptz, 'YYYY-MM-DD') AS date`,
          ([row]) => ({ ...e, date: row!.date })
        )
      )
      const perDay = (within: number) =>
        [
          ...count(
            dated.filter((e) => e.daysAgo <= within),
            (e) => e.date
          )
        ]
          .map(([date, n]) => ({ date, events: BigInt(n) }))
          .sort((a, b) => b.date.localeCompare(a.date))
      // The spec's window: from midnight 7 days ago, so 7 days ago is in and 8 days ago is out.
      assert.deepStrictEqual(yield* monitor.eventsPerDay(), perDay(7))
      assert.deepStrictEqual(yield* monitor.eventsPerDay({ days: 7 }), perDay(7))
      assert.deepStrictEqual(yield* monitor.eventsPerDay({ days: 60 }), perDay(60))
      assert.deepStrictEqual(yield* monitor.eventsPerDay({ days: 0 }), perDay(0))
      assert.strictEqual(perDay(7).length, 4)

      // Most events first; equal counts by id, then type (the shared id has two streams of one event).
      const largest = streams
        .map((s) => ({ aggregateId: s.aggregateId, aggregateType: s.aggregateType, events: BigInt(s.events.length) }))
        .sort((a, b) =>
          a.events !== b.events
            ? Number(b.events - a.events)
            : a.aggregateId.localeCompare(b.aggregateId) || a.aggregateType.localeCompare(b.aggregateType)
        )
      assert.deepStrictEqual(yield* monitor.largestStreams(), largest)
      assert.deepStrictEqual(yield* monitor.largestStreams({ limit: 2 }), largest.slice(0, 2))
      assert.deepStrictEqual(
        largest.slice(0, 3).map((s) => s.events),
        [4n, 3n, 2n]
      )
      yield* monitorError(monitor.largestStreams({ limit: -1 }), "largestStreams")
    })
  )

  it.scopedLive("streams: heads most recent first, by aggregate type or tenant, with a limit", () =>
    Effect.gen(function* () {
      const connection = yield* connect(yield* TestDatabase.fresh)
      yield* connection.migrate
      const { monitor } = connection
      const { streams, tenant1 } = yield* seed(connection)

      const all = yield* monitor.streams()
      // Appended one after the other: the last appended is the most recent.
      const expected = [...streams].reverse().map((s) => ({
        aggregateId: s.aggregateId,
        aggregateType: s.aggregateType,
        tenantId: s.tenantId,
        version: s.events.length
      }))
      assert.deepStrictEqual(
        all.map(({ aggregateId, aggregateType, tenantId, version }) => ({
          aggregateId,
          aggregateType,
          tenantId,
          version
        })),
        expected
      )
      for (const head of all) {
        // One append each: made and last written by the same transaction.
        assert.strictEqual(head.createdAt.getTime(), head.updatedAt.getTime())
      }
      for (let i = 1; i < all.length; i++) {
        assert.isAtMost(all[i]!.updatedAt.getTime(), all[i - 1]!.updatedAt.getTime())
      }
      const ids = (heads: ReadonlyArray<PgMonitor.StreamHead>) =>
        heads.map((h) => `${h.aggregateType}/${h.aggregateId}`)
      const idsOf = (filter: (s: (typeof expected)[number]) => boolean) =>
        expected.filter(filter).map((h) => `${h.aggregateType}/${h.aggregateId}`)
      assert.deepStrictEqual(
        ids(yield* monitor.streams({ aggregateType: "Order" })),
        idsOf((s) => s.aggregateType === "Order")
      )
      assert.strictEqual((yield* monitor.streams({ aggregateType: "Order" })).length, 3)
      // A tenant id is compared as a UUID, whatever its case.
      assert.deepStrictEqual(
        ids(yield* monitor.streams({ tenantId: tenant1.toUpperCase() })),
        idsOf((s) => s.tenantId === tenant1)
      )
      assert.deepStrictEqual(
        ids(yield* monitor.streams({ tenantId: tenant1, aggregateType: "Customer" })),
        idsOf((s) => s.tenantId === tenant1 && s.aggregateType === "Customer")
      )
      assert.deepStrictEqual(ids(yield* monitor.streams({ limit: 2 })), ids(all).slice(0, 2))
      assert.deepStrictEqual(yield* monitor.streams({ aggregateType: "Invoice" }), [])
      yield* monitorError(monitor.streams({ tenantId: "not-a-uuid" }), "streams")
    })
  )

  it.scopedLive("streamEvents: a stream's stored events in version order, as the store reads them", () =>
    Effect.gen(function* () {
      const connection = yield* connect(yield* TestDatabase.fresh)
      yield* connection.migrate
      const { monitor } = connection
      const { streams, store, shared } = yield* seed(connection)
      const order = streams[0]!

      const stored = yield* monitor.streamEvents(order.aggregateId)
      assert.deepStrictEqual(
        stored.map((e) => ({
          eventId: e.eventId,
          eventType: e.eventType,
          aggregateId: e.aggregateId,
          aggregateType: e.aggregateType,
          version: e.version,
          globalPosition: e.globalPosition,
          tenantId: e.tenantId,
          actorId: e.actorId,
          timestamp: e.timestamp,
          payload: e.payload
        })),
        order.events.map((e) => ({
          eventId: e.eventId,
          eventType: e.event._tag,
          aggregateId: order.aggregateId,
          aggregateType: "Order",
          version: e.version,
          globalPosition: e.position,
          tenantId: order.tenantId,
          actorId: "tester",
          timestamp: e.timestamp,
          payload: payloadOf(e.event)
        }))
      )
      // The envelope is the store's own, field for field.
      const read = Chunk.toReadonlyArray(
        yield* Stream.runCollect(store.readStream({ aggregateId: order.aggregateId, aggregateType: "Order" }))
      )
      assert.deepStrictEqual(
        stored.map(({ payload, ...envelope }) => envelope),
        read.map(({ event, ...envelope }) => envelope)
      )

      const versions = (events: ReadonlyArray<{ readonly version: number }>) => events.map((e) => e.version)
      assert.deepStrictEqual(versions(yield* monitor.streamEvents(order.aggregateId, { fromVersion: 2 })), [2, 3, 4])
      assert.deepStrictEqual(versions(yield* monitor.streamEvents(order.aggregateId, { limit: 2 })), [1, 2])
      assert.deepStrictEqual(
        versions(yield* monitor.streamEvents(order.aggregateId.toUpperCase(), { fromVersion: 2, limit: 2 })),
        [2, 3]
      )
      assert.deepStrictEqual(yield* monitor.streamEvents(order.aggregateId, { fromVersion: 5 }), [])
      assert.deepStrictEqual(yield* monitor.streamEvents(order.aggregateId, { aggregateType: "Customer" }), [])
      assert.deepStrictEqual(yield* monitor.streamEvents(crypto.randomUUID()), [])

      // One id, two streams: both, by type then version, unless a type is given.
      const both = yield* monitor.streamEvents(shared)
      assert.deepStrictEqual(
        both.map((e) => [e.aggregateType, e.eventType, e.payload]),
        [
          ["Customer", "CustomerRegistered", { name: "Barbara" }],
          ["Order", "OrderPlaced", { total: 1 }]
        ]
      )
      assert.deepStrictEqual(
        (yield* monitor.streamEvents(shared, { aggregateType: "Order" })).map((e) => e.eventType),
        ["OrderPlaced"]
      )
      yield* monitorError(monitor.streamEvents("order-1"), "streamEvents")
    })
  )

  it.scopedLive("tableSizes: the six tables with the catalog's sizes; estimates after ANALYZE; index usage", () =>
    Effect.gen(function* () {
      const connection = yield* connect(yield* TestDatabase.fresh)
      yield* connection.migrate
      const { monitor, sql } = connection
      // A payload large enough for PostgreSQL to keep out of line (TOAST), which is not an index.
      const { events, streams } = yield* seed(connection, randomBytes(96 * 1024).toString("base64"))
      yield* sql`ANALYZE`

      const sizes = yield* monitor.tableSizes
      assert.deepStrictEqual(
        sizes.map((s) => s.table),
        ["events", "event_streams", "event_outbox", "projection_checkpoints", "dead_letter_queue", "snapshots"]
      )
      const catalog = yield* Effect.forEach(sizes, (s) =>
        Effect.map(
          sql<{ readonly total: string; readonly table: string; readonly indexes: string }>`
            SELECT pg_total_relation_size(${s.table}::regclass)::text AS total,
                   pg_relation_size(${s.table}::regclass)::text AS table,
                   pg_indexes_size(${s.table}::regclass)::text AS indexes`,
          ([row]) => row!
        )
      )
      sizes.forEach((s, i) => {
        assert.isTrue(s.totalBytes > 0n, s.table)
        assert.strictEqual(s.totalBytes, BigInt(catalog[i]!.total), s.table)
        assert.strictEqual(s.tableBytes, BigInt(catalog[i]!.table), s.table)
        assert.strictEqual(s.indexBytes, BigInt(catalog[i]!.indexes), s.table)
        assert.isTrue(s.indexBytes > 0n, s.table)
      })
      const events_ = sizes[0]!
      assert.isTrue(events_.tableBytes > 0n)
      // The large payload is in neither the table nor its indexes.
      assert.isTrue(events_.totalBytes - events_.tableBytes - events_.indexBytes > 64n * 1024n)
      const rows = (table: string) => sizes.find((s) => s.table === table)!.estimatedRows
      assert.strictEqual(rows("events"), BigInt(events.length))
      assert.strictEqual(rows("event_streams"), BigInt(streams.length))
      assert.strictEqual(rows("event_outbox"), BigInt(events.length))
      assert.strictEqual(rows("snapshots"), 0n)

      const overview = Option.getOrThrow((yield* monitor.overview).store)
      assert.strictEqual(overview.estimatedEvents, BigInt(events.length))
      assert.strictEqual(overview.streams, BigInt(streams.length))
      assert.deepStrictEqual(
        overview.sizes.map((s) => s.table),
        sizes.map((s) => s.table)
      )

      const usage = yield* monitor.indexUsage
      const indexes = yield* sql<{ readonly indexname: string }>`
        SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'events' ORDER BY indexname`
      assert.deepStrictEqual(usage.map((u) => u.index).sort(), indexes.map((i) => i.indexname).sort())
      assert.includeMembers(
        usage.map((u) => u.index),
        ["events_pkey", "uq_events_aggregate_version", "idx_events_aggregate_type", "idx_events_timestamp"]
      )
      for (const u of usage) {
        assert.strictEqual(u.schema, "public")
        assert.strictEqual(u.table, "events")
        assert.isTrue(u.bytes > 0n, u.index)
        assert.isTrue(u.scans >= 0n, u.index)
        assert.isTrue(u.tuplesRead >= 0n && u.tuplesFetched >= 0n, u.index)
      }
      for (let i = 1; i < usage.length; i++) assert.isTrue(usage[i]!.scans <= usage[i - 1]!.scans)
    })
  )

  it.scopedLive("a partitioned table counts with its partitions, once", () =>
    Effect.gen(function* () {
      const { monitor, sql } = yield* connect(yield* TestDatabase.fresh)
      // Not Eventfold's DDL, but its name: a log partitioned by position, as the spec suggests.
      yield* sql.unsafe(`
        CREATE TABLE events (global_position BIGINT PRIMARY KEY, payload TEXT NOT NULL) PARTITION BY RANGE (global_position);
        CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (1) TO (100);
        CREATE TABLE events_2 PARTITION OF events FOR VALUES FROM (100) TO (200);
        INSERT INTO events SELECT g, 'e' || g FROM generate_series(1, 3) g;
        INSERT INTO events SELECT g, 'e' || g FROM generate_series(100, 103) g;
        ANALYZE events;`)

      const sizes = yield* monitor.tableSizes
      assert.deepStrictEqual(
        sizes.map((s) => s.table),
        ["events"]
      )
      const [catalog] = yield* sql<{ readonly total: string; readonly table: string; readonly indexes: string }>`
        SELECT sum(pg_total_relation_size(relid))::text AS total, sum(pg_relation_size(relid))::text AS table,
               sum(pg_indexes_size(relid))::text AS indexes
          FROM (VALUES ('events_1'::regclass), ('events_2'::regclass)) AS p(relid)`
      assert.deepStrictEqual(sizes[0], {
        table: "events",
        totalBytes: BigInt(catalog!.total),
        tableBytes: BigInt(catalog!.table),
        indexBytes: BigInt(catalog!.indexes),
        estimatedRows: 7n
      })
      assert.isTrue(sizes[0]!.tableBytes > 0n)
      assert.strictEqual(yield* monitor.totalEvents, 7n)

      const usage = yield* monitor.indexUsage
      assert.includeMembers(
        usage.map((u) => `${u.table}.${u.index}`),
        ["events_1.events_1_pkey", "events_2.events_2_pkey"]
      )
      for (const u of usage) assert.include(["events", "events_1", "events_2"], u.table)
    })
  )

  it.scopedLive("horizon: an open write on events holds it, with its session, until it commits", () =>
    Effect.gen(function* () {
      const connection = yield* connect(yield* TestDatabase.fresh)
      yield* connection.migrate
      const { monitor, sql } = connection
      const { store, events } = yield* seed(connection)
      const last = events.at(-1)!.position
      assert.deepStrictEqual(yield* monitor.horizon, { lastPosition: last, writers: [] })

      // A transaction on a connection of its own appends and stays open until released.
      const appended = yield* Deferred.make<{ readonly pid: number; readonly position: bigint }>()
      const release = yield* Effect.makeLatch(false)
      const holder = yield* Effect.fork(
        sql.withTransaction(
          Effect.gen(function* () {
            const [row] = yield* sql<{ readonly pid: number }>`SELECT pg_backend_pid() AS pid`
            const result = yield* store.append(
              { aggregateId: crypto.randomUUID(), aggregateType: "Order" },
              [{ event: OrderPlaced.make({ total: 3 }) }],
              { expectedVersion: ExpectedVersion.noStream }
            )
            yield* Deferred.succeed(appended, { pid: row!.pid, position: result.lastPosition })
            yield* release.await
          })
        )
      )
      const { pid, position } = yield* Deferred.await(appended)
      const held = yield* monitor.horizon
      // The position is taken, though not committed.
      assert.strictEqual(position, last + 1n)
      assert.strictEqual(held.lastPosition, position)
      assert.strictEqual(held.writers.length, 1)
      const writer = held.writers[0]!
      assert.strictEqual(writer.pid, pid)
      assert.strictEqual(writer.applicationName, connection.applicationName)
      assert.strictEqual(writer.state, "idle in transaction")
      assert.strictEqual(writer.user, "postgres")
      assert.isNotNull(writer.transactionStart)
      assert.isAtLeast(writer.transactionAgeMillis, 0)
      assert.isString(writer.query)
      assert.deepStrictEqual(
        Option.getOrThrow((yield* monitor.overview).store).horizon.writers.map((w) => w.pid),
        [pid]
      )

      yield* release.open
      yield* Fiber.join(holder)
      assert.deepStrictEqual(yield* monitor.horizon, { lastPosition: position, writers: [] })
      assert.strictEqual(yield* monitor.totalEvents, BigInt(events.length + 1))
    })
  )

  it.scopedLive("a projection far behind: its lag is counted up to lagCountLimit, and says it is a lower bound", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      const { migrate, monitor, sql } = yield* connect(url)
      yield* migrate
      const total = PgMonitor.lagCountLimit + 2
      yield* sql.unsafe(
        `INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp, payload)
         SELECT gen_random_uuid(), gen_random_uuid(), 'Bulk', 'Loaded', 1, now(), '{}'::jsonb
           FROM generate_series(1, ${total})`
      )
      yield* sql`INSERT INTO projection_checkpoints (projection_name, global_position) VALUES ('rebuilding', 0), ('near', 2)`
      const lags = yield* monitor.projections
      assert.deepStrictEqual(
        lags.map((l) => [l.name, l.headPosition, l.eventsBehind, l.eventsBehindExact]),
        [
          ["near", BigInt(total), PgMonitor.lagCountLimit, true],
          ["rebuilding", BigInt(total), PgMonitor.lagCountLimit, false]
        ]
      )
    })
  )

  it.scopedLive("outbox: pending, in flight, published, failed, held and parked as the relay leaves them", () =>
    Effect.gen(function* () {
      const connection = yield* connect(yield* TestDatabase.fresh)
      yield* connection.migrate
      const { monitor } = connection
      const { events, streams } = yield* seed(connection)
      const outbox = yield* PgOutbox.make().pipe(Effect.provide(connection.context))
      const stats = (s: Effect.Effect.Success<typeof monitor.outbox>) => ({
        pending: s.pending,
        published: s.published,
        failed: s.failed,
        held: s.held,
        parked: s.parked,
        inFlight: s.inFlight
      })
      const n = events.length

      const fresh = yield* monitor.outbox
      assert.deepStrictEqual(stats(fresh), { pending: n, published: 0, failed: 0, held: 0, parked: 0, inFlight: 0 })
      assert.isTrue(Option.isSome(fresh.oldestPendingAt))

      const claimed = yield* outbox.claim({ owner: "relay-1", limit: 100, lease: Duration.minutes(5) })
      assert.strictEqual(claimed.length, n)
      assert.deepStrictEqual(stats(yield* monitor.outbox), {
        pending: n,
        published: 0,
        failed: 0,
        held: 0,
        parked: 0,
        inFlight: n
      })

      // The first order's: version 1 published, 2 failed for good, 3 and 4 handed back (held behind 2).
      const first = streams[0]!.aggregateId
      const entry = (version: number) =>
        claimed.find((e) => e.message.aggregateId === first && e.message.version === version)!
      const others = claimed.filter((e) => e.message.aggregateId !== first)
      yield* outbox.settle({
        owner: "relay-1",
        published: [entry(1).id, ...others.map((e) => e.id)],
        failed: [{ id: entry(2).id, error: "broker said no", retryAfter: null }],
        released: [{ id: entry(3).id }, { id: entry(4).id }]
      })
      assert.deepStrictEqual(stats(yield* monitor.outbox), {
        pending: 2,
        published: n - 3,
        failed: 1,
        held: 2,
        parked: 0,
        inFlight: 0
      })

      yield* outbox.park({ eventIds: [entry(2).message.eventId], by: "operator", reason: "poison" })
      const parked = yield* monitor.outbox
      assert.deepStrictEqual(stats(parked), {
        pending: 2,
        published: n - 3,
        failed: 0,
        held: 0,
        parked: 1,
        inFlight: 0
      })
      assert.deepStrictEqual(stats(parked), stats(yield* outbox.stats))
      assert.deepStrictEqual(stats(Option.getOrThrow((yield* monitor.overview).store).outbox), stats(parked))
    })
  )

  it.scopedLive("projections: each checkpoint with the events after it; dead letters by projection and status", () =>
    Effect.gen(function* () {
      const connection = yield* connect(yield* TestDatabase.fresh)
      yield* connection.migrate
      const { monitor } = connection
      const { events, streams } = yield* seed(connection)
      const checkpoints = yield* PgCheckpointStore.make.pipe(Effect.provide(connection.context))
      const head = events.at(-1)!.position
      const fourth = events[3]!

      yield* checkpoints.save("orders", {
        position: fourth.position,
        eventId: fourth.eventId,
        eventType: fourth.event._tag,
        processed: 4
      })
      yield* checkpoints.save("all", { position: head, processed: events.length })
      yield* checkpoints.reset("rebuild")

      const lags = yield* monitor.projections
      assert.deepStrictEqual(
        lags.map((l) => ({
          name: l.name,
          position: l.position,
          eventId: l.eventId,
          eventType: l.eventType,
          eventsProcessed: l.eventsProcessed,
          headPosition: l.headPosition,
          eventsBehind: l.eventsBehind
        })),
        [
          {
            name: "all",
            position: head,
            eventId: null,
            eventType: null,
            eventsProcessed: BigInt(events.length),
            headPosition: head,
            eventsBehind: 0
          },
          {
            name: "orders",
            position: fourth.position,
            eventId: fourth.eventId,
            eventType: "OrderShipped",
            eventsProcessed: 4n,
            headPosition: head,
            eventsBehind: events.filter((e) => e.position > fourth.position).length
          },
          {
            name: "rebuild",
            position: 0n,
            eventId: null,
            eventType: null,
            eventsProcessed: 0n,
            headPosition: head,
            eventsBehind: events.length
          }
        ]
      )
      assert.strictEqual(lags[1]!.eventsBehind, events.length - 4)
      assert.strictEqual(lags[0]!.timeBehindMillis, 0)
      for (const l of lags) assert.isAtLeast(l.timeBehindMillis, 0)

      // Dead letters: two of "orders" (one then resolved), one of "customers" (then retrying).
      const stored = yield* monitor.streamEvents(streams[0]!.aggregateId)
      const customer = (yield* monitor.streamEvents(streams[1]!.aggregateId))[0]!
      const dlq = yield* PgDeadLetterQueue.make.pipe(Effect.provide(connection.context))
      assert.deepStrictEqual(yield* monitor.deadLetters, [])
      const a = yield* dlq.add("orders", stored[0]!, { message: "boom", attempts: 3 })
      const b = yield* dlq.add("orders", stored[1]!, { message: "boom", attempts: 3 })
      const c = yield* dlq.add("customers", customer, { message: "bang", attempts: 1 })
      assert.deepStrictEqual(yield* monitor.deadLetters, [
        { projection: "customers", status: "failed", count: 1, oldestFailedAt: c.firstFailedAt },
        {
          projection: "orders",
          status: "failed",
          count: 2,
          oldestFailedAt: new Date(Math.min(a.firstFailedAt.getTime(), b.firstFailedAt.getTime()))
        }
      ])
      yield* dlq.resolve(a.id, { by: "operator" })
      yield* dlq.markRetrying(c.id)
      const letters = yield* monitor.deadLetters
      assert.deepStrictEqual(letters, [
        { projection: "customers", status: "retrying", count: 1, oldestFailedAt: c.firstFailedAt },
        { projection: "orders", status: "failed", count: 1, oldestFailedAt: b.firstFailedAt },
        { projection: "orders", status: "resolved", count: 1, oldestFailedAt: a.firstFailedAt }
      ])
      const store = Option.getOrThrow((yield* monitor.overview).store)
      assert.deepStrictEqual(store.deadLetters, letters)
      assert.deepStrictEqual(
        store.projections.map((p) => [p.name, p.eventsBehind]),
        lags.map((p) => [p.name, p.eventsBehind])
      )
    })
  )

  it.scopedLive("connections: the sessions of this database by application name and state", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      const connection = yield* connect(url)
      const { monitor } = connection
      const idleName = uniqueName("eventfold-monitor-idle")
      const openName = uniqueName("eventfold-monitor-open")
      const session = (name: string) =>
        Effect.acquireRelease(
          Effect.promise(async () => {
            const client = new pg.Client({ connectionString: url, application_name: name })
            await client.connect()
            return client
          }),
          (client) => Effect.promise(() => client.end())
        )
      yield* session(idleName)
      yield* session(idleName)
      const open = yield* session(openName)
      yield* Effect.promise(() => open.query("BEGIN; SELECT 1"))

      const sessions = yield* monitor.connections
      const of = (name: string) => sessions.filter((c) => c.applicationName === name)
      assert.deepStrictEqual(of(idleName), [
        { applicationName: idleName, state: "idle", count: 2, oldestTransactionAgeMillis: 0 }
      ])
      const held = of(openName)
      assert.deepStrictEqual(
        held.map(({ state, count }) => ({ state, count })),
        [{ state: "idle in transaction", count: 1 }]
      )
      assert.isAbove(held[0]!.oldestTransactionAgeMillis, 0)
      // The monitor's own query runs on the pool, under its name.
      assert.isTrue(of(connection.applicationName).some((c) => c.state === "active" && c.count >= 1))
      // Only this database's sessions: another database's bystander is not counted.
      const elsewhere = uniqueName("eventfold-monitor-elsewhere")
      yield* Effect.acquireRelease(
        Effect.promise(async () => {
          const client = new pg.Client({ connectionString: TestDatabase.serverUrl(), application_name: elsewhere })
          await client.connect()
          return client
        }),
        (client) => Effect.promise(() => client.end())
      )
      assert.deepStrictEqual(
        (yield* monitor.connections).filter((c) => c.applicationName === elsewhere),
        []
      )
      yield* Effect.promise(() => open.query("COMMIT"))
      assert.deepStrictEqual(
        (yield* monitor.connections).filter((c) => c.applicationName === openName),
        [{ applicationName: openName, state: "idle", count: 1, oldestTransactionAgeMillis: 0 }]
      )
    })
  )

  it.scopedLive("a pool in a schema of its own sees that schema's store only", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      const main = yield* connect(url)
      yield* main.migrate
      const { events } = yield* seed(main)
      const other = yield* connect(url, { schema: "other" })

      // Not migrated yet, and the schema does not even exist: the overview says so.
      const before = yield* other.monitor.overview
      assert.isTrue(Option.isNone(before.store))
      assert.strictEqual(before.database.schema, "other")
      assert.strictEqual(before.migrations.pending.length, knownMigrations.length)
      assert.deepStrictEqual(yield* other.monitor.tableSizes, [])

      yield* other.migrate
      const store = yield* PgEventStore.make({ registry }).pipe(Effect.provide(other.context))
      const aggregateId = crypto.randomUUID()
      yield* store.append(
        { aggregateId, aggregateType: "Invoice" },
        [{ event: OrderPlaced.make({ total: 1 }) }, { event: OrderShipped.make({ carrier: "post" }) }],
        { expectedVersion: ExpectedVersion.noStream }
      )
      yield* other.sql`ANALYZE`
      const { monitor, sql } = other

      const overview = yield* monitor.overview
      assert.strictEqual(overview.database.schema, "other")
      assert.deepStrictEqual(overview.migrations.pending, [])
      assert.strictEqual(overview.migrations.applied.length, knownMigrations.length)
      assert.strictEqual(Option.getOrThrow(overview.store).estimatedEvents, 2n)
      assert.strictEqual(yield* monitor.totalEvents, 2n)
      assert.strictEqual(yield* main.monitor.totalEvents, BigInt(events.length))
      assert.deepStrictEqual(yield* monitor.eventsByAggregateType, [{ aggregateType: "Invoice", events: 2n }])
      assert.deepStrictEqual(
        (yield* monitor.streams()).map((s) => [s.aggregateId, s.version]),
        [[aggregateId, 2]]
      )
      assert.deepStrictEqual(
        (yield* monitor.streamEvents(aggregateId)).map((e) => e.version),
        [1, 2]
      )
      assert.strictEqual((yield* monitor.horizon).lastPosition, 2n)

      const sizes = yield* monitor.tableSizes
      assert.strictEqual(sizes.length, 6)
      for (const s of sizes) {
        const [row] = yield* sql<{ readonly total: string }>`
          SELECT pg_total_relation_size(${`other.${s.table}`}::regclass)::text AS total`
        assert.strictEqual(s.totalBytes, BigInt(row!.total), s.table)
      }
      assert.strictEqual(sizes.find((s) => s.table === "events")!.estimatedRows, 2n)
      assert.strictEqual(sizes.find((s) => s.table === "event_streams")!.estimatedRows, 1n)

      const usage = yield* monitor.indexUsage
      const indexes = yield* sql<{ readonly indexname: string }>`
        SELECT indexname FROM pg_indexes WHERE schemaname = 'other' AND tablename = 'events'`
      assert.deepStrictEqual(usage.map((u) => u.index).sort(), indexes.map((i) => i.indexname).sort())
      for (const u of usage) assert.strictEqual(u.schema, "other")
      for (const u of yield* main.monitor.indexUsage) assert.strictEqual(u.schema, "public")
    })
  )

  it.scopedLive("works over a plain PgClient: no pool figures, whatever its name transforms and int8 parsing", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      const main = yield* connect(url)
      yield* main.migrate
      const { events, streams } = yield* seed(main)
      const checkpoints = yield* PgCheckpointStore.make.pipe(Effect.provide(main.context))
      yield* checkpoints.save("p", { position: events[0]!.position })
      const dlq = yield* PgDeadLetterQueue.make.pipe(Effect.provide(main.context))
      const [first] = yield* main.monitor.streamEvents(streams[0]!.aggregateId)
      yield* dlq.add("p", first!, { message: "boom", attempts: 1 })
      yield* main.sql`ANALYZE`
      const reference = main.monitor
      const referenceStore = Option.getOrThrow((yield* reference.overview).store)

      const int8 = pg.types.builtins.INT8
      const bigints: typeof pg.types.getTypeParser = ((oid: number, format?: "text" | "binary") =>
        oid === int8 && format !== "binary"
          ? (value: string) => BigInt(value)
          : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser
      const setups = [
        { transformResultNames: Str.snakeToCamel, transformQueryNames: Str.camelToSnake },
        { types: { getTypeParser: bigints } }
      ] as const
      for (const setup of setups) {
        const applicationName = uniqueName("eventfold-monitor-plain")
        const client = yield* Layer.build(PgClient.layer({ url: Redacted.make(url), applicationName, ...setup }))
        const monitor = yield* PgMonitor.make.pipe(Effect.provide(client))
        const same = <A>(f: (m: PgMonitor.Service) => Effect.Effect<A, PgMonitor.MonitorError>) =>
          Effect.gen(function* () {
            assert.deepStrictEqual(yield* f(monitor), yield* f(reference))
          })
        yield* same((m) => m.migrations)
        yield* same((m) => m.totalEvents)
        yield* same((m) => m.eventsPerDay())
        yield* same((m) => m.eventsByAggregateType)
        yield* same((m) => m.eventsByEventType)
        yield* same((m) => m.largestStreams())
        yield* same((m) => m.tableSizes)
        yield* same((m) => Effect.map(m.indexUsage, (usage) => usage.map((u) => u.index).sort()))
        yield* same((m) => m.horizon)
        yield* same((m) => Effect.map(m.projections, (lags) => lags.map((l) => [l.name, l.eventsBehind])))
        yield* same((m) => m.deadLetters)
        yield* same((m) => m.streams())
        yield* same((m) => m.streamEvents(streams[0]!.aggregateId))
        assert.isTrue((yield* monitor.connections).some((c) => c.applicationName === applicationName))
        yield* same((m) => Effect.map(m.outbox, ({ oldestPendingAge, ...counts }) => counts))
        const overview = yield* monitor.overview
        assert.isTrue(Option.isNone(overview.pool), "no PgPool, no pool figures")
        const store = Option.getOrThrow(overview.store)
        assert.strictEqual(store.estimatedEvents, BigInt(events.length))
        assert.strictEqual(store.outbox.pending, events.length)
        assert.deepStrictEqual(store.sizes, referenceStore.sizes)
      }
    })
  )

  it.scopedLive("every failure is a typed MonitorError: bad input, and a pool that is closed", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      const scope = yield* Scope.make()
      const { monitor, migrate } = yield* connect(url).pipe(Scope.extend(scope))
      yield* migrate
      yield* monitorError(monitor.eventsPerDay({ days: 1.5 }), "eventsPerDay")
      yield* monitorError(monitor.streams({ limit: -1 }), "streams")
      yield* Scope.close(scope, Exit.void)

      // A table of that name that is not the Migrator's record.
      const odd = yield* connect(yield* TestDatabase.fresh)
      yield* odd.sql`CREATE TABLE eventfold_migrations (id integer)`
      yield* monitorError(odd.monitor.migrations, "migrations")
      const overview = yield* monitorError(odd.monitor.overview, "overview")
      assert.instanceOf(overview.cause, PgMonitor.MonitorError)
      assert.strictEqual((overview.cause as PgMonitor.MonitorError).method, "migrations")

      const methods: ReadonlyArray<readonly [string, Effect.Effect<unknown, PgMonitor.MonitorError>]> = [
        ["overview", monitor.overview],
        ["migrations", monitor.migrations],
        ["totalEvents", monitor.totalEvents],
        ["eventsPerDay", monitor.eventsPerDay()],
        ["eventsByAggregateType", monitor.eventsByAggregateType],
        ["eventsByEventType", monitor.eventsByEventType],
        ["largestStreams", monitor.largestStreams()],
        ["tableSizes", monitor.tableSizes],
        ["indexUsage", monitor.indexUsage],
        ["horizon", monitor.horizon],
        ["outbox", monitor.outbox],
        ["projections", monitor.projections],
        ["deadLetters", monitor.deadLetters],
        ["connections", monitor.connections],
        ["streams", monitor.streams()],
        ["streamEvents", monitor.streamEvents(crypto.randomUUID())]
      ]
      for (const [method, effect] of methods) yield* monitorError(effect, method)
    })
  )
})

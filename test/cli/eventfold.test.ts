/**
 * The `eventfold` binary (packages/cli/bin/eventfold.js), run as a child process on a
 * database of its own, with data written by the library in this process: every command's
 * table (its header and the values that matter), its `--json` document (exact values),
 * and its exit code; failures as one line on stderr that holds no password.
 */
import * as Net from "node:net"
import * as Path from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, ExpectedVersion } from "@eventfold/core"
import { PgCheckpointStore, PgDeadLetterQueue, PgEventStore, PgMigrations, PgMonitor, PgPool } from "@eventfold/pg"
import * as EmbeddedPostgres from "@eventfold/pg-embedded/EmbeddedPostgres"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import pg from "pg"
import * as TestDatabase from "../support/TestDatabase.js"
import * as TempDir from "../support/tempDir.js"
import { all, assertExit, assertPlain, errorLine, eventfold, field, interruptedEventfold, json, table } from "./run.js"

const OrderPlaced = Event.make("OrderPlaced", { total: Schema.Number })
const OrderShipped = Event.make("OrderShipped", { carrier: Schema.String })
const CustomerRegistered = Event.make("CustomerRegistered", { name: Schema.String })
const registry = EventRegistry.make(OrderPlaced, OrderShipped, CustomerRegistered)

const commands = ["migrate", "status", "stats", "streams", "outbox", "projections", "dead-letters"]
const migrationCount = 14

/** A pool of this process on `url`, migrated, and an event store (with the outbox) over it. */
const migrated = (url: string) =>
  Effect.gen(function* () {
    const context = yield* Layer.build(
      PgPool.layer({ url: Redacted.make(url), poolSize: 1, maxOverflow: 2, applicationName: "eventfold-cli-test" })
    )
    yield* Effect.provide(PgMigrations.run, context)
    const store = yield* Effect.provide(PgEventStore.make({ registry, outbox: true }), context)
    return { context, store }
  })

type Store = Effect.Effect.Success<ReturnType<typeof migrated>>["store"]

interface Appended {
  readonly aggregateId: string
  readonly aggregateType: string
  readonly tenantId: string | null
  readonly events: ReadonlyArray<{
    readonly eventId: string
    readonly eventType: string
    readonly payload: unknown
    readonly version: number
    readonly position: bigint
  }>
}

/** Appends a new stream's events, each with a known id, and returns them with their versions and positions. */
const append = (
  store: Store,
  aggregateType: "Order" | "Customer",
  events: ReadonlyArray<Event.Any>,
  options: { readonly tenantId?: string | null } = {}
): Effect.Effect<Appended, unknown> =>
  Effect.gen(function* () {
    const aggregateId = crypto.randomUUID()
    const withIds = events.map((event) => ({ event, eventId: crypto.randomUUID() }))
    const result = yield* store.append({ aggregateId, aggregateType }, withIds, {
      expectedVersion: ExpectedVersion.noStream,
      tenantId: options.tenantId ?? null,
      actorId: "cli-test"
    })
    return {
      aggregateId,
      aggregateType,
      tenantId: options.tenantId ?? null,
      events: withIds.map(({ event, eventId }, i) => {
        const { _tag, ...payload } = event as unknown as { readonly _tag: string }
        return { eventId, eventType: _tag, payload, version: i + 1, position: result.firstPosition + BigInt(i) }
      })
    }
  })

/** A port nothing listens on. */
const closedPort = Effect.async<number>((resume) => {
  const server = Net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = server.address() as Net.AddressInfo
    server.close(() => resume(Effect.succeed(port)))
  })
})

const sql = (url: string, text: string, values: ReadonlyArray<unknown> = []) =>
  TestDatabase.withClient(url, (client) => client.query(text, values as Array<unknown>).then((result) => result.rows))

describe("eventfold", () => {
  it.live(
    "--help needs no database, lists every command, has no escape codes when piped; bare eventfold (or a bare group) shows the usage; an unknown command is a usage error",
    () =>
      Effect.gen(function* () {
        const [help, bare, group, unknown] = yield* all([
          eventfold(["--help"]),
          eventfold([]),
          eventfold(["outbox"]),
          eventfold(["frobnicate"])
        ])
        assertExit(help, 0)
        assertPlain(help)
        assert.strictEqual(help.stderr, "")
        for (const command of commands) assert.match(help.stdout, new RegExp(`^ {2}- ${command} `, "m"), command)
        assert.include(help.stdout, "eventfold 0.1.0")

        assertExit(bare, 0)
        assert.strictEqual(bare.stdout, help.stdout, "a bare eventfold prints the usage")

        // A group alone: its own help, with no database either.
        assertExit(group, 0)
        assert.strictEqual(group.stderr, "")
        assert.include(group.stdout, "$ outbox")
        for (const command of ["stats", "failed", "retry", "park", "purge"]) {
          assert.match(group.stdout, new RegExp(`^ {2}- ${command} `, "m"), command)
        }

        assertExit(unknown, 2)
        assertPlain(unknown)
        assert.strictEqual(
          errorLine(unknown),
          "eventfold: Invalid subcommand for eventfold - use one of 'migrate', 'status', 'stats', 'streams', 'outbox', 'projections', 'dead-letters'"
        )
      }),
    60_000
  )

  it.scopedLive(
    "status shows an open writer holding subscribers back, and its statement (which may hold data) only with --queries",
    () =>
      Effect.gen(function* () {
        const url = yield* TestDatabase.fresh
        const env = { DATABASE_URL: url }
        assertExit(yield* eventfold(["migrate"], env), 0)
        // A transaction that wrote to the log and stays open, its statement holding a literal.
        const secret = "4111-1111-1111-1111"
        const writer = yield* Effect.acquireRelease(
          Effect.promise(async () => {
            const client = new pg.Client({ connectionString: url, application_name: "checkout-service" })
            await client.connect()
            const pid = (await client.query("SELECT pg_backend_pid() AS pid")).rows[0].pid as number
            await client.query("BEGIN")
            await client.query(
              `INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp, payload)
               VALUES (gen_random_uuid(), gen_random_uuid(), 'Card', 'CardAdded', 1, now(), '{"number": "${secret}"}')`
            )
            return { client, pid }
          }),
          ({ client }) => Effect.promise(() => client.query("ROLLBACK").then(() => client.end()))
        )
        const pid = writer.pid
        const [plain, asJson, withQueries] = yield* all([
          eventfold(["status"], env),
          eventfold(["status", "--json"], env),
          eventfold(["status", "--queries"], env)
        ])
        for (const run of [plain, asJson]) {
          assertExit(run, 0)
          assert.notInclude(run.stdout + run.stderr, secret)
        }
        const writers = table(plain.stdout, "PID")
        assert.deepStrictEqual(writers[0], ["PID", "APPLICATION", "STATE", "OPEN FOR"])
        assert.deepStrictEqual(writers[1]!.slice(0, 3), [String(pid), "checkout-service", "idle in transaction"])
        const o = json<{ store: { horizon: { writers: Array<{ pid: number; query: string | null }> } } }>(asJson)
        assert.deepStrictEqual(
          o.store.horizon.writers.map((w) => [w.pid, w.query]),
          [[pid, null]]
        )
        assertExit(withQueries, 0)
        assert.isTrue(table(withQueries.stdout, "PID")[0]!.includes("LAST STATEMENT"))
        assert.include(withQueries.stdout, "INSERT INTO events")
      }),
    120_000
  )

  it.scopedLive(
    "a fresh database: status and migrate --status exit 5 until migrate applies the migrations, once",
    () =>
      Effect.gen(function* () {
        const env = { DATABASE_URL: yield* TestDatabase.fresh }

        const [status, pending] = yield* all([eventfold(["status"], env), eventfold(["migrate", "--status"], env)])
        assertExit(status, 5)
        assert.strictEqual(
          errorLine(status, { stdout: "any" }),
          "eventfold: 14 migrations are pending: run eventfold migrate"
        )
        assert.strictEqual(field(status.stdout, "Migrations"), `0 applied, ${migrationCount} pending`)
        assert.strictEqual(field(status.stdout, "Store"), "not migrated: run eventfold migrate")

        assertExit(pending, 5)
        const rows = table(pending.stdout, "ID")
        assert.deepStrictEqual(rows[0], ["ID", "NAME", "STATE", "APPLIED"])
        assert.strictEqual(rows.length - 1, migrationCount)
        assert.deepStrictEqual(rows[1], ["1", "events", "pending", "-"])
        assert.deepStrictEqual(rows[migrationCount], [
          String(migrationCount),
          "notifications_by_schema",
          "pending",
          "-"
        ])
        assert.include(pending.stdout, `0 applied, ${migrationCount} pending`)

        const migrate = assertExit(yield* eventfold(["migrate"], env), 0)
        assert.match(
          migrate.stdout,
          /^Applied 14 migrations: 1_events, 2_event_outbox, .*, 14_notifications_by_schema\.\n/
        )
        assert.include(migrate.stdout, `${migrationCount} applied, 0 pending.`)

        const [again, statusJson, overview] = yield* all([
          eventfold(["migrate"], env),
          eventfold(["migrate", "--status", "--json"], env),
          eventfold(["status", "--json"], env)
        ])
        assertExit(again, 0)
        assert.strictEqual(again.stdout, `Nothing to apply: ${migrationCount} applied, 0 pending.\n`)

        assertExit(statusJson, 0)
        const migrations = json<{
          applied: Array<{ id: number; name: string; appliedAt: string }>
          pending: Array<unknown>
          unknown: Array<unknown>
        }>(statusJson)
        assert.deepStrictEqual(migrations.pending, [])
        assert.deepStrictEqual(migrations.unknown, [])
        assert.deepStrictEqual(
          migrations.applied.map((m) => m.id),
          Array.from({ length: migrationCount }, (_, i) => i + 1)
        )
        assert.isFalse(Number.isNaN(Date.parse(migrations.applied[0]!.appliedAt)))

        assertExit(overview, 0)
        assert.strictEqual(overview.stderr, "")
        const o = json<{
          database: { name: string; schema: string }
          store: {
            horizon: { lastPosition: number; writers: Array<unknown> }
            outbox: Record<string, unknown>
            projections: Array<unknown>
            deadLetters: Array<unknown>
          } | null
          connections: Array<{ applicationName: string; state: string; count: number }>
        }>(overview)
        assert.strictEqual(o.database.name, new URL(env.DATABASE_URL).pathname.slice(1))
        assert.strictEqual(o.database.schema, "public")
        assert.isNotNull(o.store)
        assert.deepStrictEqual(o.store!.horizon, { lastPosition: 0, writers: [] })
        assert.deepStrictEqual(o.store!.outbox, {
          pending: 0,
          published: 0,
          failed: 0,
          held: 0,
          parked: 0,
          inFlight: 0,
          oldestPendingAt: null,
          oldestPendingAge: null
        })
        assert.deepStrictEqual(o.store!.projections, [])
        assert.deepStrictEqual(o.store!.deadLetters, [])
        assert.isTrue(
          o.connections.some((c) => c.applicationName === "eventfold-cli" && c.state === "active" && c.count >= 1),
          JSON.stringify(o.connections)
        )
      }),
    120_000
  )

  it.scopedLive(
    "stats and streams: counts by type, the largest stream, filters, a stream's events as appended",
    () =>
      Effect.gen(function* () {
        const url = yield* TestDatabase.fresh
        const env = { DATABASE_URL: url }
        const { store } = yield* migrated(url)
        const tenant = crypto.randomUUID()
        const a = yield* append(
          store,
          "Order",
          [
            OrderPlaced.make({ total: 12.5 }),
            OrderShipped.make({ carrier: "ups" }),
            OrderShipped.make({ carrier: "dhl" })
          ],
          { tenantId: tenant }
        )
        const b = yield* append(store, "Customer", [CustomerRegistered.make({ name: "Ada" })], { tenantId: tenant })
        const c = yield* append(store, "Order", [OrderPlaced.make({ total: 7 })])
        const d = yield* append(store, "Customer", [
          CustomerRegistered.make({ name: "Grace" }),
          CustomerRegistered.make({ name: "Grace Hopper" })
        ])

        const [
          statsJson,
          stats,
          list,
          customers,
          ofTenant,
          badTenant,
          badLimit,
          show,
          showJson,
          showLater,
          unknown,
          notUuid
        ] = yield* all([
          eventfold(["stats", "--json"], env),
          eventfold(["stats"], env),
          eventfold(["streams", "list"], env),
          eventfold(["streams", "list", "--type", "Customer", "--json"], env),
          // A tenant in upper case is the same tenant; the newest of its two streams.
          eventfold(["streams", "list", "--tenant", tenant.toUpperCase(), "--limit", "1", "--json"], env),
          eventfold(["streams", "list", "--tenant", "acme"], env),
          eventfold(["streams", "list", "--limit", "-1"], env),
          eventfold(["streams", "show", a.aggregateId], env),
          eventfold(["streams", "show", a.aggregateId, "--json"], env),
          eventfold(["streams", "show", a.aggregateId, "--from", "4"], env),
          eventfold(["streams", "show", crypto.randomUUID()], env),
          eventfold(["streams", "show", "order-1"], env)
        ])

        assertExit(statsJson, 0)
        const s = json<{
          totalEvents: number
          byAggregateType: Array<unknown>
          byEventType: Array<unknown>
          perDay: Array<{ date: string; events: number }>
          largestStreams: Array<unknown>
          sizes: Array<{ table: string }>
          indexUsage: Array<{ table: string }>
        }>(statsJson)
        assert.strictEqual(s.totalEvents, 7)
        assert.deepStrictEqual(s.byAggregateType, [
          { aggregateType: "Order", events: 4 },
          { aggregateType: "Customer", events: 3 }
        ])
        assert.deepStrictEqual(s.byEventType, [
          { eventType: "CustomerRegistered", events: 3 },
          { eventType: "OrderPlaced", events: 2 },
          { eventType: "OrderShipped", events: 2 }
        ])
        assert.deepStrictEqual(s.largestStreams[0], { aggregateId: a.aggregateId, aggregateType: "Order", events: 3 })
        assert.strictEqual(s.largestStreams.length, 4)
        assert.strictEqual(
          s.perDay.reduce((sum, day) => sum + day.events, 0),
          7
        )
        assert.deepStrictEqual(
          s.sizes.map((size) => size.table),
          ["events", "event_streams", "event_outbox", "projection_checkpoints", "dead_letter_queue", "snapshots"]
        )
        assert.isNotEmpty(s.indexUsage)

        assertExit(stats, 0)
        assert.strictEqual(field(stats.stdout, "Events"), "7")
        assert.deepStrictEqual(table(stats.stdout, "AGGREGATE TYPE"), [
          ["AGGREGATE TYPE", "EVENTS"],
          ["Order", "4"],
          ["Customer", "3"]
        ])
        assert.deepStrictEqual(table(stats.stdout, "EVENT TYPE"), [
          ["EVENT TYPE", "EVENTS"],
          ["CustomerRegistered", "3"],
          ["OrderPlaced", "2"],
          ["OrderShipped", "2"]
        ])
        const largest = table(stats.stdout, "AGGREGATE ID")
        assert.deepStrictEqual(largest[0], ["AGGREGATE ID", "TYPE", "EVENTS"])
        assert.deepStrictEqual(largest[1], [a.aggregateId, "Order", "3"])
        assert.deepStrictEqual(table(stats.stdout, "TABLE")[0], ["TABLE", "ROWS (EST.)", "TOTAL", "DATA", "INDEXES"])
        assert.include(stats.stdout, "Index usage (events)")

        // Most recently written first.
        assertExit(list, 0)
        const streams = table(list.stdout, "AGGREGATE ID")
        assert.deepStrictEqual(streams[0], ["AGGREGATE ID", "TYPE", "TENANT", "VERSION", "UPDATED"])
        assert.deepStrictEqual(
          streams.slice(1).map((row) => row.slice(0, 4)),
          [
            [d.aggregateId, "Customer", "-", "2"],
            [c.aggregateId, "Order", "-", "1"],
            [b.aggregateId, "Customer", tenant, "1"],
            [a.aggregateId, "Order", tenant, "3"]
          ]
        )
        assert.match(streams[1]![4]!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)

        assertExit(customers, 0)
        const heads = (run: typeof customers) =>
          json<Array<{ aggregateId: string; aggregateType: string; tenantId: string | null; version: number }>>(
            run
          ).map(({ aggregateId, aggregateType, tenantId, version }) => ({
            aggregateId,
            aggregateType,
            tenantId,
            version
          }))
        assert.deepStrictEqual(heads(customers), [
          { aggregateId: d.aggregateId, aggregateType: "Customer", tenantId: null, version: 2 },
          { aggregateId: b.aggregateId, aggregateType: "Customer", tenantId: tenant, version: 1 }
        ])
        assertExit(ofTenant, 0)
        assert.deepStrictEqual(heads(ofTenant), [
          { aggregateId: b.aggregateId, aggregateType: "Customer", tenantId: tenant, version: 1 }
        ])
        assertExit(badTenant, 2)
        assert.strictEqual(errorLine(badTenant), 'eventfold: --tenant must be a UUID, not "acme"')
        // Refused before it reaches the database (where a negative LIMIT is an operation failure).
        assertExit(badLimit, 2)
        assert.strictEqual(errorLine(badLimit), "eventfold: --limit must be at least 1, not -1")

        assertExit(show, 0)
        assert.match(
          show.stdout,
          new RegExp(`^Order ${a.aggregateId} v1  OrderPlaced  position ${a.events[0]!.position}  \\S+Z\n`)
        )
        assert.include(show.stdout, `  tenant ${tenant}\n  actor cli-test\n  {\n    "total": 12.5\n  }`)
        assert.include(show.stdout, `Order ${a.aggregateId} v3  OrderShipped  position ${a.events[2]!.position}`)
        assert.include(show.stdout, `  {\n    "carrier": "dhl"\n  }`)

        assertExit(showJson, 0)
        assert.match(showJson.stdout, /"globalPosition": \d+,/, "positions are JSON numbers")
        const events =
          json<
            Array<{
              eventId: string
              eventType: string
              aggregateId: string
              aggregateType: string
              version: number
              globalPosition: number
              tenantId: string | null
              actorId: string | null
              payload: unknown
            }>
          >(showJson)
        assert.deepStrictEqual(
          events.map((e) => ({
            eventId: e.eventId,
            eventType: e.eventType,
            version: e.version,
            position: BigInt(e.globalPosition),
            payload: e.payload
          })),
          a.events.map((e) => ({ ...e }))
        )
        for (const e of events) {
          assert.strictEqual(e.aggregateId, a.aggregateId)
          assert.strictEqual(e.tenantId, tenant)
          assert.strictEqual(e.actorId, "cli-test")
        }

        // The stream exists, with no events after v3.
        assertExit(showLater, 0)
        assert.strictEqual(showLater.stdout, "(no events from version 4)\n")

        assertExit(unknown, 4)
        assert.match(errorLine(unknown), /^eventfold: no events in stream [0-9a-f-]{36}$/)
        assertExit(notUuid, 2)
        assert.strictEqual(errorLine(notUuid), 'eventfold: aggregate-id must be a UUID, not "order-1"')
      }),
    180_000
  )

  it.scopedLive(
    "outbox: stats, failed entries with their errors, retry one or all, park, purge published ones",
    () =>
      Effect.gen(function* () {
        const url = yield* TestDatabase.fresh
        const env = { DATABASE_URL: url }
        const { store } = yield* migrated(url)
        // Every append writes its outbox entries, pending; no relay runs here.
        const o = yield* append(store, "Order", [
          OrderPlaced.make({ total: 1 }),
          OrderShipped.make({ carrier: "ups" }),
          OrderShipped.make({ carrier: "dhl" })
        ])
        const cust = yield* append(store, "Customer", [
          CustomerRegistered.make({ name: "a" }),
          CustomerRegistered.make({ name: "b" }),
          CustomerRegistered.make({ name: "c" })
        ])
        const x = yield* append(store, "Order", [OrderPlaced.make({ total: 2 })])
        const eventId = (stream: Appended, version: number) => stream.events[version - 1]!.eventId
        const [o1, o2, o3] = [eventId(o, 1), eventId(o, 2), eventId(o, 3)]
        const [c1, c2, c3] = [eventId(cust, 1), eventId(cust, 2), eventId(cust, 3)]
        const x1 = eventId(x, 1)
        // What a relay leaves behind: failures out of retries, entries published 10 days and 1 day ago.
        const fail = (eventId: string, error: string) =>
          sql(url, "UPDATE event_outbox SET status = 'failed', retry_count = 3, last_error = $2 WHERE event_id = $1", [
            eventId,
            error
          ])
        yield* fail(o1, "broker refused: o1")
        yield* fail(x1, "broker refused: x1")
        yield* fail(c3, "message too large")
        yield* sql(
          url,
          "UPDATE event_outbox SET status = 'published', published_at = now() - $2::interval WHERE event_id = $1",
          [c1, "10 days"]
        )
        yield* sql(
          url,
          "UPDATE event_outbox SET status = 'published', published_at = now() - $2::interval WHERE event_id = $1",
          [c2, "1 day"]
        )

        const [stats, failed, retryNothing, purgeNumber, parkPublished] = yield* all([
          eventfold(["outbox", "stats", "--json"], env),
          eventfold(["outbox", "failed"], env),
          eventfold(["outbox", "retry"], env),
          eventfold(["outbox", "purge", "--older-than", "7"], env),
          // c2 is published: naming only entries the command cannot act on is "not found".
          eventfold(["outbox", "park", "--event-id", c2, "--reason", "x"], env)
        ])
        assertExit(parkPublished, 4)
        assert.strictEqual(errorLine(parkPublished), `eventfold: no failed outbox entry has event id ${c2}`)
        assertExit(stats, 0)
        const figures = json<Record<string, unknown>>(stats)
        assert.deepStrictEqual(
          {
            ...figures,
            oldestPendingAt: typeof figures.oldestPendingAt,
            oldestPendingAge: typeof figures.oldestPendingAge
          },
          {
            // o2 and o3, behind the failed o1.
            pending: 2,
            held: 2,
            published: 2,
            failed: 3,
            parked: 0,
            inFlight: 0,
            oldestPendingAt: "string",
            oldestPendingAge: "number"
          }
        )

        assertExit(failed, 0)
        const rows = table(failed.stdout, "EVENT ID")
        assert.deepStrictEqual(rows[0], ["EVENT ID", "EVENT TYPE", "AGGREGATE", "STATUS", "TRIES", "LAST ERROR"])
        assert.sameDeepMembers(rows.slice(1), [
          [o1, "OrderPlaced", `Order ${o.aggregateId} v1`, "failed", "3", "broker refused: o1"],
          [x1, "OrderPlaced", `Order ${x.aggregateId} v1`, "failed", "3", "broker refused: x1"],
          [c3, "CustomerRegistered", `Customer ${cust.aggregateId} v3`, "failed", "3", "message too large"]
        ])

        assertExit(retryNothing, 2)
        assert.strictEqual(errorLine(retryNothing), "eventfold: name the entries with --event-id, or pass --all")
        assertExit(purgeNumber, 2)
        assert.strictEqual(
          errorLine(purgeNumber),
          'eventfold: --older-than: "7" is not a duration with a unit (7d, 12h, 30m)'
        )

        const [retried, parked] = yield* all([
          eventfold(["outbox", "retry", "--event-id", o1], env),
          eventfold(["outbox", "park", "--event-id", x1, "--reason", "poison message", "--by", "ops"], env)
        ])
        assertExit(retried, 0)
        assert.strictEqual(retried.stdout, "1 entry back to pending.\n")
        assertExit(parked, 0)
        assert.strictEqual(parked.stdout, "1 entry parked.\n")

        const [parkedList, purged] = yield* all([
          eventfold(["outbox", "failed", "--parked", "--json"], env),
          eventfold(["outbox", "purge", "--older-than", "7d", "--json"], env)
        ])
        assertExit(parkedList, 0)
        const parkedRows =
          json<
            Array<{
              status: string
              retryCount: number
              lastError: string
              message: { eventId: string; aggregateId: string; payload: unknown }
              parked: { by: string; reason: string; at: string }
            }>
          >(parkedList)
        assert.strictEqual(parkedRows.length, 1)
        const [p] = parkedRows
        assert.deepStrictEqual(
          {
            status: p!.status,
            retryCount: p!.retryCount,
            lastError: p!.lastError,
            eventId: p!.message.eventId,
            aggregateId: p!.message.aggregateId,
            payload: p!.message.payload,
            by: p!.parked.by,
            reason: p!.parked.reason
          },
          {
            status: "parked",
            retryCount: 3,
            lastError: "broker refused: x1",
            eventId: x1,
            aggregateId: x.aggregateId,
            payload: { total: 2 },
            by: "ops",
            reason: "poison message"
          }
        )
        assertExit(purged, 0)
        assert.deepStrictEqual(json(purged), { deleted: 1 })

        // The parked entry stays parked: --all takes the failed ones only.
        const retryAll = assertExit(yield* eventfold(["outbox", "retry", "--all", "--json"], env), 0)
        assert.deepStrictEqual(json(retryAll), { retried: 1 })

        const after = yield* sql(url, "SELECT event_id::text, status, retry_count FROM event_outbox")
        const byId = new Map(after.map((row) => [row.event_id as string, [row.status, row.retry_count]]))
        assert.deepStrictEqual(Object.fromEntries([o1, o2, o3, c1, c2, c3, x1].map((id) => [id, byId.get(id)])), {
          [o1]: ["pending", 0],
          [o2]: ["pending", 0],
          [o3]: ["pending", 0],
          [c1]: undefined,
          [c2]: ["published", 0],
          [c3]: ["pending", 0],
          [x1]: ["parked", 3]
        })
      }),
    180_000
  )

  it.scopedLive(
    "projections: checkpoints with their position and events behind; reset moves one back, an unknown one is not found",
    () =>
      Effect.gen(function* () {
        const url = yield* TestDatabase.fresh
        const env = { DATABASE_URL: url }
        const { context, store } = yield* migrated(url)
        const order = yield* append(store, "Order", [
          OrderPlaced.make({ total: 3 }),
          OrderShipped.make({ carrier: "ups" }),
          OrderShipped.make({ carrier: "dhl" })
        ])
        const customer = yield* append(store, "Customer", [
          CustomerRegistered.make({ name: "a" }),
          CustomerRegistered.make({ name: "b" })
        ])
        const head = customer.events[1]!.position
        const second = order.events[1]!
        const checkpoints = yield* Effect.provide(PgCheckpointStore.make, context)
        yield* checkpoints.save("order-view", {
          position: second.position,
          eventId: second.eventId,
          eventType: second.eventType,
          processed: 2
        })
        yield* checkpoints.save("audit", { position: head, processed: 5 })

        const [list, listJson] = yield* all([
          eventfold(["projections", "list"], env),
          eventfold(["projections", "list", "--json"], env)
        ])
        assertExit(list, 0)
        const rows = table(list.stdout, "PROJECTION")
        assert.deepStrictEqual(rows[0], [
          "PROJECTION",
          "POSITION",
          "BEHIND",
          "TIME BEHIND",
          "PROCESSED",
          "LAST EVENT",
          "UPDATED"
        ])
        const byName = new Map(rows.slice(1).map((row) => [row[0], row]))
        assert.deepStrictEqual(byName.get("order-view")?.slice(0, 3), ["order-view", String(second.position), "3"])
        assert.deepStrictEqual(byName.get("order-view")?.slice(4, 6), ["2", "OrderShipped"])
        assert.deepStrictEqual(byName.get("audit")?.slice(0, 6), ["audit", String(head), "0", "0ms", "5", "-"])

        assertExit(listJson, 0)
        const lags =
          json<
            Array<{
              name: string
              position: number
              headPosition: number
              eventsBehind: number
              eventsProcessed: number
              eventId: string | null
              eventType: string | null
              timeBehindMillis: number
            }>
          >(listJson)
        const orderView = lags.find((l) => l.name === "order-view")
        assert.deepStrictEqual(
          orderView && {
            position: BigInt(orderView.position),
            headPosition: BigInt(orderView.headPosition),
            eventsBehind: orderView.eventsBehind,
            eventsProcessed: orderView.eventsProcessed,
            eventId: orderView.eventId,
            eventType: orderView.eventType
          },
          {
            position: second.position,
            headPosition: head,
            eventsBehind: 3,
            eventsProcessed: 2,
            eventId: second.eventId,
            eventType: "OrderShipped"
          }
        )
        assert.isAtLeast(orderView!.timeBehindMillis, 0)

        const [forward, unknown] = yield* all([
          eventfold(["projections", "reset", "order-view", "--to", String(second.position + 1n)], env),
          eventfold(["projections", "reset", "no-such-view"], env)
        ])
        // Forward would skip events unhandled: refused, the checkpoint left where it is.
        assertExit(forward, 2)
        assert.strictEqual(
          errorLine(forward),
          `eventfold: --to ${second.position + 1n} is past the checkpoint of order-view (${second.position}): a reset only moves it back`
        )
        const reset = yield* eventfold(["projections", "reset", "order-view", "--to", "0"], env)
        assertExit(reset, 0)
        assert.match(reset.stdout, /^Checkpoint of order-view reset to 0\. Its read model was not cleared/)
        assertExit(unknown, 4)
        assert.strictEqual(errorLine(unknown), "eventfold: projection no-such-view has no checkpoint")

        const after = yield* sql(
          url,
          "SELECT projection_name, global_position::text AS position, events_processed::text AS processed FROM projection_checkpoints ORDER BY 1"
        )
        assert.deepStrictEqual(after, [
          { projection_name: "audit", position: String(head), processed: "5" },
          { projection_name: "order-view", position: "0", processed: "0" }
        ])
      }),
    120_000
  )

  it.scopedLive(
    "dead letters: list with filters, show one with its event, resolve it; unknown and malformed ids",
    () =>
      Effect.gen(function* () {
        const url = yield* TestDatabase.fresh
        const env = { DATABASE_URL: url }
        const { context, store } = yield* migrated(url)
        const order = yield* append(store, "Order", [
          OrderPlaced.make({ total: 99.95 }),
          OrderShipped.make({ carrier: "ups" })
        ])
        const customer = yield* append(store, "Customer", [CustomerRegistered.make({ name: "Ada" })])
        const queue = yield* Effect.provide(PgDeadLetterQueue.make, context)
        const monitor = yield* Effect.provide(PgMonitor.make, context)
        const [placed, shipped] = yield* monitor.streamEvents(order.aggregateId)
        const [registered] = yield* monitor.streamEvents(customer.aggregateId)
        const first = yield* queue.add("order-view", placed!, {
          message: "boom: no such customer",
          stacktrace: "Error: boom: no such customer\n    at handler (orders.ts:12)",
          attempts: 4
        })
        const second = yield* queue.add("order-view", shipped!, { message: "second failure", attempts: 1 })
        const third = yield* queue.add("customer-view", registered!, { message: "name too long", attempts: 2 })

        const [list, ofCustomers, show, unknown, malformed] = yield* all([
          eventfold(["dead-letters", "list"], env),
          eventfold(["dead-letters", "list", "--projection", "customer-view", "--json"], env),
          eventfold(["dead-letters", "show", String(first.id)], env),
          eventfold(["dead-letters", "show", "999999"], env),
          eventfold(["dead-letters", "show", "abc"], env)
        ])
        assertExit(list, 0)
        const rows = table(list.stdout, "ID")
        assert.deepStrictEqual(rows[0], [
          "ID",
          "PROJECTION",
          "EVENT TYPE",
          "POSITION",
          "STATUS",
          "TRIES",
          "LAST FAILED",
          "ERROR"
        ])
        const cells = (row: ReadonlyArray<string>) => [...row.slice(0, 6), row[7]]
        assert.deepStrictEqual(rows.slice(1).map(cells), [
          [
            String(first.id),
            "order-view",
            "OrderPlaced",
            String(placed!.globalPosition),
            "failed",
            String(first.retryCount),
            "boom: no such customer"
          ],
          [
            String(second.id),
            "order-view",
            "OrderShipped",
            String(shipped!.globalPosition),
            "failed",
            String(second.retryCount),
            "second failure"
          ],
          [
            String(third.id),
            "customer-view",
            "CustomerRegistered",
            String(registered!.globalPosition),
            "failed",
            String(third.retryCount),
            "name too long"
          ]
        ])

        assertExit(ofCustomers, 0)
        const letters =
          json<
            Array<{
              id: number
              projection: string
              eventId: string
              globalPosition: number
              eventData: unknown
              status: string
            }>
          >(ofCustomers)
        assert.deepStrictEqual(
          letters
            .map((l) => ({ ...l, id: BigInt(l.id), globalPosition: BigInt(l.globalPosition) }))
            .map(({ id, projection, eventId, globalPosition, eventData, status }) => ({
              id,
              projection,
              eventId,
              globalPosition,
              eventData,
              status
            })),
          [
            {
              id: third.id,
              projection: "customer-view",
              eventId: registered!.eventId,
              globalPosition: registered!.globalPosition,
              // The event as the queue keeps it: its envelope, with the payload in it.
              eventData: {
                event_id: registered!.eventId,
                event_type: "CustomerRegistered",
                aggregate_id: customer.aggregateId,
                aggregate_type: "Customer",
                version: 1,
                global_position: String(registered!.globalPosition),
                tenant_id: null,
                actor_id: "cli-test",
                timestamp: registered!.timestamp.toISOString(),
                created_at: registered!.createdAt.toISOString(),
                payload: { name: "Ada" }
              },
              status: "failed"
            }
          ]
        )

        assertExit(show, 0)
        assert.strictEqual(field(show.stdout, "id"), String(first.id))
        assert.strictEqual(field(show.stdout, "projection"), "order-view")
        assert.strictEqual(field(show.stdout, "event"), `OrderPlaced ${placed!.eventId}`)
        assert.strictEqual(field(show.stdout, "status"), "failed")
        assert.strictEqual(field(show.stdout, "error"), "boom: no such customer")
        assert.include(show.stdout, "Stack\n  Error: boom: no such customer\n      at handler (orders.ts:12)")
        assert.include(show.stdout, "\n\nEvent\n  {\n")
        assert.include(show.stdout, `\n    "event_id": "${placed!.eventId}"`)
        assert.include(show.stdout, '\n    "payload": {\n      "total": 99.95\n    }')

        assertExit(unknown, 4)
        assert.strictEqual(errorLine(unknown), "eventfold: dead letter 999999 does not exist")
        assertExit(malformed, 2)
        assert.strictEqual(errorLine(malformed), 'eventfold: id must be a number, not "abc"')

        const resolve = assertExit(
          yield* eventfold(["dead-letters", "resolve", String(first.id), "--by", "me"], env),
          0
        )
        assert.strictEqual(resolve.stdout, `Dead letter ${first.id} resolved by me.\n`)

        const resolved = assertExit(
          yield* eventfold(["dead-letters", "list", "--status", "resolved", "--json"], env),
          0
        )
        const done = json<Array<{ id: number; status: string; resolvedBy: string; resolvedAt: string }>>(resolved)
        assert.deepStrictEqual(
          done.map((d) => [BigInt(d.id), d.status, d.resolvedBy]),
          [[first.id, "resolved", "me"]]
        )
        assert.isFalse(Number.isNaN(Date.parse(done[0]!.resolvedAt)))
      }),
    120_000
  )

  describe("without a database to work on", () => {
    const secret = "s3cr3t-pass"

    it.scopedLive(
      "not configured, unreachable, unparseable, wrong password: exit 3 with one line, and no password anywhere",
      () =>
        Effect.gen(function* () {
          // A server that checks passwords: the embedded one authenticates with scram-sha-256 (password "postgres").
          const server = yield* EmbeddedPostgres.start({
            dataDir: Path.join(yield* TempDir.tempDir("cli-password"), "data"),
            persistent: false,
            durability: "relaxed"
          })
          const port = yield* closedPort
          const [none, closed, unparseable, wrongPassword] = yield* all([
            eventfold(["status"]),
            eventfold(["status", "--json"], { DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/x` }),
            eventfold(["status"], { DATABASE_URL: `postgres://u:${secret}@[bad/x` }),
            eventfold(["migrate"], {
              DATABASE_URL: `postgres://postgres:${secret}@${server.host}:${server.port}/postgres`
            })
          ])

          assertExit(none, 3)
          assert.include(errorLine(none), "DATABASE_URL")

          assertExit(closed, 3)
          assert.match(
            errorLine(closed),
            new RegExp(`^eventfold: PgPool: cannot connect to PostgreSQL at 127\\.0\\.0\\.1:${port}: `)
          )
          // It tries for 5 seconds and gives up (the margin is for a loaded machine).
          assert.isBelow(closed.millis, 30_000)

          assertExit(unparseable, 3)
          assert.include(errorLine(unparseable), "Expected a PostgreSQL URL")

          assertExit(wrongPassword, 3)
          assert.include(errorLine(wrongPassword), "password authentication failed")

          for (const run of [none, closed, unparseable, wrongPassword]) {
            assertPlain(run)
            assert.notInclude(run.stdout + run.stderr, secret, `${run.args.join(" ")} printed the password`)
          }
        }),
      120_000
    )

    it.live(
      "interrupted (Ctrl-C) while it waits for the server: exit 130, and it says so",
      () =>
        Effect.gen(function* () {
          const port = yield* closedPort
          // SIGINT once it has said that it is waiting for the server, so surely while it waits.
          const run = yield* interruptedEventfold(
            ["status"],
            { DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/x` },
            (stderr) => stderr.includes("cannot be reached yet")
          )
          assertExit(run, 130)
          // The only line besides its warnings: it did not go on to fail to connect.
          assert.strictEqual(errorLine(run), "eventfold: interrupted")
        }),
      60_000
    )

    it.live(
      "terminated (SIGTERM, as a service manager stops it) while it waits: exit 143, and it says so",
      () =>
        Effect.gen(function* () {
          const port = yield* closedPort
          const run = yield* interruptedEventfold(
            ["status"],
            { DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/x` },
            (stderr) => stderr.includes("cannot be reached yet"),
            "SIGTERM"
          )
          assertExit(run, 143)
          assert.strictEqual(errorLine(run), "eventfold: terminated")
        }),
      60_000
    )
  })
})

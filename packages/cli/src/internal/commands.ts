/**
 * The command tree. Each leaf reads the services it needs from its context; the
 * application (or the standalone binary) provides them. Options are per leaf, so
 * `--json` goes after the command's name: `eventfold outbox stats --json`.
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import type * as Descriptor from "@effect/cli/CommandDescriptor"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import * as CheckpointStore from "@eventfold/core/CheckpointStore"
import * as DeadLetterQueue from "@eventfold/core/DeadLetterQueue"
import * as Outbox from "@eventfold/core/Outbox"
import * as Projection from "@eventfold/core/Projection"
import { parseDuration } from "@eventfold/core/Settings"
import * as PgMigrations from "@eventfold/pg/PgMigrations"
import * as PgMonitor from "@eventfold/pg/PgMonitor"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { CliError, ExitCode } from "./errors.js"
import * as Out from "./output.js"
import { progressReporter } from "./progress.js"

const json = Options.boolean("json").pipe(Options.withDescription("Print one JSON document instead of a table"))

/** A value the command line cannot take: @effect/cli prints it with the command's usage. */
const invalid = (message: string) => HelpDoc.p(message)
const invalidOption = (message: string) => ValidationError.invalidValue(invalid(message))

/**
 * An integer option of at least `min`, `fallback` when absent. Checked here: a negative
 * LIMIT or position would otherwise reach the database and fail there, as an operation
 * failure (exit 1) instead of a usage error (exit 2).
 */
const integerAtLeast = (name: string, min: number, fallback: number, description: string) =>
  Options.integer(name).pipe(
    Options.withDefault(fallback),
    Options.withDescription(description),
    Options.mapEffect((value) =>
      value >= min
        ? Effect.succeed(value)
        : Effect.fail(invalidOption(`--${name} must be at least ${min}, not ${value}`))
    )
  )

const limit = (fallback: number) => integerAtLeast("limit", 1, fallback, `At most this many rows (default ${fallback})`)

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

const uuidArg = (name: string, description: string) =>
  Args.text({ name }).pipe(
    Args.withDescription(description),
    Args.mapEffect((value) =>
      uuid.test(value)
        ? Effect.succeed(value.toLowerCase())
        : Effect.fail(invalid(`${name} must be a UUID, not ${JSON.stringify(value)}`))
    )
  )

const deadLetterId = Args.text({ name: "id" }).pipe(
  Args.withDescription("The dead letter's id (see `dead-letters list`)"),
  Args.mapEffect((value) =>
    /^\d{1,18}$/.test(value)
      ? Effect.succeed(BigInt(value))
      : Effect.fail(invalid(`id must be a number, not ${JSON.stringify(value)}`))
  )
)

// --- migrate ------------------------------------------------------------------

const migrationsTable = (m: PgMonitor.Migrations) =>
  Out.table(
    [
      ...m.applied.map((a) => ({ id: a.id, name: a.name, state: "applied", at: Out.time(a.appliedAt) })),
      ...m.pending.map((p) => ({ id: p.id, name: p.name, state: "pending", at: "-" }))
    ],
    [
      { header: "ID", value: (r) => String(r.id), align: "right" },
      { header: "NAME", value: (r) => r.name },
      { header: "STATE", value: (r) => r.state },
      { header: "APPLIED", value: (r) => r.at }
    ]
  )

const migrationsSummary = (m: PgMonitor.Migrations) =>
  `${m.applied.length} applied, ${m.pending.length} pending${
    m.unknown.length > 0
      ? `, ${m.unknown.length} unknown to this version (${m.unknown.map((u) => `${u.id}_${u.name}`).join(", ")})`
      : ""
  }`

/** Pending migrations, or applied ones this version does not know, fail a status check. */
const requireUpToDate = (m: PgMonitor.Migrations) =>
  m.pending.length > 0
    ? Effect.fail(
        new CliError({
          exitCode: ExitCode.pending,
          message: `${m.pending.length} migration${m.pending.length === 1 ? " is" : "s are"} pending: run eventfold migrate`
        })
      )
    : m.unknown.length > 0
      ? Effect.fail(
          new CliError({
            exitCode: ExitCode.pending,
            message: `the database has migrations this version of Eventfold does not know (${m.unknown
              .map((u) => u.id)
              .join(", ")}): upgrade Eventfold`
          })
        )
      : Effect.void

const migrate = Command.make(
  "migrate",
  {
    status: Options.boolean("status").pipe(
      Options.withDescription("List applied and pending migrations instead of applying them; exit 5 if any is pending")
    ),
    json
  },
  ({ json, status }) =>
    Effect.gen(function* () {
      const monitor = yield* PgMonitor.PgMonitor
      if (status) {
        const migrations = yield* monitor.migrations
        yield* Out.print(migrations, json, (m) => `${migrationsTable(m)}\n\n${migrationsSummary(m)}`)
        return yield* requireUpToDate(migrations)
      }
      const applied = yield* PgMigrations.run
      const after = yield* monitor.migrations
      yield* Out.print({ applied: applied.map(([id, name]) => ({ id, name })), migrations: after }, json, () =>
        applied.length === 0
          ? `Nothing to apply: ${migrationsSummary(after)}.`
          : `Applied ${applied.length} migration${applied.length === 1 ? "" : "s"}: ${applied
              .map(([id, name]) => `${id}_${name}`)
              .join(", ")}.\n${migrationsSummary(after)}.`
      )
    })
).pipe(Command.withDescription("Apply the pending migrations (one transaction, under a lock); --status lists them"))

// --- status -------------------------------------------------------------------

const outboxLine = (stats: Outbox.Stats) =>
  `${Out.count(stats.pending)} pending (${Out.count(stats.inFlight)} in flight, ${Out.count(stats.held)} held), ${Out.count(
    stats.failed
  )} failed, ${Out.count(stats.parked)} parked, ${Out.count(stats.published)} published${Option.match(
    stats.oldestPendingAge,
    { onNone: () => "", onSome: (d) => `; oldest pending ${Out.age(Duration.toMillis(d))}` }
  )}`

const projectionsTable = (rows: ReadonlyArray<PgMonitor.ProjectionLag>) =>
  Out.table(
    rows,
    [
      { header: "PROJECTION", value: (p) => p.name },
      { header: "POSITION", value: (p) => Out.count(p.position), align: "right" },
      {
        header: "BEHIND",
        value: (p) => `${p.eventsBehindExact ? "" : "≥"}${Out.count(p.eventsBehind)}`,
        align: "right"
      },
      { header: "TIME BEHIND", value: (p) => Out.age(p.timeBehindMillis), align: "right" },
      { header: "PROCESSED", value: (p) => Out.count(p.eventsProcessed), align: "right" },
      { header: "LAST EVENT", value: (p) => Out.text(p.eventType) },
      { header: "UPDATED", value: (p) => Out.time(p.updatedAt) }
    ],
    "(no checkpoints)"
  )

const deadLetterCounts = (rows: ReadonlyArray<PgMonitor.DeadLetterCount>) =>
  Out.table(
    rows,
    [
      { header: "PROJECTION", value: (d) => d.projection },
      { header: "STATUS", value: (d) => d.status },
      { header: "COUNT", value: (d) => Out.count(d.count), align: "right" },
      { header: "OLDEST", value: (d) => Out.time(d.oldestFailedAt) }
    ],
    "(none)"
  )

const writersTable = (writers: ReadonlyArray<PgMonitor.Writer>, queries: boolean) =>
  Out.table(
    writers,
    [
      { header: "PID", value: (w) => String(w.pid), align: "right" },
      { header: "APPLICATION", value: (w) => Out.text(w.applicationName) },
      { header: "STATE", value: (w) => Out.text(w.state) },
      { header: "OPEN FOR", value: (w) => Out.age(w.transactionAgeMillis), align: "right" },
      ...(queries
        ? [{ header: "LAST STATEMENT", value: (w: PgMonitor.Writer) => Out.clip(Out.text(w.query), 60) }]
        : [])
    ],
    "(none: subscribers see everything committed)"
  )

const sizesTable = (sizes: ReadonlyArray<PgMonitor.TableSize>) =>
  Out.table(sizes, [
    { header: "TABLE", value: (s) => s.table },
    {
      header: "ROWS (EST.)",
      value: (s) => (s.estimatedRows === null ? "-" : Out.count(s.estimatedRows)),
      align: "right"
    },
    { header: "TOTAL", value: (s) => Out.bytes(s.totalBytes), align: "right" },
    { header: "DATA", value: (s) => Out.bytes(s.tableBytes), align: "right" },
    { header: "INDEXES", value: (s) => Out.bytes(s.indexBytes), align: "right" }
  ])

const connectionsTable = (rows: ReadonlyArray<PgMonitor.Connections>) =>
  Out.table(rows, [
    { header: "APPLICATION", value: (c) => c.applicationName },
    { header: "STATE", value: (c) => c.state },
    { header: "COUNT", value: (c) => Out.count(c.count), align: "right" },
    {
      header: "OLDEST TRANSACTION",
      value: (c) => (c.oldestTransactionAgeMillis > 0 ? Out.age(c.oldestTransactionAgeMillis) : "-"),
      align: "right"
    }
  ])

/** An estimate as people read one: "about 1,200", "none", or not known yet. */
const approximately = (estimate: bigint | null) =>
  estimate === null ? "not analyzed yet" : estimate === 0n ? "none" : `about ${Out.count(estimate)}`

const renderOverview = (o: PgMonitor.Overview, queries: boolean) => {
  const head = Out.fields([
    ["Database", `${o.database.name} (schema ${o.database.schema}), PostgreSQL ${o.database.serverVersion}`],
    ["Migrations", migrationsSummary(o.migrations)],
    ...Option.match(o.store, {
      onNone: (): ReadonlyArray<readonly [string, string]> => [["Store", "not migrated: run eventfold migrate"]],
      onSome: (s): ReadonlyArray<readonly [string, string]> => [
        ["Events", `${approximately(s.estimatedEvents)}, last position ${Out.count(s.horizon.lastPosition)}`],
        ["Streams", approximately(s.streams)],
        ["Outbox", outboxLine(s.outbox)]
      ]
    })
  ])
  const store = Option.match(o.store, {
    onNone: () => [],
    onSome: (s) => [
      Out.section("Open writers (subscribers wait for them)", writersTable(s.horizon.writers, queries)),
      Out.section("Projections", projectionsTable(s.projections)),
      Out.section("Dead letters", deadLetterCounts(s.deadLetters)),
      Out.section("Tables", sizesTable(s.sizes))
    ]
  })
  // The pool is the command's own (in the JSON): what matters here are the database's sessions.
  return [head, ...store, Out.section("Connections to this database", connectionsTable(o.connections))].join("\n\n")
}

/** The writers without their statements, which may hold the application's data as literals. */
const withoutQueries = (overview: PgMonitor.Overview): PgMonitor.Overview => ({
  ...overview,
  store: Option.map(overview.store, (store) => ({
    ...store,
    horizon: { ...store.horizon, writers: store.horizon.writers.map((w) => ({ ...w, query: null })) }
  }))
})

const status = Command.make(
  "status",
  {
    queries: Options.boolean("queries").pipe(
      Options.withDescription(
        "Show the open writers' last statements (they may hold the application's data as literals)"
      )
    ),
    json
  },
  ({ json, queries }) =>
    Effect.gen(function* () {
      const overview = yield* Effect.flatMap(PgMonitor.PgMonitor, (monitor) => monitor.overview)
      yield* Out.print(queries ? overview : withoutQueries(overview), json, (o) => renderOverview(o, queries))
      yield* requireUpToDate(overview.migrations)
    })
).pipe(
  Command.withDescription(
    "The store at a glance: migrations, events, the outbox, projection lag, dead letters, open writers, sizes, connections; exit 5 if migrations are pending"
  )
)

// --- stats (the spec's monitoring queries) -------------------------------------

const stats = Command.make(
  "stats",
  {
    days: integerAtLeast("days", 1, 7, "Days of events per day (default 7)"),
    top: integerAtLeast("top", 1, 10, "How many of the largest streams (default 10)"),
    json
  },
  ({ days, json, top }) =>
    Effect.gen(function* () {
      const monitor = yield* PgMonitor.PgMonitor
      const result = yield* Effect.all({
        totalEvents: monitor.totalEvents,
        byAggregateType: monitor.eventsByAggregateType,
        byEventType: monitor.eventsByEventType,
        perDay: monitor.eventsPerDay({ days }),
        largestStreams: monitor.largestStreams({ limit: top }),
        sizes: monitor.tableSizes,
        indexUsage: monitor.indexUsage
      })
      yield* Out.print(result, json, (r) =>
        [
          Out.fields([["Events", Out.count(r.totalEvents)]]),
          Out.section(
            "By aggregate type",
            Out.table(r.byAggregateType, [
              { header: "AGGREGATE TYPE", value: (x) => x.aggregateType },
              { header: "EVENTS", value: (x) => Out.count(x.events), align: "right" }
            ])
          ),
          Out.section(
            "By event type",
            Out.table(r.byEventType, [
              { header: "EVENT TYPE", value: (x) => x.eventType },
              { header: "EVENTS", value: (x) => Out.count(x.events), align: "right" }
            ])
          ),
          Out.section(
            `Per day (last ${days} days)`,
            Out.table(r.perDay, [
              { header: "DATE", value: (x) => x.date },
              { header: "EVENTS", value: (x) => Out.count(x.events), align: "right" }
            ])
          ),
          Out.section(
            "Largest streams",
            Out.table(r.largestStreams, [
              { header: "AGGREGATE ID", value: (x) => x.aggregateId },
              { header: "TYPE", value: (x) => x.aggregateType },
              { header: "EVENTS", value: (x) => Out.count(x.events), align: "right" }
            ])
          ),
          Out.section("Tables", sizesTable(r.sizes)),
          Out.section(
            "Index usage (events)",
            Out.table(r.indexUsage, [
              { header: "INDEX", value: (x) => x.index },
              { header: "SCANS", value: (x) => Out.count(x.scans), align: "right" },
              { header: "TUPLES READ", value: (x) => Out.count(x.tuplesRead), align: "right" },
              { header: "TUPLES FETCHED", value: (x) => Out.count(x.tuplesFetched), align: "right" },
              { header: "SIZE", value: (x) => Out.bytes(x.bytes), align: "right" }
            ])
          )
        ].join("\n\n")
      )
    })
).pipe(
  Command.withDescription(
    "The tutorial's monitoring queries: events by aggregate and event type, per day, the largest streams, sizes, index usage (these scan the log)"
  )
)

// --- streams -------------------------------------------------------------------

const streamsList = Command.make(
  "list",
  {
    type: Options.text("type").pipe(Options.optional, Options.withDescription("Only streams of this aggregate type")),
    tenant: Options.text("tenant").pipe(
      Options.optional,
      Options.withDescription("Only streams of this tenant (a UUID)"),
      Options.mapEffect((tenant) =>
        Option.isSome(tenant) && !uuid.test(tenant.value)
          ? Effect.fail(invalidOption(`--tenant must be a UUID, not ${JSON.stringify(tenant.value)}`))
          : Effect.succeed(tenant)
      )
    ),
    limit: limit(50),
    json
  },
  ({ json, limit, tenant, type }) =>
    Effect.gen(function* () {
      const monitor = yield* PgMonitor.PgMonitor
      const heads = yield* monitor.streams({
        aggregateType: Option.getOrUndefined(type),
        tenantId: Option.getOrUndefined(tenant),
        limit
      })
      yield* Out.print(heads, json, (rows) =>
        Out.table(
          rows,
          [
            { header: "AGGREGATE ID", value: (s) => s.aggregateId },
            { header: "TYPE", value: (s) => s.aggregateType },
            { header: "TENANT", value: (s) => Out.text(s.tenantId) },
            { header: "VERSION", value: (s) => String(s.version), align: "right" },
            { header: "UPDATED", value: (s) => Out.time(s.updatedAt) }
          ],
          "(no streams)"
        )
      )
    })
).pipe(Command.withDescription("Streams, most recently written first"))

const streamsShow = Command.make(
  "show",
  {
    aggregateId: uuidArg("aggregate-id", "The stream's aggregate id"),
    type: Options.text("type").pipe(
      Options.optional,
      Options.withDescription("The aggregate type, if the id has streams of several")
    ),
    from: integerAtLeast("from", 1, 1, "First version to show (default 1)"),
    limit: limit(100),
    json
  },
  ({ aggregateId, from, json, limit, type }) =>
    Effect.gen(function* () {
      const monitor = yield* PgMonitor.PgMonitor
      const aggregateType = Option.getOrUndefined(type)
      const events = yield* monitor.streamEvents(aggregateId, { aggregateType, fromVersion: from, limit })
      // None from a later version: the stream may exist (then it has no events there) or not (not found).
      const exists =
        events.length > 0 ||
        (from > 1 && (yield* monitor.streamEvents(aggregateId, { aggregateType, limit: 1 })).length > 0)
      if (!exists) {
        return yield* new CliError({
          exitCode: ExitCode.notFound,
          message: `no events in stream ${aggregateId}${Option.match(type, { onNone: () => "", onSome: (t) => ` (${t})` })}`
        })
      }
      yield* Out.print(events, json, (rows) =>
        rows.length === 0
          ? `(no events from version ${from})`
          : rows
              .map((e) =>
                [
                  `${e.aggregateType} ${e.aggregateId} v${e.version}  ${e.eventType}  position ${e.globalPosition}  ${Out.time(e.timestamp)}`,
                  ...(e.tenantId === null ? [] : [`  tenant ${e.tenantId}`]),
                  ...(e.actorId === null ? [] : [`  actor ${e.actorId}`]),
                  ...(e.metadata.correlationId === null ? [] : [`  correlation ${e.metadata.correlationId}`]),
                  ...(e.metadata.causationId === null ? [] : [`  causation ${e.metadata.causationId}`]),
                  ...JSON.stringify(e.payload, null, 2)
                    .split("\n")
                    .map((line) => `  ${line}`)
                ].join("\n")
              )
              .join("\n\n")
      )
    })
).pipe(Command.withDescription("A stream's events as stored, with their payloads as JSON"))

// --- outbox ----------------------------------------------------------------------

const outboxStats = Command.make("stats", { json }, ({ json }) =>
  Effect.gen(function* () {
    const stats = yield* Effect.flatMap(Outbox.Outbox, (outbox) => outbox.stats)
    yield* Out.print(stats, json, (s) =>
      Out.fields([
        ["pending", Out.count(s.pending)],
        ["in flight", Out.count(s.inFlight)],
        ["held", `${Out.count(s.held)} (behind a failed entry of their aggregate)`],
        ["failed", Out.count(s.failed)],
        ["parked", Out.count(s.parked)],
        ["published", Out.count(s.published)],
        [
          "oldest pending",
          Option.match(s.oldestPendingAge, { onNone: () => "-", onSome: (d) => Out.age(Duration.toMillis(d)) })
        ]
      ])
    )
  })
).pipe(Command.withDescription("Entries by status, and the age of the oldest pending one"))

const outboxRows = (rows: ReadonlyArray<Outbox.Row>) =>
  Out.table(
    rows,
    [
      { header: "EVENT ID", value: (r) => r.message.eventId },
      { header: "EVENT TYPE", value: (r) => r.message.eventType },
      {
        header: "AGGREGATE",
        value: (r) => `${r.message.aggregateType} ${r.message.aggregateId} v${r.message.version}`
      },
      { header: "STATUS", value: (r) => r.status },
      { header: "TRIES", value: (r) => String(r.retryCount), align: "right" },
      { header: "LAST ERROR", value: (r) => Out.clip(r.parked?.reason ?? Out.text(r.lastError), 80) }
    ],
    "(none)"
  )

const outboxFailed = Command.make(
  "failed",
  {
    parked: Options.boolean("parked").pipe(Options.withDescription("List parked entries instead of failed ones")),
    limit: limit(100),
    json
  },
  ({ json, limit, parked }) =>
    Effect.gen(function* () {
      const rows = yield* Effect.flatMap(Outbox.Outbox, (outbox) =>
        outbox.list({ status: parked ? "parked" : "failed", limit })
      )
      yield* Out.print(
        rows.map(({ message: { payloadJson, ...message }, ...row }) => ({
          ...row,
          message: { ...message, payload: JSON.parse(payloadJson) }
        })),
        json,
        () => outboxRows(rows)
      )
    })
).pipe(Command.withDescription("Entries that ran out of retries (they hold back their aggregate's later entries)"))

const eventIds = Options.text("event-id").pipe(
  Options.repeated,
  Options.withDescription("An entry's event id (repeatable)"),
  Options.mapEffect((ids) => {
    const bad = ids.find((id) => !uuid.test(id))
    return bad === undefined
      ? Effect.succeed(ids)
      : Effect.fail(invalidOption(`--event-id must be a UUID, not ${JSON.stringify(bad)}`))
  })
)

/** Entries named by event id, none of which is in a state the command acts on: not found. */
const noneNamed = (eventIds: ReadonlyArray<string>, state: string) =>
  new CliError({
    exitCode: ExitCode.notFound,
    message: `no ${state} outbox entry has event id ${eventIds.join(", ")}`
  })

const outboxRetry = Command.make(
  "retry",
  {
    eventIds,
    all: Options.boolean("all").pipe(Options.withDescription("Every failed entry (parked ones only when named)")),
    json
  },
  ({ all, eventIds, json }) =>
    Effect.gen(function* () {
      if (all === eventIds.length > 0) {
        return yield* new CliError({
          exitCode: ExitCode.usage,
          message: "name the entries with --event-id, or pass --all"
        })
      }
      const retried = yield* Effect.flatMap(Outbox.Outbox, (outbox) => outbox.retryFailed(all ? {} : { eventIds }))
      if (!all && retried === 0) return yield* noneNamed(eventIds, "failed or parked")
      yield* Out.print(
        { retried },
        json,
        () => `${Out.count(retried)} entr${retried === 1 ? "y" : "ies"} back to pending.`
      )
    })
).pipe(Command.withDescription("Put failed entries back to pending with a fresh retry budget"))

const outboxPark = Command.make(
  "park",
  {
    eventIds,
    reason: Options.text("reason").pipe(Options.withDescription("Why (recorded with the entry)")),
    by: Options.text("by").pipe(
      Options.withDefault("eventfold-cli"),
      Options.withDescription("Who (default eventfold-cli)")
    ),
    json
  },
  ({ by, eventIds, json, reason }) =>
    Effect.gen(function* () {
      if (eventIds.length === 0) {
        return yield* new CliError({ exitCode: ExitCode.usage, message: "name the entries to park with --event-id" })
      }
      const parked = yield* Effect.flatMap(Outbox.Outbox, (outbox) => outbox.park({ eventIds, by, reason }))
      if (parked === 0) return yield* noneNamed(eventIds, "failed")
      yield* Out.print({ parked }, json, () => `${Out.count(parked)} entr${parked === 1 ? "y" : "ies"} parked.`)
    })
).pipe(Command.withDescription("Set failed entries aside for good, so their aggregates' later entries flow on"))

const outboxPurge = Command.make(
  "purge",
  {
    olderThan: Options.text("older-than").pipe(
      Options.withDescription("Published longer ago than this (7d, 12h, 30m)"),
      Options.mapEffect((text) =>
        Option.match(
          // A bare number has no obvious unit here: one is required.
          /^\s*[\d.]+\s*$/.test(text) ? Option.none() : parseDuration(text, "minutes"),
          {
            onNone: () =>
              Effect.fail(
                invalidOption(`--older-than: ${JSON.stringify(text)} is not a duration with a unit (7d, 12h, 30m)`)
              ),
            onSome: Effect.succeed
          }
        )
      )
    ),
    json
  },
  ({ json, olderThan }) =>
    Effect.gen(function* () {
      const deleted = yield* Effect.flatMap(Outbox.Outbox, (outbox) => outbox.deletePublished(olderThan))
      yield* Out.print(
        { deleted },
        json,
        () => `Deleted ${Out.count(deleted)} published entr${deleted === 1 ? "y" : "ies"}.`
      )
    })
).pipe(Command.withDescription("Delete published entries older than a duration"))

// --- dead letters ---------------------------------------------------------------

const statusOption = Options.choice("status", ["failed", "retrying", "resolved", "all"]).pipe(
  Options.withDefault("failed" as const),
  Options.withDescription("Which dead letters (default failed)")
)

const deadLettersList = Command.make(
  "list",
  {
    projection: Options.text("projection").pipe(Options.optional, Options.withDescription("Only this projection's")),
    status: statusOption,
    limit: limit(100),
    json
  },
  ({ json, limit, projection, status }) =>
    Effect.gen(function* () {
      const letters = yield* Effect.flatMap(DeadLetterQueue.DeadLetterQueue, (queue) =>
        queue.list({
          ...(Option.isSome(projection) ? { projection: projection.value } : {}),
          ...(status === "all" ? {} : { status }),
          limit
        })
      )
      yield* Out.print(letters, json, (rows) =>
        Out.table(
          rows,
          [
            { header: "ID", value: (d) => String(d.id), align: "right" },
            { header: "PROJECTION", value: (d) => d.projection },
            { header: "EVENT TYPE", value: (d) => d.eventType },
            {
              header: "POSITION",
              value: (d) => (d.globalPosition === null ? "-" : Out.count(d.globalPosition)),
              align: "right"
            },
            { header: "STATUS", value: (d) => d.status },
            { header: "TRIES", value: (d) => String(d.retryCount), align: "right" },
            { header: "LAST FAILED", value: (d) => Out.time(d.lastFailedAt) },
            { header: "ERROR", value: (d) => Out.clip(d.errorMessage, 80) }
          ],
          "(no dead letters)"
        )
      )
    })
).pipe(Command.withDescription("Events projections could not handle, oldest first"))

const findDeadLetter = (id: bigint) =>
  Effect.flatMap(DeadLetterQueue.DeadLetterQueue, (queue) => queue.get(id)).pipe(
    Effect.flatMap(
      Option.match({
        onNone: () => Effect.fail(new DeadLetterQueue.DeadLetterNotFoundError({ id })),
        onSome: Effect.succeed
      })
    )
  )

const renderDeadLetter = (d: DeadLetterQueue.DeadLetter) =>
  [
    Out.fields([
      ["id", String(d.id)],
      ["projection", d.projection],
      ["event", `${d.eventType} ${d.eventId}`],
      ["position", d.globalPosition === null ? "-" : String(d.globalPosition)],
      ["status", d.status],
      ["tries", String(d.retryCount)],
      ["first failed", Out.time(d.firstFailedAt)],
      ["last failed", Out.time(d.lastFailedAt)],
      ...(d.resolvedAt === null
        ? []
        : ([["resolved", `${Out.time(d.resolvedAt)} by ${Out.text(d.resolvedBy)}`]] as const)),
      ["error", d.errorMessage]
    ]),
    ...(d.errorStacktrace === null ? [] : [Out.section("Stack", d.errorStacktrace)]),
    Out.section("Event", JSON.stringify(d.eventData, null, 2))
  ].join("\n\n")

const deadLettersShow = Command.make("show", { id: deadLetterId, json }, ({ id, json }) =>
  Effect.flatMap(findDeadLetter(id), (letter) => Out.print(letter, json, renderDeadLetter))
).pipe(Command.withDescription("One dead letter: its event, error and history"))

const deadLettersResolve = Command.make(
  "resolve",
  {
    id: deadLetterId,
    by: Options.text("by").pipe(
      Options.withDefault("eventfold-cli"),
      Options.withDescription("Who (default eventfold-cli)")
    ),
    json
  },
  ({ by, id, json }) =>
    Effect.gen(function* () {
      const letter = yield* Effect.flatMap(DeadLetterQueue.DeadLetterQueue, (queue) => queue.resolve(id, { by }))
      yield* Out.print(letter, json, (d) => `Dead letter ${d.id} resolved by ${Out.text(d.resolvedBy)}.`)
    })
).pipe(Command.withDescription("Mark a dead letter handled by hand (its event is not run again)"))

// --- projections --------------------------------------------------------------------

const projectionsList = Command.make("list", { json }, ({ json }) =>
  Effect.gen(function* () {
    const rows = yield* Effect.flatMap(PgMonitor.PgMonitor, (monitor) => monitor.projections)
    yield* Out.print(rows, json, projectionsTable)
  })
).pipe(Command.withDescription("Projections' checkpoints and how far behind the log each is"))

const projectionName = Args.text({ name: "name" }).pipe(Args.withDescription("The projection's name"))

const requireCheckpoint = (name: string) =>
  Effect.flatMap(CheckpointStore.CheckpointStore, (checkpoints) => checkpoints.get(name)).pipe(
    Effect.flatMap(
      Option.match({
        onNone: () =>
          Effect.fail(new CliError({ exitCode: ExitCode.notFound, message: `projection ${name} has no checkpoint` })),
        onSome: Effect.succeed
      })
    )
  )

/** `projections reset` with only the database: the checkpoint moves; no read model is cleared. */
const resetCheckpoint = Command.make(
  "reset",
  {
    name: projectionName,
    to: integerAtLeast("to", 0, 0, "Position to restart after (default 0: the start)"),
    json
  },
  ({ json, name, to }) =>
    Effect.gen(function* () {
      const checkpoint = yield* requireCheckpoint(name)
      // Forward would skip events without handling them: that is not a reset.
      if (BigInt(to) > checkpoint.position) {
        return yield* new CliError({
          exitCode: ExitCode.usage,
          message: `--to ${to} is past the checkpoint of ${name} (${checkpoint.position}): a reset only moves it back`
        })
      }
      yield* Effect.flatMap(CheckpointStore.CheckpointStore, (checkpoints) =>
        checkpoints.reset(name, { to: BigInt(to) })
      )
      yield* Out.print(
        { projection: name, position: BigInt(to), readModelCleared: false },
        json,
        () =>
          `Checkpoint of ${name} reset to ${to}. Its read model was not cleared: the projection replays onto it (run reset from the application's own command to clear it too).`
      )
    })
).pipe(
  Command.withDescription("Move a projection's checkpoint back, so that it replays the log (the read model is kept)")
)

/** A projection, or an effect that makes one (with the application's services). */
export type ProjectionSource<R> = Projection.Projection<R> | Effect.Effect<Projection.Projection<R>, unknown, R>

/** The commands that run a projection's own code, for the application's tree. */
const withProjections = <R>(sources: ReadonlyArray<ProjectionSource<R>>) => {
  const known = (name: string) =>
    Effect.gen(function* () {
      const projections = yield* Effect.forEach(sources, (source) =>
        Effect.isEffect(source) ? source : Effect.succeed(source)
      )
      const found = projections.find((p) => p.name === name)
      if (found !== undefined) return found
      return yield* new CliError({
        exitCode: ExitCode.notFound,
        message: `no projection ${name} in this application (known: ${projections.map((p) => p.name).join(", ") || "none"})`
      })
    })

  const reset = Command.make("reset", { name: projectionName, json }, ({ json, name }) =>
    Effect.gen(function* () {
      const projection = yield* known(name)
      yield* Projection.reset(projection)
      yield* Out.print(
        { projection: name, position: 0n, readModelCleared: true },
        json,
        () => `${name}: read model cleared and checkpoint reset; running projections replay the log.`
      )
    })
  ).pipe(Command.withDescription("Clear a projection's read model and reset its checkpoint, in one transaction"))

  const rebuild = Command.make("rebuild", { name: projectionName, json }, ({ json, name }) =>
    Effect.gen(function* () {
      const projection = yield* known(name)
      const reporter = yield* progressReporter(json)
      const done = yield* Projection.rebuild(projection, {
        onProgress: reporter.report,
        reportInterval: "250 millis"
      }).pipe(Effect.ensuring(reporter.end))
      yield* Out.print(
        done,
        json,
        (p) =>
          `${p.projection} rebuilt: ${Out.count(p.eventsProcessed)} events up to position ${Out.count(p.position)} in ${Out.age(p.elapsedMillis)}.`
      )
    })
  ).pipe(Command.withDescription("Clear a projection's read model and replay the whole log into it, with progress"))

  const retry = Command.make("retry", { id: deadLetterId, json }, ({ id, json }) =>
    Effect.gen(function* () {
      const letter = yield* findDeadLetter(id)
      const projection = yield* known(letter.projection)
      const after = yield* Projection.retryDeadLetter(projection, id)
      if (after.status === "resolved") {
        return yield* Out.print(after, json, (d) => `Dead letter ${d.id} handled by ${d.projection}: resolved.`)
      }
      // Failed again: the dead letter as it is now for scripts, and the failure as every failure is, on stderr.
      if (json) yield* Out.print(after, json, () => "")
      return yield* new CliError({
        exitCode: ExitCode.failure,
        message: `dead letter ${id} failed again: ${after.errorMessage}`
      })
    })
  ).pipe(Command.withDescription("Run a dead letter's event through its projection's handler again"))

  return { reset, rebuild, retry }
}

// biome-ignore lint/suspicious/noExplicitAny: @effect/cli's own bound for a subcommand
type AnyCommand = Command.Command<any, any, any, any>

/** A command that only groups others: named alone, it prints its help, as `--help` does. */
const group = <const Subcommands extends readonly [AnyCommand, ...Array<AnyCommand>]>(
  name: string,
  description: string,
  subcommands: Subcommands
) => {
  // The group as it is once its subcommands are added, whose help lists them.
  const complete: { descriptor?: Descriptor.Command<unknown> } = {}
  const grouped = Command.make(name, {}, () =>
    Effect.suspend(() =>
      complete.descriptor === undefined ? Effect.void : Effect.fail(ValidationError.helpRequested(complete.descriptor))
    )
  ).pipe(Command.withDescription(description), Command.withSubcommands(subcommands))
  complete.descriptor = grouped.descriptor
  return grouped
}

/**
 * The `eventfold` tree: the standalone commands, and those of `projections` when given.
 * `leaf` is applied to each command that does something (not to the groups), so that
 * the services a leaf gets are built only when it runs: help needs no database.
 */
export const tree = <R>(
  name: string,
  projections: ReadonlyArray<ProjectionSource<R>> | undefined,
  leaf: <C extends AnyCommand>(command: C) => C
) => {
  const app = projections === undefined ? undefined : withProjections(projections)
  return group(name, "Operate an Eventfold event store on PostgreSQL", [
    leaf(migrate),
    leaf(status),
    leaf(stats),
    group("streams", "List streams, or show one stream's events", [leaf(streamsList), leaf(streamsShow)]),
    group("outbox", "The transactional outbox: stats, failed entries, retry, park, purge", [
      leaf(outboxStats),
      leaf(outboxFailed),
      leaf(outboxRetry),
      leaf(outboxPark),
      leaf(outboxPurge)
    ]),
    app === undefined
      ? group(
          "projections",
          "Projections' checkpoints: list with lag, reset (rebuild runs from the application's own command)",
          [leaf(projectionsList), leaf(resetCheckpoint)]
        )
      : group("projections", "Projections: list with lag, reset, rebuild", [
          leaf(projectionsList),
          leaf(app.reset),
          leaf(app.rebuild)
        ]),
    app === undefined
      ? group("dead-letters", "Dead letters: list, show, resolve (retry runs from the application's own command)", [
          leaf(deadLettersList),
          leaf(deadLettersShow),
          leaf(deadLettersResolve)
        ])
      : group("dead-letters", "Dead letters: list, show, retry, resolve", [
          leaf(deadLettersList),
          leaf(deadLettersShow),
          leaf(app.retry),
          leaf(deadLettersResolve)
        ])
  ])
}

/**
 * The PostgreSQL `Outbox`, over the application's `SqlClient` pool and the
 * `event_outbox` table. Entries are written by the append statement when the store
 * is made with `PgEventStore.layer({ outbox: true })`, in the append's
 * transaction, which also sends `NOTIFY eventfold_outbox` at commit.
 *
 * - `claim` is one statement: it locks free rows whose aggregate's first unpublished
 *   entry is free as well, oldest first, with `FOR UPDATE SKIP LOCKED`; keeps, per
 *   aggregate, the locked rows only if they are all of its unpublished entries up to
 *   the last of them; and leases those (`claimed_by`, `lease_until`). The row locks
 *   end with the statement: nothing stays locked while the relay waits on the
 *   broker. Checking "every earlier unpublished entry is mine" against the
 *   statement's snapshot can only refuse more than needed (an entry seen unpublished
 *   may have been published since; none seen published can be unpublished again;
 *   new entries come after all others), and the locked set is exact, so two relays
 *   can never both pass for one aggregate. Each row costs a few index probes
 *   (`idx_outbox_aggregate_unpublished`, over pending and failed entries: published and
 *   parked ones take no part in order); entries held behind a failed one are still
 *   scanned past, so a large `held` count slows claims down.
 * - `settle` is one statement for the whole batch.
 * - `wakeups` LISTENs on `eventfold_outbox` on a connection of its own, and fails as
 *   soon as that connection is lost; a heartbeat of its own also catches a connection
 *   that hangs without failing (a network that drops packets), so that the relay falls
 *   back to polling only while notifications are really lost.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as EventMetadata from "@eventfold/core/EventMetadata"
import * as Outbox from "@eventfold/core/Outbox"
import { Spans } from "@eventfold/core/Telemetry"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type { ParseError } from "effect/ParseResult"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import { Count, Int8 } from "./internal/eventRows.js"
import * as Driver from "./internal/pgDriver.js"

/**
 * The NOTIFY channel the append statement signals on when it writes outbox entries. The
 * payload is the schema of the outbox (`current_schema()`), so that relays of stores in
 * other schemas of the database sleep on.
 *
 * @since 0.1.0
 * @category models
 */
export const channel = "eventfold_outbox"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * How often the LISTEN connection is checked (by notifying itself). Silence for
   * three periods ends `wakeups` with an `OutboxError`, so that it is listened to
   * anew. Default 30 seconds.
   */
  readonly heartbeat?: Duration.DurationInput | undefined
}

const EntryRow = Schema.Struct({
  id: Schema.String,
  retry_count: Schema.Number,
  event_id: Schema.String,
  event_type: Schema.String,
  aggregate_id: Schema.String,
  aggregate_type: Schema.String,
  version: Schema.Number,
  global_position: Int8,
  tenant_id: Schema.NullOr(Schema.String),
  actor_id: Schema.NullOr(Schema.String),
  occurred_at: Schema.DateFromSelf,
  payload_json: Schema.String,
  /** jsonb as text: valid JSON, whatever wrote it. */
  metadata: Schema.NullOr(Schema.String)
})

const FullRow = Schema.Struct({
  ...EntryRow.fields,
  status: Schema.Literal("pending", "published", "failed", "parked"),
  last_error: Schema.NullOr(Schema.String),
  created_at: Schema.DateFromSelf,
  published_at: Schema.NullOr(Schema.DateFromSelf),
  claimed_by: Schema.NullOr(Schema.String),
  lease_until: Schema.NullOr(Schema.DateFromSelf),
  next_attempt_at: Schema.NullOr(Schema.DateFromSelf),
  parked_at: Schema.NullOr(Schema.DateFromSelf),
  parked_by: Schema.NullOr(Schema.String),
  parked_reason: Schema.NullOr(Schema.String)
})

const StatsRow = Schema.Struct({
  pending: Count,
  published: Count,
  failed: Count,
  held: Count,
  parked: Count,
  in_flight: Count,
  oldest_pending_at: Schema.NullOr(Schema.DateFromSelf),
  oldest_pending_age_ms: Schema.NullOr(Count)
})

const decodeEntries = Schema.decodeUnknown(Schema.Array(EntryRow))
const decodeRows = Schema.decodeUnknown(Schema.Array(FullRow))
const decodeStats = Schema.decodeUnknown(Schema.Array(StatsRow))

const toEntry = (row: typeof EntryRow.Type): Outbox.Entry => ({
  id: row.id,
  retryCount: row.retry_count,
  message: {
    eventId: row.event_id,
    eventType: row.event_type,
    aggregateId: row.aggregate_id,
    aggregateType: row.aggregate_type,
    version: row.version,
    globalPosition: row.global_position,
    tenantId: row.tenant_id,
    actorId: row.actor_id,
    timestamp: row.occurred_at,
    metadata: row.metadata === null ? EventMetadata.empty : EventMetadata.fromDocument(JSON.parse(row.metadata)),
    payloadJson: row.payload_json
  }
})

// Entries written before the outbox_relay migration whose event no longer exists have no
// position, version or occurrence time: they sort first and do not take part in ordering.
const entryColumns = (t: string) =>
  `${t}.id, ${t}.retry_count, ${t}.event_id, ${t}.event_type, ${t}.aggregate_id, ${t}.aggregate_type,
   coalesce(${t}.version, 0) AS version, coalesce(${t}.global_position, 0) AS global_position, ${t}.tenant_id,
   ${t}.actor_id, coalesce(${t}.occurred_at, ${t}.created_at) AS occurred_at, ${t}.event_data::text AS payload_json,
   ${t}.metadata::text AS metadata`

const byPosition = (a: Outbox.Entry, b: Outbox.Entry) =>
  a.message.globalPosition < b.message.globalPosition
    ? -1
    : a.message.globalPosition > b.message.globalPosition
      ? 1
      : a.message.version - b.message.version

const DELETE_CHUNK = 10_000

/**
 * The outbox over the `SqlClient` and `PgClient` in context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: Options = {}
): Effect.Effect<Outbox.Service, never, SqlClient.SqlClient | PgClient.PgClient> =>
  Effect.gen(function* () {
    // Column names exactly as written, whatever name transforms the application's client has.
    const sql = (yield* SqlClient.SqlClient).withoutTransforms()
    const pg = yield* PgClient.PgClient
    const heartbeat = Duration.decode(options.heartbeat ?? Duration.seconds(30))

    const fail =
      (method: string) =>
      <A, R>(effect: Effect.Effect<A, SqlError | ParseError, R>) =>
        Effect.mapError(effect, Outbox.outboxError(method))

    const claim = (options: Outbox.ClaimOptions) =>
      sql`
WITH candidates AS (
  -- Free rows, oldest first, whose aggregate's head (its first unpublished entry) is free too.
  SELECT o.id, o.aggregate_id, o.aggregate_type, o.version
    FROM event_outbox o
   WHERE o.status = 'pending'
     AND (o.lease_until IS NULL OR o.lease_until < now())
     AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
     AND (SELECT h.id = o.id OR (h.status = 'pending'
                                 AND (h.lease_until IS NULL OR h.lease_until < now())
                                 AND (h.next_attempt_at IS NULL OR h.next_attempt_at <= now()))
            FROM event_outbox h
           WHERE h.aggregate_id = o.aggregate_id AND h.aggregate_type = o.aggregate_type
             AND h.status IN ('pending', 'failed')
           ORDER BY h.version
           LIMIT 1)
   ORDER BY o.global_position
   LIMIT ${options.limit}
   FOR UPDATE OF o SKIP LOCKED
), runs AS (
  SELECT aggregate_id, aggregate_type, min(version) AS lo, max(version) AS hi, count(*) AS n, array_agg(id) AS ids
    FROM candidates
   GROUP BY aggregate_id, aggregate_type
), accepted AS (
  -- An aggregate's rows are taken only if they are all its unpublished entries up to the last
  -- of them: nothing unpublished below, nobody else's row in between.
  SELECT unnest(r.ids) AS id
    FROM runs r
   WHERE NOT EXISTS (SELECT 1 FROM event_outbox p
                      WHERE p.aggregate_id = r.aggregate_id AND p.aggregate_type = r.aggregate_type
                        AND p.status IN ('pending', 'failed') AND p.version < r.lo)
     AND (SELECT count(*) FROM event_outbox p
           WHERE p.aggregate_id = r.aggregate_id AND p.aggregate_type = r.aggregate_type
             AND p.status IN ('pending', 'failed') AND p.version BETWEEN r.lo AND r.hi) = r.n
)
UPDATE event_outbox t
   SET claimed_by = ${options.owner},
       lease_until = now() + ${Duration.toMillis(options.lease)}::double precision * interval '1 millisecond'
  FROM accepted a
 WHERE t.id = a.id
RETURNING ${sql.literal(entryColumns("t"))}`.pipe(
        Effect.flatMap(decodeEntries),
        Effect.map((rows) => rows.map(toEntry).sort(byPosition)),
        fail("claim"),
        Effect.withSpan(Spans.outboxClaim)
      )

    const settle = (settlement: Outbox.Settlement) => {
      const input = [
        ...settlement.published.map((id) => ({ id, outcome: "published", error: null, retry_ms: null })),
        ...settlement.failed.map((f) => ({
          id: f.id,
          outcome: f.retryAfter === null ? "exhausted" : "failed",
          error: f.error,
          retry_ms: f.retryAfter === null ? null : Duration.toMillis(f.retryAfter)
        })),
        ...settlement.released.map((r) => ({ id: r.id, outcome: "released", error: r.error ?? null, retry_ms: null }))
      ]
      if (input.length === 0) return Effect.void
      return sql`
WITH input AS (
  SELECT * FROM jsonb_to_recordset(${JSON.stringify(input)}::jsonb)
    AS x(id uuid, outcome text, error text, retry_ms double precision)
)
UPDATE event_outbox o
   SET status = CASE i.outcome WHEN 'published' THEN 'published' WHEN 'exhausted' THEN 'failed' ELSE o.status END,
       published_at = CASE WHEN i.outcome = 'published' THEN coalesce(o.published_at, now()) ELSE o.published_at END,
       retry_count = o.retry_count + CASE WHEN i.outcome IN ('failed', 'exhausted') THEN 1 ELSE 0 END,
       last_error = coalesce(i.error, o.last_error),
       next_attempt_at = CASE WHEN i.outcome = 'failed' THEN now() + i.retry_ms * interval '1 millisecond'
                              ELSE o.next_attempt_at END,
       claimed_by = NULL,
       lease_until = NULL
  FROM input i
 WHERE o.id = i.id
   AND (i.outcome = 'published' OR (o.claimed_by = ${settlement.owner} AND o.status = 'pending'))`.pipe(
        Effect.asVoid,
        fail("settle"),
        Effect.withSpan(Spans.outboxSettle)
      )
    }

    const release = (owner: string, ids?: ReadonlyArray<string>) => {
      if (ids !== undefined && ids.length === 0) return Effect.succeed(0)
      const query: Effect.Effect<ReadonlyArray<unknown>, SqlError> = ids === undefined
        ? sql`UPDATE event_outbox SET claimed_by = NULL, lease_until = NULL
                 WHERE claimed_by = ${owner} AND status = 'pending' RETURNING id`
        : sql`UPDATE event_outbox SET claimed_by = NULL, lease_until = NULL
                 WHERE claimed_by = ${owner} AND status = 'pending'
                   AND id IN (SELECT value::uuid FROM jsonb_array_elements_text(${JSON.stringify(ids)}::jsonb))
                 RETURNING id`
      return query.pipe(
        Effect.map((rows) => rows.length),
        fail("release")
      )
    }

    const stats = sql`
SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'published') AS published,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'parked') AS parked,
       count(*) FILTER (WHERE status = 'pending' AND lease_until >= now()) AS in_flight,
       (SELECT count(*) FROM event_outbox h
         WHERE h.status = 'pending'
           AND EXISTS (SELECT 1 FROM event_outbox f
                        WHERE f.status = 'failed' AND f.aggregate_id = h.aggregate_id
                          AND f.aggregate_type = h.aggregate_type AND f.version < h.version)) AS held,
       min(created_at) FILTER (WHERE status = 'pending') AS oldest_pending_at,
       (extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'pending')) * 1000)::float8
         AS oldest_pending_age_ms
  FROM event_outbox`.pipe(
      Effect.flatMap(decodeStats),
      Effect.map((rows): Outbox.Stats => {
        const row = rows[0]!
        return {
          pending: row.pending,
          published: row.published,
          failed: row.failed,
          held: row.held,
          parked: row.parked,
          inFlight: row.in_flight,
          oldestPendingAt: Option.fromNullable(row.oldest_pending_at),
          oldestPendingAge: Option.map(Option.fromNullable(row.oldest_pending_age_ms), (ms) =>
            Duration.millis(Math.max(0, ms))
          )
        }
      }),
      fail("stats")
    )

    const notify = sql`SELECT pg_notify(${channel}, current_schema())`

    const eventIdsIn = (ids: ReadonlyArray<string>) =>
      sql`event_id IN (SELECT value::uuid FROM jsonb_array_elements_text(${JSON.stringify(ids)}::jsonb))`

    // A parked entry is put back only when named.
    const retryFailed = (options?: { readonly eventIds?: ReadonlyArray<string> }) =>
      Outbox.inputError("retryFailed", { eventIds: options?.eventIds }) ??
      sql`UPDATE event_outbox
             SET status = 'pending', retry_count = 0, next_attempt_at = NULL, claimed_by = NULL, lease_until = NULL,
                 parked_at = NULL, parked_by = NULL, parked_reason = NULL
           WHERE ${
             options?.eventIds === undefined
               ? sql`status = 'failed'`
               : sql.and([sql`status IN ('failed', 'parked')`, eventIdsIn(options.eventIds)])
           }
          RETURNING id`.pipe(
        Effect.map((rows) => rows.length),
        Effect.tap((count) => (count > 0 ? notify : Effect.void)),
        fail("retryFailed")
      )

    const park = (options: Outbox.ParkOptions) =>
      Outbox.inputError("park", options) ??
      (options.eventIds.length === 0
        ? Effect.succeed(0)
        : sql`UPDATE event_outbox
                 SET status = 'parked', parked_at = now(), parked_by = ${options.by}, parked_reason = ${options.reason},
                     claimed_by = NULL, lease_until = NULL
               WHERE status = 'failed' AND ${eventIdsIn(options.eventIds)}
              RETURNING id`.pipe(
            Effect.map((rows) => rows.length),
            Effect.tap((count) => (count > 0 ? notify : Effect.void)),
            fail("park")
          ))

    // In chunks, so that a large purge neither holds many row locks nor runs as one long statement.
    const deletePublished = (olderThan: Duration.DurationInput) => {
      const ms = Duration.toMillis(Duration.decode(olderThan))
      const chunk = sql`
DELETE FROM event_outbox WHERE id IN (
  SELECT id FROM event_outbox
   WHERE status = 'published' AND published_at < now() - ${ms}::double precision * interval '1 millisecond'
   LIMIT ${DELETE_CHUNK})
RETURNING 1 AS deleted`.pipe(Effect.map((rows) => rows.length))
      return Effect.iterate(
        { total: 0, last: DELETE_CHUNK },
        {
          while: (state) => state.last === DELETE_CHUNK,
          body: (state) => Effect.map(chunk, (n) => ({ total: state.total + n, last: n }))
        }
      ).pipe(
        Effect.map((state) => state.total),
        fail("deletePublished")
      )
    }

    const list = (options: Outbox.ListOptions = {}) =>
      sql`SELECT ${sql.literal(entryColumns("o"))}, o.status, o.last_error, o.created_at, o.published_at,
                 o.claimed_by, o.lease_until, o.next_attempt_at, o.parked_at, o.parked_by, o.parked_reason
            FROM event_outbox o
           WHERE ${sql.and([
             ...(options.status === undefined ? [] : [sql`o.status = ${options.status}`]),
             ...(options.aggregateId === undefined ? [] : [sql`o.aggregate_id = ${options.aggregateId}::uuid`])
           ])}
           ORDER BY o.global_position NULLS FIRST, o.created_at
           LIMIT ${options.limit ?? 1000}`.pipe(
        Effect.flatMap(decodeRows),
        Effect.map((rows) =>
          rows.map(
            (row): Outbox.Row => ({
              ...toEntry(row),
              status: row.status,
              lastError: row.last_error,
              createdAt: row.created_at,
              publishedAt: row.published_at,
              claimedBy: row.claimed_by,
              leaseUntil: row.lease_until,
              nextAttemptAt: row.next_attempt_at,
              parked:
                row.parked_at === null
                  ? null
                  : { at: row.parked_at, by: row.parked_by ?? "", reason: row.parked_reason ?? "" }
            })
          )
        ),
        fail("list")
      )

    // Our own heartbeats prove the LISTEN connection alive; anybody's notification resets the
    // clock. Only those about this outbox's schema wake the relay.
    const ownSchema = sql<{ readonly schema: string | null }>`SELECT current_schema() AS schema`.pipe(
      Effect.map((rows) => rows[0]?.schema ?? undefined),
      fail("wakeups")
    )
    const wakeups: Stream.Stream<void, Outbox.OutboxError> = Stream.unwrap(
      Effect.map(ownSchema, (schema) => {
        const token = `heartbeat:${crypto.randomUUID()}`
        const silence = Duration.times(heartbeat, 3)
        const notifications = Driver.listen(pg.config, channel).pipe(
          Stream.mapError(Outbox.outboxError("wakeups")),
          Stream.timeoutFail(
            () =>
              new Outbox.OutboxError({
                method: "wakeups",
                message: `no notification on ${channel} for ${Duration.format(silence)}, not even the heartbeat: the LISTEN connection is presumed lost`
              }),
            silence
          ),
          Stream.filter((payload) => !payload.startsWith("heartbeat:") && Driver.notifies(payload, schema))
        )
        const beats = Stream.repeatEffectWithSchedule(
          sql`SELECT pg_notify(${channel}, ${token})`.pipe(fail("wakeups")),
          Schedule.spaced(heartbeat)
        ).pipe(Stream.drain)
        return Stream.merge(notifications, beats).pipe(Stream.as(undefined))
      })
    )

    return {
      claim,
      settle,
      release,
      stats,
      retryFailed,
      park,
      deletePublished,
      list,
      wakeups
    } satisfies Outbox.Service
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<Outbox.Outbox, never, SqlClient.SqlClient | PgClient.PgClient> =>
  Layer.effect(Outbox.Outbox, make(options))

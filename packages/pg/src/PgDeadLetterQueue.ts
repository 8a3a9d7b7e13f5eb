/**
 * The `DeadLetterQueue` on the spec's `dead_letter_queue` table (plus the
 * `global_position` column of migration 8), over the application's `SqlClient`.
 * Every statement joins the caller's transaction: a projection's dead letters
 * commit with its batch.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as DeadLetterQueue from "@eventfold/core/DeadLetterQueue"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { Int8 } from "./internal/eventRows.js"

const Row = Schema.Struct({
  id: Int8,
  event_id: Schema.String,
  projection_name: Schema.String,
  event_type: Schema.String,
  event_data: Schema.Unknown,
  error_message: Schema.String,
  error_stacktrace: Schema.NullOr(Schema.String),
  retry_count: Schema.Number,
  first_failed_at: Schema.DateFromSelf,
  last_failed_at: Schema.DateFromSelf,
  status: Schema.Literal("failed", "retrying", "resolved"),
  resolved_at: Schema.NullOr(Schema.DateFromSelf),
  resolved_by: Schema.NullOr(Schema.String),
  global_position: Schema.NullOr(Int8)
})
const decodeRows = Schema.decodeUnknown(Schema.Array(Row))

const COLUMNS =
  "id, event_id, projection_name, event_type, event_data, error_message, error_stacktrace, retry_count, first_failed_at, last_failed_at, status, resolved_at, resolved_by, global_position"

const toDeadLetter = (row: typeof Row.Type): DeadLetterQueue.DeadLetter => ({
  id: row.id,
  projection: row.projection_name,
  eventId: row.event_id,
  eventType: row.event_type,
  globalPosition: row.global_position,
  eventData: row.event_data,
  errorMessage: row.error_message,
  errorStacktrace: row.error_stacktrace,
  retryCount: row.retry_count,
  firstFailedAt: row.first_failed_at,
  lastFailedAt: row.last_failed_at,
  status: row.status,
  resolvedAt: row.resolved_at,
  resolvedBy: row.resolved_by
})

const fail = (method: string) => (cause: unknown) =>
  new DeadLetterQueue.DeadLetterError({
    method,
    message: `DeadLetterQueue.${method} failed: ${cause instanceof Error ? cause.message : String(cause)}`,
    cause
  })

/** PostgreSQL text cannot hold NUL; error messages come from anywhere. */
// biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is what PostgreSQL rejects
const storable = (text: string) => text.replace(/\u0000/g, "\uFFFD")

/**
 * The queue over the `SqlClient` in context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<DeadLetterQueue.Service, never, SqlClient.SqlClient> = Effect.gen(function* () {
  // Column names exactly as written, whatever name transforms the application's client has.
  const sql = (yield* SqlClient.SqlClient).withoutTransforms()

  const rows = (method: string, query: Effect.Effect<ReadonlyArray<unknown>, unknown>) =>
    query.pipe(
      Effect.flatMap(decodeRows),
      Effect.map((rows) => rows.map(toDeadLetter)),
      Effect.mapError(fail(method))
    )

  const one = (method: string, id: bigint, query: Effect.Effect<ReadonlyArray<unknown>, unknown>) =>
    Effect.flatMap(rows(method, query), (found) =>
      found[0] === undefined
        ? Effect.fail(new DeadLetterQueue.DeadLetterNotFoundError({ id }))
        : Effect.succeed(found[0])
    )

  const add: DeadLetterQueue.Service["add"] = (projection, event, failure) =>
    Effect.flatMap(
      rows(
        "add",
        sql`INSERT INTO dead_letter_queue AS d
                   (event_id, projection_name, event_type, event_data, error_message, error_stacktrace, retry_count, global_position,
                    tenant_id)
            VALUES (${event.eventId}::uuid, ${projection}, ${event.eventType},
                    ${DeadLetterQueue.eventDataJson(event)}::jsonb, ${storable(failure.message)},
                    ${failure.stacktrace === undefined || failure.stacktrace === null ? null : storable(failure.stacktrace)},
                    ${failure.attempts}, ${event.globalPosition}, ${event.tenantId}::uuid)
            ON CONFLICT (event_id, projection_name) DO UPDATE
               SET event_type = EXCLUDED.event_type, event_data = EXCLUDED.event_data,
                   error_message = EXCLUDED.error_message, error_stacktrace = EXCLUDED.error_stacktrace,
                   retry_count = d.retry_count + EXCLUDED.retry_count, last_failed_at = now(),
                   status = 'failed', resolved_at = NULL, resolved_by = NULL,
                   global_position = EXCLUDED.global_position, tenant_id = EXCLUDED.tenant_id
            RETURNING ${sql.literal(COLUMNS)}`
      ),
      (found) => Effect.succeed(found[0]!)
    )

  const list: DeadLetterQueue.Service["list"] = (options) => {
    const statuses = options?.status === undefined ? undefined : [options.status].flat()
    const where = [
      ...(options?.projection === undefined ? [] : [sql`projection_name = ${options.projection}`]),
      ...(statuses === undefined ? [] : [sql.in("status", statuses)]),
      ...(options?.afterId === undefined ? [] : [sql`id > ${options.afterId}`])
    ]
    return rows(
      "list",
      sql`SELECT ${sql.literal(COLUMNS)} FROM dead_letter_queue WHERE ${sql.and(where)}
          ORDER BY id LIMIT ${options?.limit ?? 100}`
    )
  }

  const get: DeadLetterQueue.Service["get"] = (id) =>
    Effect.map(rows("get", sql`SELECT ${sql.literal(COLUMNS)} FROM dead_letter_queue WHERE id = ${id}`), (found) =>
      Option.fromNullable(found[0])
    )

  const resolve: DeadLetterQueue.Service["resolve"] = (id, options) =>
    one(
      "resolve",
      id,
      sql`UPDATE dead_letter_queue SET status = 'resolved', resolved_at = now(), resolved_by = ${options?.by ?? null}
          WHERE id = ${id} RETURNING ${sql.literal(COLUMNS)}`
    )

  const resolveEvent: DeadLetterQueue.Service["resolveEvent"] = (projection, eventId, options) =>
    Effect.map(
      rows(
        "resolveEvent",
        sql`UPDATE dead_letter_queue SET status = 'resolved', resolved_at = now(), resolved_by = ${options?.by ?? null}
            WHERE projection_name = ${projection} AND event_id = ${eventId}::uuid AND status <> 'resolved'
            RETURNING ${sql.literal(COLUMNS)}`
      ),
      (found) => found.length > 0
    )

  const markRetrying: DeadLetterQueue.Service["markRetrying"] = (id) =>
    one(
      "markRetrying",
      id,
      sql`UPDATE dead_letter_queue SET status = 'retrying' WHERE id = ${id} RETURNING ${sql.literal(COLUMNS)}`
    )

  const recordFailure: DeadLetterQueue.Service["recordFailure"] = (id, failure) =>
    one(
      "recordFailure",
      id,
      sql`UPDATE dead_letter_queue
             SET status = 'failed', error_message = ${storable(failure.message)},
                 error_stacktrace = ${failure.stacktrace === undefined || failure.stacktrace === null ? null : storable(failure.stacktrace)},
                 retry_count = retry_count + ${failure.attempts}, last_failed_at = now()
           WHERE id = ${id} RETURNING ${sql.literal(COLUMNS)}`
    )

  return DeadLetterQueue.make({
    name: "postgresql",
    add,
    list,
    get,
    resolve,
    resolveEvent,
    markRetrying,
    recordFailure
  })
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<DeadLetterQueue.DeadLetterQueue, never, SqlClient.SqlClient> = Layer.effect(
  DeadLetterQueue.DeadLetterQueue,
  make
)

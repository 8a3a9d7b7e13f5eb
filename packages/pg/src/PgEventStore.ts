/**
 * The PostgreSQL event store, over the application's `SqlClient` pool.
 *
 * - `append` is one round trip whatever the batch size (the `eventfold_append`
 *   function), checks all four expected-version forms atomically, and joins the
 *   caller's transaction when it runs inside `sql.withTransaction`.
 * - `readStream` and `readAll` read in keyset pages (by version, by global
 *   position): constant memory, no connection held between pages.
 *
 * @since 0.1.0
 */

import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import { ConcurrencyError, DuplicateEventError, type EventStoreError } from "@eventfold/core/Errors"
import type { EventRegistry } from "@eventfold/core/EventRegistry"
import * as EventStore from "@eventfold/core/EventStore"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as EventRows from "./internal/eventRows.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  readonly registry: EventRegistry
  /** Rows per page for reads; default 1,000. */
  readonly pageSize?: number
}

const AppendRow = Schema.Struct({
  status: Schema.Literal("appended", "replayed", "conflict", "duplicate"),
  stream_version: Schema.NullOr(Schema.Number),
  first_position: Schema.NullOr(EventRows.Int8),
  last_position: Schema.NullOr(EventRows.Int8),
  duplicate_event_id: Schema.NullOr(Schema.String)
})

const decodeAppendRows = Schema.decodeUnknown(Schema.Array(AppendRow))

const expectedArgs = (expected: EventStore.PreparedAppend["expectedVersion"]) => {
  switch (expected._tag) {
    case "Any":
      return ["any", null] as const
    case "NoStream":
      return ["no_stream", null] as const
    case "StreamExists":
      return ["stream_exists", null] as const
    case "Exact":
      return ["exact", expected.version] as const
  }
}

/** The batch as one JSON document; payloads are embedded as the JSON text core produced. */
const eventsDocument = (events: EventStore.PreparedAppend["events"]) =>
  `[${events
    .map(
      (e) =>
        `{"event_id":"${e.eventId}","event_type":${JSON.stringify(e.eventType)},"timestamp":"${e.timestamp.toISOString()}","payload":${e.payloadJson}}`
    )
    .join(",")}]`

/** The fields of pg's DatabaseError that tell which constraint failed. */
const pgError = (
  error: SqlError
): { readonly code?: unknown; readonly constraint?: unknown; readonly detail?: unknown } =>
  typeof error.cause === "object" && error.cause !== null ? error.cause : {}

/**
 * The backend over a `SqlClient`; most users want {@link layer}.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeBackend = (options: { readonly pageSize?: number } = {}) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const pageSize = options.pageSize ?? 1000

    const append: EventStore.Backend["append"] = (input) => {
      const [expected, expectedVersion] = expectedArgs(input.expectedVersion)
      const { aggregateId, aggregateType } = input.stream
      return sql`SELECT * FROM eventfold_append(${aggregateId}::uuid, ${aggregateType}, ${expected}, ${expectedVersion}::integer, ${input.tenantId}::uuid, ${input.actorId}, ${eventsDocument(
        input.events
      )}::jsonb)`.pipe(
        Effect.flatMap(decodeAppendRows),
        Effect.flatMap((rows): ReturnType<EventStore.Backend["append"]> => {
          const row = rows[0]
          switch (row?.status) {
            case "appended":
            case "replayed":
              return Effect.succeed({
                version: row.stream_version ?? 0,
                firstPosition: row.first_position ?? 0n,
                lastPosition: row.last_position ?? 0n
              })
            case "conflict":
              return Effect.fail(
                new ConcurrencyError({
                  aggregateId,
                  aggregateType,
                  expectedVersion: input.expectedVersion,
                  actualVersion: row.stream_version ?? 0
                })
              )
            case "duplicate":
              return Effect.fail(
                new DuplicateEventError({ eventId: row.duplicate_event_id ?? "", aggregateId, aggregateType })
              )
            default:
              return Effect.fail(EventStore.storeError("append")(new Error("eventfold_append returned no row")))
          }
        }),
        Effect.catchTags({
          SqlError: (error): Effect.Effect<never, ConcurrencyError | DuplicateEventError | EventStoreError> => {
            const { code, constraint, detail } = pgError(error)
            // Both can only come from writers racing outside eventfold_append's lock
            // (another id stored concurrently, a caller in REPEATABLE READ).
            if (code === "23505" && constraint === "uq_events_aggregate_version") {
              return currentVersion(aggregateId, aggregateType).pipe(
                Effect.flatMap((actualVersion) =>
                  Effect.fail(
                    new ConcurrencyError({
                      aggregateId,
                      aggregateType,
                      expectedVersion: input.expectedVersion,
                      actualVersion
                    })
                  )
                )
              )
            }
            if (code === "23505" && constraint === "events_event_id_key") {
              const eventId = /\(event_id\)=\(([0-9a-f-]+)\)/.exec(String(detail))?.[1] ?? ""
              return Effect.fail(new DuplicateEventError({ eventId, aggregateId, aggregateType }))
            }
            return Effect.fail(EventStore.storeError("append")(error))
          },
          ParseError: (error) => Effect.fail(EventStore.storeError("append")(error))
        })
      )
    }

    const currentVersion = (aggregateId: string, aggregateType: string) =>
      sql<{
        version: number
      }>`SELECT coalesce(max(version), 0)::integer AS version FROM events WHERE aggregate_id = ${aggregateId}::uuid AND aggregate_type = ${aggregateType}`.pipe(
        Effect.map((rows) => rows[0]?.version ?? 0),
        Effect.mapError(EventStore.storeError("append"))
      )

    const page = (method: string, query: Effect.Effect<ReadonlyArray<Record<string, unknown>>, SqlError>) =>
      query.pipe(Effect.flatMap(EventRows.decodeRows), Effect.mapError(EventStore.storeError(method)))

    const readStream: EventStore.Backend["readStream"] = (stream, options) => {
      const forward = options.direction === "forward"
      const to = options.toVersion ?? 2147483647
      return Stream.paginateChunkEffect(forward ? options.fromVersion : to, (cursor) =>
        page(
          "readStream",
          forward
            ? sql`SELECT ${sql.literal(EventRows.COLUMNS)} FROM events
                  WHERE aggregate_id = ${stream.aggregateId}::uuid AND aggregate_type = ${stream.aggregateType}
                    AND version >= ${cursor} AND version <= ${to}
                  ORDER BY version ASC LIMIT ${pageSize}`
            : sql`SELECT ${sql.literal(EventRows.COLUMNS)} FROM events
                  WHERE aggregate_id = ${stream.aggregateId}::uuid AND aggregate_type = ${stream.aggregateType}
                    AND version <= ${cursor} AND version >= ${options.fromVersion}
                  ORDER BY version DESC LIMIT ${pageSize}`
        ).pipe(
          Effect.map((events) => {
            const last = events[events.length - 1]
            return [
              Chunk.unsafeFromArray(events),
              events.length < pageSize || last === undefined
                ? Option.none()
                : Option.some(forward ? last.version + 1 : last.version - 1)
            ] as const
          })
        )
      )
    }

    const readAll: EventStore.Backend["readAll"] = (options) => {
      const forward = options.direction === "forward"
      const limit = options.limit ?? Number.POSITIVE_INFINITY
      const filters = [
        ...(options.tenantId === undefined ? [] : [sql`tenant_id = ${options.tenantId}::uuid`]),
        ...(options.aggregateTypes === undefined ? [] : [sql.in("aggregate_type", options.aggregateTypes)]),
        ...(options.eventTypes === undefined ? [] : [sql.in("event_type", options.eventTypes)]),
        ...(options.since === undefined ? [] : [sql`timestamp >= ${options.since}`]),
        ...(options.until === undefined ? [] : [sql`timestamp < ${options.until}`]),
        ...(options.before === undefined || !forward ? [] : [sql`global_position < ${options.before}`]),
        ...(options.after === undefined || forward ? [] : [sql`global_position > ${options.after}`])
      ]
      const start: bigint | undefined = forward ? (options.after ?? 0n) : options.before
      return Stream.paginateChunkEffect({ cursor: start, taken: 0 }, ({ cursor, taken }) => {
        const size = Math.min(pageSize, limit - taken)
        if (size <= 0) return Effect.succeed([Chunk.empty<EventStore.StoredEvent>(), Option.none()] as const)
        const where = sql.and([
          ...filters,
          ...(cursor === undefined
            ? []
            : [forward ? sql`global_position > ${cursor}` : sql`global_position < ${cursor}`])
        ])
        const query = forward
          ? sql`SELECT ${sql.literal(EventRows.COLUMNS)} FROM events WHERE ${where} ORDER BY global_position ASC LIMIT ${size}`
          : sql`SELECT ${sql.literal(EventRows.COLUMNS)} FROM events WHERE ${where} ORDER BY global_position DESC LIMIT ${size}`
        return page("readAll", query).pipe(
          Effect.map((events) => {
            const last = events[events.length - 1]
            return [
              Chunk.unsafeFromArray(events),
              events.length < size || last === undefined || taken + events.length >= limit
                ? Option.none()
                : Option.some({ cursor: last.globalPosition, taken: taken + events.length })
            ] as const
          })
        )
      })
    }

    return { name: "postgresql", append, readStream, readAll } satisfies EventStore.Backend
  })

/**
 * The PostgreSQL `EventStore` over the `SqlClient` in context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options) =>
  Effect.map(makeBackend(options), (backend) => EventStore.make(backend, options.registry))

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<EventStore.EventStore, never, SqlClient.SqlClient> =>
  Layer.effect(EventStore.EventStore, make(options))

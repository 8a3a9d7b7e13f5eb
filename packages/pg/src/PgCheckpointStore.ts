/**
 * The `CheckpointStore` on the spec's `projection_checkpoints` table, over the
 * application's `SqlClient`. Saves are upserts that never move a checkpoint
 * backwards; a save with `expected` is a compare-and-set. Every statement joins
 * the caller's transaction, so a projection's writes and its checkpoint commit
 * together (see `PgProjection`).
 *
 * `awaitPosition` is woken by the saves themselves: each save notifies
 * `eventfold_checkpoints` with the checkpoint's name, delivered when its transaction
 * commits (with the projection's writes), to one LISTEN connection per store, opened
 * while someone waits (with the application's `PgClient`; without one, checkpoints are
 * read again every 250 ms while someone waits).
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as CheckpointStore from "@eventfold/core/CheckpointStore"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as PubSub from "effect/PubSub"
import * as RcRef from "effect/RcRef"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { CheckpointRow, toCheckpoint } from "./internal/checkpointRows.js"
import { Count, Int8 } from "./internal/eventRows.js"
import * as Driver from "./internal/pgDriver.js"

/** The channel each save notifies, with the checkpoint's name. */
const CHANNEL = "eventfold_checkpoints"

const decodeRows = Schema.decodeUnknown(Schema.Array(CheckpointRow))

const LagRow = Schema.Struct({
  position: Int8,
  head: Int8,
  behind: Int8,
  behind_millis: Schema.NullOr(Count)
})
const decodeLag = Schema.decodeUnknown(Schema.Array(LagRow))

const COLUMNS =
  "projection_name, global_position, last_event_id, last_event_type, events_processed, last_processed_at, created_at, updated_at"

const fail = (method: string) => (cause: unknown) =>
  new CheckpointStore.CheckpointError({
    method,
    message: `CheckpointStore.${method} failed: ${cause instanceof Error ? cause.message : String(cause)}`,
    cause
  })

/**
 * The store over the `SqlClient` in context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<CheckpointStore.Service, never, SqlClient.SqlClient | Scope.Scope> = Effect.gen(
  function* () {
    // Column names exactly as written, whatever name transforms the application's client has.
    const sql = (yield* SqlClient.SqlClient).withoutTransforms()
    const listenConfig = Option.map(yield* Effect.serviceOption(PgClient.PgClient), (client) => client.config)

    const rows = (method: string, query: Effect.Effect<ReadonlyArray<unknown>, unknown>) =>
      query.pipe(
        Effect.flatMap(decodeRows),
        Effect.map((rows) => rows.map(toCheckpoint)),
        Effect.mapError(fail(method))
      )

    const current = (name: string) =>
      rows("save", sql`SELECT ${sql.literal(COLUMNS)} FROM projection_checkpoints WHERE projection_name = ${name}`)

    // The saved row, and a notification to whoever awaits the checkpoint (sent at commit).
    const notified = sql.literal(
      `SELECT saved.*, pg_notify('${CHANNEL}', saved.projection_name)::text AS notified FROM saved`
    )

    const save: CheckpointStore.Service["save"] = (name, input) =>
      Effect.gen(function* () {
        const eventId = input.eventId ?? null
        const eventType = input.eventType ?? null
        const processed = input.processed ?? 0
        // Moves forward only; with `expected`, only from that position (a missing row is at 0).
        const guard =
          input.expected === undefined
            ? sql`c.global_position < EXCLUDED.global_position`
            : sql`c.global_position < EXCLUDED.global_position AND c.global_position = ${input.expected}`
        const written =
          input.expected !== undefined && input.expected !== 0n
            ? yield* rows(
                "save",
                sql`WITH saved AS (
                  UPDATE projection_checkpoints AS c
                     SET global_position = ${input.position},
                         last_event_id = coalesce(${eventId}::uuid, c.last_event_id),
                         last_event_type = coalesce(${eventType}::varchar, c.last_event_type),
                         events_processed = c.events_processed + ${processed},
                         last_processed_at = now(), updated_at = now()
                   WHERE c.projection_name = ${name} AND c.global_position = ${input.expected}
                     AND c.global_position < ${input.position}
               RETURNING ${sql.literal(COLUMNS)}
              )
              ${notified}`
              )
            : yield* rows(
                "save",
                sql`WITH saved AS (
                  INSERT INTO projection_checkpoints AS c
                         (projection_name, global_position, last_event_id, last_event_type, events_processed, last_processed_at)
                  VALUES (${name}, ${input.position}, ${eventId}::uuid, ${eventType}, ${processed}, now())
                  ON CONFLICT (projection_name) DO UPDATE
                     SET global_position = EXCLUDED.global_position,
                         last_event_id = coalesce(EXCLUDED.last_event_id, c.last_event_id),
                         last_event_type = coalesce(EXCLUDED.last_event_type, c.last_event_type),
                         events_processed = c.events_processed + EXCLUDED.events_processed,
                         last_processed_at = now(), updated_at = now()
                   WHERE ${guard}
               RETURNING ${sql.literal(COLUMNS)}
              )
              ${notified}`
              )
        if (written[0] !== undefined) return written[0]
        // Nothing written: the stored position is at or ahead of this one, or not the expected one.
        const stored = (yield* current(name))[0]
        const actual = stored?.position ?? 0n
        if (input.expected !== undefined && actual !== input.expected) {
          return yield* new CheckpointStore.CheckpointConflictError({ name, expected: input.expected, actual })
        }
        if (stored === undefined) {
          // Only reachable with position 0 and no row: record the checkpoint at 0.
          return (yield* rows(
            "save",
            sql`INSERT INTO projection_checkpoints (projection_name, global_position) VALUES (${name}, 0)
              ON CONFLICT (projection_name) DO UPDATE SET updated_at = projection_checkpoints.updated_at
              RETURNING ${sql.literal(COLUMNS)}`
          ))[0]!
        }
        return stored
      })

    const get: CheckpointStore.Service["get"] = (name) =>
      Effect.map(
        rows("get", sql`SELECT ${sql.literal(COLUMNS)} FROM projection_checkpoints WHERE projection_name = ${name}`),
        (found) => Option.fromNullable(found[0])
      )

    const lag: CheckpointStore.Service["lag"] = (name, options) => {
      const filters = [
        ...(options?.tenantId === undefined ? [] : [sql`tenant_id = ${options.tenantId.toLowerCase()}::uuid`]),
        ...(options?.aggregateTypes === undefined ? [] : [sql.in("aggregate_type", options.aggregateTypes)]),
        ...(options?.eventTypes === undefined ? [] : [sql.in("event_type", options.eventTypes)])
      ]
      return sql`
      WITH checkpoint AS (
        SELECT coalesce((SELECT global_position FROM projection_checkpoints WHERE projection_name = ${name}), 0) AS position
      ), behind AS (
        SELECT global_position, created_at FROM events, checkpoint
         WHERE ${sql.and([sql`global_position > checkpoint.position`, ...filters])}
      )
      SELECT checkpoint.position,
             (SELECT coalesce(max(global_position), 0) FROM events) AS head,
             (SELECT count(*) FROM behind) AS behind,
             (SELECT (extract(epoch FROM now() - created_at) * 1000)::float8
                FROM behind ORDER BY global_position LIMIT 1) AS behind_millis
        FROM checkpoint`.pipe(
        Effect.flatMap(decodeLag),
        Effect.map(([row]) => ({
          name,
          position: row?.position ?? 0n,
          headPosition: row?.head ?? 0n,
          eventsBehind: Number(row?.behind ?? 0n),
          timeBehindMillis: Math.max(0, row?.behind_millis ?? 0)
        })),
        Effect.mapError(fail("lag"))
      )
    }

    const reset: CheckpointStore.Service["reset"] = (name, options) =>
      sql`INSERT INTO projection_checkpoints (projection_name, global_position)
        VALUES (${name}, ${options?.to ?? 0n})
        ON CONFLICT (projection_name) DO UPDATE
           SET global_position = EXCLUDED.global_position, last_event_id = NULL, last_event_type = NULL,
               events_processed = 0, last_processed_at = NULL, updated_at = now()`.pipe(
        Effect.asVoid,
        Effect.mapError(fail("reset"))
      )

    const list: CheckpointStore.Service["list"] = rows(
      "list",
      sql`SELECT ${sql.literal(COLUMNS)} FROM projection_checkpoints ORDER BY projection_name`
    )

    const watch: CheckpointStore.Watch = yield* Option.match(listenConfig, {
      onNone: () =>
        Effect.succeed<CheckpointStore.Watch>({
          saved: Effect.flatMap(PubSub.unbounded<string>(), PubSub.subscribe),
          recheck: Duration.millis(250)
        }),
      onSome: (config) => watchSaves(config)
    })

    return CheckpointStore.make({ name: "postgresql", save, get, lag, reset, list, watch })
  }
)

/**
 * The names of the checkpoints saved, from one LISTEN connection per store, opened
 * while someone waits (and a minute after, for the next request) and opened again when
 * lost. A subscriber gets its queue once the connection listens, or after a second
 * (then the re-reads every second cover what it may have missed).
 */
const watchSaves = (config: PgClient.PgClientConfig): Effect.Effect<CheckpointStore.Watch, never, Scope.Scope> =>
  Effect.map(
    RcRef.make({
      acquire: Effect.gen(function* () {
        const saves = yield* PubSub.unbounded<string>()
        const listening = yield* Deferred.make<void>()
        yield* Driver.listen(config, CHANNEL, () => Deferred.succeed(listening, undefined).pipe(Effect.asVoid)).pipe(
          Stream.runForEach((name) => PubSub.publish(saves, name)),
          Effect.tapError((error) =>
            Effect.logWarning(`CheckpointStore: the LISTEN connection failed: ${error.message}`)
          ),
          Effect.retry(Schedule.exponential("200 millis").pipe(Schedule.either(Schedule.spaced("5 seconds")))),
          Effect.forkScoped
        )
        return { saves, listening }
      }),
      idleTimeToLive: "1 minute"
    }),
    (listener): CheckpointStore.Watch => ({
      saved: Effect.gen(function* () {
        const { listening, saves } = yield* RcRef.get(listener)
        const queue = yield* PubSub.subscribe(saves)
        yield* Deferred.await(listening).pipe(Effect.timeout("1 second"), Effect.ignore)
        return queue
      }),
      recheck: Duration.seconds(1)
    })
  )

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<CheckpointStore.CheckpointStore, never, SqlClient.SqlClient> = Layer.scoped(
  CheckpointStore.CheckpointStore,
  make
)

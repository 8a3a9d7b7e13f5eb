/**
 * The backends the subscription, checkpoint and projection suites run against:
 * memory, and PostgreSQL on a fresh database of the test file's own.
 */

import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import type * as PgClient from "@effect/sql-pg/PgClient"
import {
  CheckpointStore,
  DeadLetterQueue,
  Errors,
  type EventRegistry,
  EventStore,
  ExpectedVersion,
  Projection
} from "@eventfold/core"
import * as EventMetadata from "@eventfold/core/EventMetadata"
import { type PgEventStore, PgMigrations, PgProjection } from "@eventfold/pg"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as PgClients from "./pgClients.js"
import * as TestDatabase from "./TestDatabase.js"

const storeError = (cause: unknown) => new Errors.EventStoreError({ method: "test", message: String(cause), cause })

/** What a backend gives the suites. */
export interface BackendService {
  readonly name: "memory" | "postgresql"
  /** A store over the backend's one storage, decoding with `registry`. */
  readonly store: (registry: EventRegistry.EventRegistry) => Effect.Effect<EventStore.Service>
  /** Runner services over the same storage, with the store of `registry`. */
  readonly services: (registry: EventRegistry.EventRegistry) => Layer.Layer<Projection.Requirements>
  /** Runs an effect in one database transaction; none for memory. */
  readonly transaction: Option.Option<
    <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | Errors.EventStoreError, R>
  >
  /** A statement of the backend's own in the current transaction (other work before an append). */
  readonly sideWrite: Option.Option<(value: string) => Effect.Effect<void, Errors.EventStoreError>>
  /**
   * Writes an event as another program would, past the store's checks: its payload as
   * JSON text (memory: the backend's append; PostgreSQL: a plain INSERT). Returns its position.
   */
  readonly writeForeign: (event: {
    readonly aggregateId: string
    readonly aggregateType: string
    readonly version: number
    readonly eventType: string
    readonly payloadJson: string
  }) => Effect.Effect<bigint, Errors.EventStoreError>
  /** The database: its URL, a client on the pool, and the pool's layer. */
  readonly database: Option.Option<{
    readonly url: string
    readonly sql: SqlClient.SqlClient
    readonly pool: Layer.Layer<SqlClient.SqlClient | PgClient.PgClient>
    /** The backend's scope: stores made for a test live as long as the file's backend. */
    readonly scope: Scope.Scope
  }>
}

export class Backend extends Context.Tag("test/support/projectionHarness/Backend")<Backend, BackendService>() {}

/** Memory: one backend shared by every store, as one database would be. */
export const memory: Layer.Layer<Backend> = Layer.sync(Backend, (): BackendService => {
  const backend = EventStore.makeMemoryBackend()
  // One queue and one runtime (its locks) for the whole file, like one database.
  const deadLetters = Layer.succeed(DeadLetterQueue.DeadLetterQueue, Effect.runSync(DeadLetterQueue.makeMemory))
  const runtime = Layer.succeed(Projection.ProjectionRuntime, Projection.makeMemoryRuntime())
  const checkpoints = new Map<EventRegistry.EventRegistry, CheckpointStore.Service>()
  return {
    name: "memory",
    store: (registry) => Effect.succeed(EventStore.make(backend, registry)),
    services: (registry) => {
      const store = EventStore.make(backend, registry)
      let checkpoint = checkpoints.get(registry)
      if (checkpoint === undefined) {
        checkpoint = Effect.runSync(Effect.provideService(CheckpointStore.makeMemory, EventStore.EventStore, store))
        checkpoints.set(registry, checkpoint)
      }
      return Layer.mergeAll(
        Layer.succeed(EventStore.EventStore, store),
        Layer.succeed(CheckpointStore.CheckpointStore, checkpoint),
        deadLetters,
        runtime
      )
    },
    transaction: Option.none(),
    sideWrite: Option.none(),
    writeForeign: (event) =>
      backend
        .append({
          stream: { aggregateId: event.aggregateId, aggregateType: event.aggregateType },
          expectedVersion: ExpectedVersion.exact(event.version - 1),
          tenantId: null,
          actorId: null,
          metadata: EventMetadata.empty,
          events: [
            {
              eventId: crypto.randomUUID(),
              eventType: event.eventType,
              timestamp: new Date(),
              payloadJson: event.payloadJson
            }
          ]
        })
        .pipe(
          Effect.map((result) => result.firstPosition),
          Effect.mapError(storeError)
        ),
    database: Option.none()
  }
})

/** Fast enough for tests: short polls, stall reports after a second. */
export const testSubscriptions: NonNullable<PgEventStore.Options["subscriptions"]> = {
  pollInterval: "200 millis",
  stallThreshold: "1 second"
}

/**
 * PostgreSQL on a fresh database, migrated, with a side table for "other work" in
 * transactions; the client made the `client` way (see `pgClients.ts`).
 */
export const postgresql = (
  options: { readonly poolSize?: number; readonly client?: PgClients.Client } = {}
): Layer.Layer<Backend> =>
  Layer.scoped(
    Backend,
    Effect.gen(function* (): Effect.fn.Return<BackendService, unknown, Scope.Scope> {
      const scope = yield* Effect.scope
      const url = yield* TestDatabase.fresh
      const connected = yield* PgClients.connect(options.client ?? "prepared", url, {
        poolSize: options.poolSize ?? 4,
        maxOverflow: 16
      })
      const context = connected.context
      const sql = yield* Effect.provide(SqlClient.SqlClient, context)
      yield* Effect.provide(PgMigrations.run, context)
      yield* sql`CREATE TABLE side_effects (value text PRIMARY KEY)`
      const pool = Layer.succeedContext(context)
      return {
        name: "postgresql",
        store: (registry) =>
          connected.makeStore({ registry, pageSize: 100, subscriptions: testSubscriptions }).pipe(Scope.extend(scope)),
        services: (registry) =>
          Layer.mergeAll(
            connected.storeLayer({ registry, subscriptions: testSubscriptions }),
            PgProjection.layer({ heartbeat: "200 millis" }).pipe(Layer.provide(pool))
          ),
        transaction: Option.some(
          <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | Errors.EventStoreError, R> =>
            sql.withTransaction(effect).pipe(
              Effect.catchIf(
                (e): e is SqlError => e instanceof SqlError,
                (e) => Effect.fail(storeError(e))
              )
            )
        ),
        sideWrite: Option.some((value) =>
          sql`INSERT INTO side_effects (value) VALUES (${value})`.pipe(Effect.asVoid, Effect.mapError(storeError))
        ),
        writeForeign: (event) =>
          sql<{ readonly position: string }>`
            INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp, payload)
            VALUES (gen_random_uuid(), ${event.aggregateId}::uuid, ${event.aggregateType}, ${event.eventType},
                    ${event.version}, now(), ${event.payloadJson}::jsonb)
            RETURNING global_position::text AS position`.pipe(
            Effect.map((rows) => BigInt(rows[0]!.position)),
            Effect.mapError(storeError)
          ),
        database: Option.some({ url, sql, pool, scope })
      }
    }).pipe(Effect.orDie)
  )

export { eventually } from "./eventually.js"

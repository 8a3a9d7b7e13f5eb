/**
 * The PostgreSQL backend the subscription, checkpoint, dead-letter and projection
 * suites (and the fault tests) run against, on a fresh database of the test file's
 * own. The memory backend is the kit's own (`ConformanceBackend.memory`).
 */

import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import type * as PgClient from "@effect/sql-pg/PgClient"
import { Errors } from "@eventfold/core"
import { type PgEventStore, PgMigrations, PgProjection } from "@eventfold/pg"
import * as ConformanceBackend from "@eventfold/testing/ConformanceBackend"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as PgClients from "./pgClients.js"
import * as TestDatabase from "./TestDatabase.js"

const storeError = (cause: unknown) => new Errors.EventStoreError({ method: "test", message: String(cause), cause })

/** What a backend gives the suites, and the fault tests its database. */
export interface BackendService extends ConformanceBackend.Service {
  readonly name: "memory" | "postgresql"
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
): Layer.Layer<Backend | ConformanceBackend.ConformanceBackend> =>
  Layer.scopedContext(
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
        lockPolls: true,
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
    }).pipe(
      Effect.orDie,
      // One service under both tags: the suites read the kit's, the fault tests this file's.
      Effect.map((service) =>
        Context.make(Backend, service).pipe(Context.add(ConformanceBackend.ConformanceBackend, service))
      )
    )
  )

export { eventually } from "./eventually.js"

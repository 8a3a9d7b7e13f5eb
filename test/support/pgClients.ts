/**
 * The ways an application can give Eventfold its PostgreSQL client, each of which the
 * conformance suites run over:
 *
 * - `prepared`: `PgPool.layer` and `PgEventStore.layerPrepared` (prepared statements
 *   on the pool's connections outside transactions);
 * - `sql`: a plain `PgClient.layer` and `PgEventStore.layer` (everything through
 *   @effect/sql; no `PgPool`, so no pool statistics);
 * - `sql-transforms`: the same with `transformResultNames` and `transformQueryNames`
 *   set, as applications that use camelCase columns do.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import type { EventStore } from "@eventfold/core"
import { PgEventStore, PgPool } from "@eventfold/pg"
import type * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Str from "effect/String"

export type Client = "prepared" | "sql" | "sql-transforms"

const all: ReadonlyArray<Client> = ["prepared", "sql", "sql-transforms"]

/** Every way, or those `EVENTFOLD_PG_CLIENTS` lists (comma-separated; `npm run mutate` runs two). */
export const clients: ReadonlyArray<Client> = (() => {
  const listed = process.env.EVENTFOLD_PG_CLIENTS?.split(",").map((c) => c.trim())
  return listed === undefined ? all : all.filter((client) => listed.includes(client))
})()

/** A client of `url` built the `client` way, and how to make an event store over it. */
export interface Connected {
  readonly context: Context.Context<SqlClient.SqlClient | PgClient.PgClient>
  readonly makeStore: (options: PgEventStore.Options) => Effect.Effect<EventStore.Service, never, Scope.Scope>
  readonly storeLayer: (options: PgEventStore.Options) => Layer.Layer<EventStore.EventStore>
}

export const connect = (
  client: Client,
  url: string,
  pool: { readonly poolSize: number; readonly maxOverflow: number }
): Effect.Effect<Connected, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    if (client === "prepared") {
      const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), ...pool }))
      return {
        context,
        makeStore: (options) => Effect.provide(PgEventStore.makePrepared(options), context),
        storeLayer: (options) => PgEventStore.layerPrepared(options).pipe(Layer.provide(Layer.succeedContext(context)))
      }
    }
    const context = yield* Layer.build(
      PgClient.layer({
        url: Redacted.make(url),
        maxConnections: pool.poolSize + pool.maxOverflow,
        applicationName: "eventfold",
        ...(client === "sql-transforms"
          ? { transformResultNames: Str.snakeToCamel, transformQueryNames: Str.camelToSnake }
          : {})
      })
    )
    return {
      context,
      makeStore: (options) => Effect.provide(PgEventStore.make(options), context),
      storeLayer: (options) => PgEventStore.layer(options).pipe(Layer.provide(Layer.succeedContext(context)))
    }
  })

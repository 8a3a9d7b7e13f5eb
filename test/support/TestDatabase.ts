/**
 * A database of its own for each test file (or test), on the run's PostgreSQL
 * server (see `globalSetup.ts`), so that files can run in parallel.
 *
 * ```ts
 * it.scopedLive("...", () =>
 *   Effect.gen(function* () {
 *     const url = yield* TestDatabase.fresh // dropped when the scope closes
 *     ...
 *   }))
 * ```
 */

import { randomBytes } from "node:crypto"
import { redactCredentials } from "@eventfold/core/Settings"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import pg from "pg"
import { inject } from "vitest"
import type {} from "./globalSetup.js"

/** Creating or reaching a test database failed. */
export class TestDatabaseError extends Schema.TaggedError<TestDatabaseError>()("TestDatabaseError", {
  message: Schema.String,
  cause: Schema.Defect
}) {}

/** Admin URL of the run's server (database `postgres`), from `DATABASE_URL` or the embedded server. */
export const serverUrl = (): string => inject("databaseUrl")

/** The URL of database `database` on the same server as `server` (same credentials and parameters). */
export const urlFor = (database: string, server: string = serverUrl()): string => {
  const url = new URL(server)
  url.pathname = `/${encodeURIComponent(database)}`
  return url.toString()
}

/** Runs `f` with a short-lived connection to `url`. */
export const withClient = <A>(url: string, f: (client: pg.Client) => Promise<A>): Effect.Effect<A, TestDatabaseError> =>
  Effect.acquireUseRelease(
    Effect.tryPromise({
      try: async () => {
        const client = new pg.Client({ connectionString: url })
        await client.connect()
        return client
      },
      catch: (cause) => new TestDatabaseError({ message: `Could not connect to ${redactCredentials(url)}`, cause })
    }),
    (client) =>
      Effect.tryPromise({
        try: () => f(client),
        catch: (cause) => new TestDatabaseError({ message: "Query failed", cause })
      }),
    (client) =>
      Effect.promise(() =>
        client.end().catch((error: unknown) => console.warn("Closing a test connection failed", error))
      )
  )

/** A name PostgreSQL accepts unquoted: lower case, under 63 bytes, unique across parallel workers and runs. */
const uniqueName = (): string => `test_${Date.now().toString(36)}_${process.pid}_${randomBytes(4).toString("hex")}`

/**
 * Creates a uniquely named database on the run's server and returns its URL;
 * the database is dropped `WITH (FORCE)` (closing its remaining connections)
 * when the scope closes.
 */
export const fresh: Effect.Effect<string, TestDatabaseError, Scope.Scope> = Effect.gen(function* () {
  const server = yield* Effect.sync(serverUrl)
  const name = uniqueName()
  yield* Effect.acquireRelease(
    withClient(server, (client) => client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`)),
    () =>
      withClient(server, (client) =>
        client.query(`DROP DATABASE IF EXISTS ${client.escapeIdentifier(name)} WITH (FORCE)`)
      ).pipe(Effect.catchAll((error) => Effect.logWarning(`Could not drop test database ${name}`, error)))
  )
  return urlFor(name, server)
})

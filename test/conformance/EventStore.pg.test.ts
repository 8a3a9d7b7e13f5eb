import * as SqlClient from "@effect/sql/SqlClient"
import { Errors } from "@eventfold/core"
import { PgMigrations } from "@eventfold/pg"
import { Harness, suite } from "@eventfold/testing/EventStoreSuite"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as PgClients from "../support/pgClients.js"
import * as TestDatabase from "../support/TestDatabase.js"

const storeError = (cause: unknown) => new Errors.EventStoreError({ method: "test", message: String(cause), cause })

// A fresh database for each client, migrated; small pages so that paging is exercised.
const PgHarness = (client: PgClients.Client) =>
  Layer.scoped(
    Harness,
    Effect.gen(function* () {
      const scope = yield* Effect.scope
      const url = yield* TestDatabase.fresh
      const connected = yield* PgClients.connect(client, url, { poolSize: 4, maxOverflow: 12 })
      const sql = yield* Effect.provide(SqlClient.SqlClient, connected.context)
      yield* PgMigrations.run.pipe(Effect.provide(connected.context))
      yield* sql`CREATE TABLE side_effects (value text PRIMARY KEY)`
      return Harness.of({
        store: (registry) =>
          connected.makeStore({ registry, pageSize: 100, foldPageSize: 70 }).pipe(Scope.extend(scope)),
        transaction: Option.some((effect) =>
          sql.withTransaction(effect).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError(e))))
        ),
        sideWrite: Option.some((value) =>
          sql`INSERT INTO side_effects (value) VALUES (${value})`.pipe(Effect.asVoid, Effect.mapError(storeError))
        ),
        sideRead: Option.some((value) =>
          sql`SELECT 1 FROM side_effects WHERE value = ${value}`.pipe(
            Effect.map((rows) => rows.length > 0),
            Effect.mapError(storeError)
          )
        )
      })
    }).pipe(Effect.orDie)
  )

for (const client of PgClients.clients) suite(`postgresql (${client})`, PgHarness(client))

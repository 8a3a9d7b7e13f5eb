import * as SqlClient from "@effect/sql/SqlClient"
import { Errors } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgPool } from "@eventfold/pg"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import * as TestDatabase from "../support/TestDatabase.js"
import { Harness, suite } from "./eventStoreSuite.js"

const storeError = (cause: unknown) => new Errors.EventStoreError({ method: "test", message: String(cause), cause })

// A fresh database for this file, migrated; small pages so that paging is exercised.
const PgHarness = Layer.scoped(
  Harness,
  Effect.gen(function* () {
    const scope = yield* Effect.scope
    const url = yield* TestDatabase.fresh
    const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 4, maxOverflow: 12 }))
    const sql = SqlClient.SqlClient.pipe(Effect.provide(context))
    yield* PgMigrations.run.pipe(Effect.provide(context))
    yield* Effect.flatMap(sql, (sql) => sql`CREATE TABLE side_effects (value text PRIMARY KEY)`)
    const client = yield* sql
    return Harness.of({
      store: (registry) =>
        PgEventStore.make({ registry, pageSize: 100, foldPageSize: 70 }).pipe(
          Effect.provide(context),
          Scope.extend(scope)
        ),
      transaction: Option.some((effect) =>
        client.withTransaction(effect).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError(e))))
      ),
      sideWrite: Option.some((value) =>
        client`INSERT INTO side_effects (value) VALUES (${value})`.pipe(Effect.asVoid, Effect.mapError(storeError))
      ),
      sideRead: Option.some((value) =>
        client`SELECT 1 FROM side_effects WHERE value = ${value}`.pipe(
          Effect.map((rows) => rows.length > 0),
          Effect.mapError(storeError)
        )
      )
    })
  }).pipe(Effect.orDie)
)

suite("postgresql", PgHarness)

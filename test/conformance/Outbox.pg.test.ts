import * as SqlClient from "@effect/sql/SqlClient"
import { Errors } from "@eventfold/core"
import { PgMigrations, PgOutbox } from "@eventfold/pg"
import { registry } from "@eventfold/testing/EventStoreSuite"
import { OutboxHarness, suite } from "@eventfold/testing/OutboxSuite"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as PgClients from "../support/pgClients.js"
import * as TestDatabase from "../support/TestDatabase.js"

const storeError = (cause: unknown) => new Errors.EventStoreError({ method: "test", message: String(cause), cause })

// A fresh, migrated database per test: outbox tests look at the whole table.
const PgHarness = (client: PgClients.Client) =>
  Layer.succeed(OutboxHarness, {
    fresh: Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      const connected = yield* PgClients.connect(client, url, { poolSize: 2, maxOverflow: 8 })
      yield* PgMigrations.run.pipe(Effect.provide(connected.context))
      const withEntries = yield* connected.makeStore({ registry, outbox: true })
      const without = yield* connected.makeStore({ registry })
      const outbox = yield* PgOutbox.make({ heartbeat: "1 second" }).pipe(Effect.provide(connected.context))
      const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(connected.context))
      return {
        store: ({ outbox: enabled }: { readonly outbox: boolean }) => (enabled ? withEntries : without),
        outbox,
        transaction: Option.some(<A, E>(effect: Effect.Effect<A, E>) =>
          sql.withTransaction(effect).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError(e))))
        )
      }
    }).pipe(Effect.orDie)
  })

for (const client of PgClients.clients) suite(`postgresql (${client})`, PgHarness(client))

import * as PgClient from "@effect/sql-pg/PgClient"
import { Errors } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgOutbox, PgPool } from "@eventfold/pg"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as TestDatabase from "../support/TestDatabase.js"
import { registry } from "./eventStoreSuite.js"
import { OutboxHarness, suite } from "./outboxSuite.js"

const storeError = (cause: unknown) => new Errors.EventStoreError({ method: "test", message: String(cause), cause })

// A fresh, migrated database per test: outbox tests look at the whole table.
const PgHarness = Layer.succeed(OutboxHarness, {
  fresh: Effect.gen(function* () {
    const url = yield* TestDatabase.fresh
    const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 2, maxOverflow: 8 }))
    yield* PgMigrations.run.pipe(Effect.provide(context))
    const withEntries = yield* PgEventStore.make({ registry, outbox: true }).pipe(Effect.provide(context))
    const without = yield* PgEventStore.make({ registry }).pipe(Effect.provide(context))
    const outbox = yield* PgOutbox.make({ heartbeat: "1 second" }).pipe(Effect.provide(context))
    const client = yield* PgClient.PgClient.pipe(Effect.provide(context))
    return {
      store: ({ outbox: enabled }: { readonly outbox: boolean }) => (enabled ? withEntries : without),
      outbox,
      transaction: Option.some(<A, E>(effect: Effect.Effect<A, E>) =>
        client.withTransaction(effect).pipe(Effect.catchTag("SqlError", (e) => Effect.fail(storeError(e))))
      )
    }
  }).pipe(Effect.orDie)
})

suite("postgresql", PgHarness)

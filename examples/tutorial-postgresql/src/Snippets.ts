/**
 * Code the README shows that the tutorial does not run: kept here so that `npm run
 * check` type-checks it, and test/readme.test.ts holds the README to it.
 */
import { AggregateRepository } from "@eventfold/core"
import { PgPool } from "@eventfold/pg"
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import { Order, shipOrder } from "./Order.js"

/** "How `append` works": a command retried on a conflict, from a fresh load each time. */
export const shipWithRetry = (id: string, trackingNumber: string) =>
  Effect.gen(function* () {
    const repo = yield* AggregateRepository.make(Order)
    return yield* repo
      .load(id)
      .pipe(
        shipOrder({ trackingNumber }),
        Effect.flatMap(repo.save),
        Effect.retry({ while: (e) => e._tag === "ConcurrencyError", times: 3 })
      )
  })

/** "Configuration": a pool whose options come from variables the application names. */
export const OrdersPool = PgPool.layerConfig({
  url: Config.redacted("ORDERS_DATABASE_URL"),
  schema: Config.succeed("orders"),
  poolSize: Config.integer("ORDERS_POOL_SIZE").pipe(Config.withDefault(10))
})

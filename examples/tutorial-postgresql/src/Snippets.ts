/**
 * Code the README shows that the tutorial does not run: kept here so that `npm run
 * check` type-checks it, and test/readme.test.ts holds the README to it.
 */
import { AggregateRepository } from "@eventfold/core"
import { PgMonitor, PgPool } from "@eventfold/pg"
import * as Config from "effect/Config"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
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

/** "The eventfold command": the monitor in code, as a readiness check. */
export const readiness = Effect.gen(function* () {
  const monitor = yield* PgMonitor.PgMonitor
  const { pending } = yield* monitor.migrations
  const outbox = yield* monitor.outbox
  // Ready: the schema is current and the relay keeps up (nothing failed, nothing pending for a minute).
  const stalled = Option.exists(outbox.oldestPendingAge, Duration.greaterThan("1 minute"))
  return { ready: pending.length === 0 && outbox.failed === 0 && !stalled, pending, outbox }
})

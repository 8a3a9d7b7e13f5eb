/**
 * W7, Eventfold's side: `EventStore.subscribe()` from the start of the log, on a
 * store wired as an application wires it (PgPool.layer + PgEventStore.layerPrepared). The
 * writers and the bookkeeping are the shared harness of `subscriber.ts`.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as EventStore from "@eventfold/core/EventStore"
import * as PgEventStore from "@eventfold/pg/PgEventStore"
import * as PgPool from "@eventfold/pg/PgPool"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import * as Stream from "effect/Stream"
import { registry } from "./eventfold.js"
import type { Runner } from "./protocol.js"
import { measure } from "./subscriber.js"

/** Pages are read while the horizon is refreshed: two connections (LISTEN has one of its own). */
const CONNECTIONS = 2

export const run: Runner = (context) => {
  const live = PgEventStore.layerPrepared({ registry }).pipe(
    Layer.provideMerge(PgPool.layer({ url: Redacted.make(context.url), poolSize: CONNECTIONS, maxOverflow: 0 }))
  )
  const program = Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* Effect.all(
      Array.from({ length: CONNECTIONS }, () => sql`SELECT 1`),
      { concurrency: "unbounded", discard: true }
    )
    const store = yield* EventStore.EventStore
    const runPromise = Runtime.runPromise(yield* Effect.runtime<never>())
    return yield* Effect.promise(() =>
      measure(context, {
        // It never skips, so it is done once it has delivered as many events as were written.
        caughtUp: (tally, written) => tally.distinct >= written.events,
        start: (deliver, fail) =>
          runPromise(
            store.subscribe().pipe(
              Stream.runForEachChunk((chunk) =>
                Effect.sync(() => {
                  const at = performance.now()
                  for (const recorded of chunk) {
                    deliver(recorded.aggregateId, recorded.version, Number(recorded.globalPosition), at)
                  }
                })
              ),
              Effect.catchAllCause((cause) => Effect.sync(() => fail(Cause.squash(cause)))),
              Effect.forkDaemon,
              Effect.map((fiber) => ({ stop: () => runPromise(Fiber.interrupt(fiber)).then(() => undefined) }))
            )
          )
      })
    )
  })
  return Effect.runPromise(Effect.provide(program, live))
}

/**
 * W8, Eventfold's side: OutboxRelay over PgOutbox and NatsPublisher, wired as an
 * application wires them (PgPool.layer underneath), without its background fiber
 * (`start: false`): the harness of `outbox.ts` drains it batch by batch with
 * `runOnce`, which is what `drain` does with one worker, so that each batch is timed.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as OutboxRelay from "@eventfold/core/OutboxRelay"
import * as Publisher from "@eventfold/core/Publisher"
import * as NatsPublisher from "@eventfold/nats/NatsPublisher"
import * as PgOutbox from "@eventfold/pg/PgOutbox"
import * as PgPool from "@eventfold/pg/PgPool"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import { type Drained, measure, type Relay, type Target } from "./outbox.js"
import type { Runner } from "./protocol.js"
import type { Latencies } from "./stats.js"

const open = (target: Target) =>
  Effect.gen(function* () {
    const live = OutboxRelay.layer({ start: false, batchSize: target.batchSize }).pipe(
      Layer.provideMerge(
        Layer.merge(
          PgOutbox.layer(),
          // The harness made the stream; the publisher only checks that it captures the subjects.
          NatsPublisher.layer({
            servers: target.servers,
            subjectPrefix: target.subjectPrefix,
            stream: target.stream,
            createStream: false
          })
        )
      ),
      // Claim and settle take turns: one connection.
      Layer.provideMerge(PgPool.layer({ url: Redacted.make(target.url), poolSize: 1, maxOverflow: 0 }))
    )
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(live, scope).pipe(
      Effect.tapErrorCause(() => Scope.close(scope, Exit.void))
    )
    const relay = Context.get(context, OutboxRelay.OutboxRelay)
    // The publisher connects in the background: batches are timed from when it is ready.
    yield* Publisher.awaitReady(Context.get(context, Publisher.Publisher))
    yield* Context.get(context, SqlClient.SqlClient)`SELECT 1`

    const drain = (latencies: Latencies) =>
      Effect.iterate(
        { published: 0, duplicates: 0, done: false },
        {
          while: (state) => !state.done,
          body: (state) =>
            Effect.suspend(() => {
              const start = performance.now()
              return Effect.map(relay.runOnce, (report) => {
                if (report.claimed === 0) return { ...state, done: true }
                latencies.time(start)
                return {
                  published: state.published + report.published,
                  duplicates: state.duplicates + report.duplicates,
                  done: false
                }
              })
            })
        }
      ).pipe(Effect.map(({ published, duplicates }): Drained => ({ published, duplicates })))

    return {
      drain: (latencies) => Effect.runPromise(drain(latencies)),
      close: () => Effect.runPromise(Scope.close(scope, Exit.void))
    } satisfies Relay
  })

export const run: Runner = (context) => measure(context, (target) => Effect.runPromise(open(target)))

import * as SqlClient from "@effect/sql/SqlClient"
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, ExpectedVersion } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgOutbox, PgPool } from "@eventfold/pg"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as TestDatabase from "../../../test/support/TestDatabase.js"

const Noted = Event.make("Noted", { text: Schema.String })
const registry = EventRegistry.make(Noted)

describe("PgOutbox", () => {
  it.scopedLive("wakeups survive a lost LISTEN connection: the heartbeat notices, listening starts anew", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 2 }))
      yield* PgMigrations.run.pipe(Effect.provide(context))
      const store = yield* PgEventStore.make({ registry, outbox: true }).pipe(Effect.provide(context))
      const outbox = yield* PgOutbox.make({ heartbeat: "200 millis" }).pipe(Effect.provide(context))
      const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))

      let wakes = 0
      const errors: Array<string> = []
      // As the relay listens: on failure, listen again.
      yield* outbox.wakeups.pipe(
        Stream.runForEach(() => Effect.sync(() => wakes++)),
        Effect.tapError((error) => Effect.sync(() => errors.push(error._tag))),
        Effect.retry(Schedule.spaced("50 millis")),
        Effect.forkScoped
      )
      const append = Effect.suspend(() =>
        store.append(
          { aggregateId: crypto.randomUUID(), aggregateType: "Note" },
          [{ event: Noted.make({ text: "hi" }) }],
          {
            expectedVersion: ExpectedVersion.noStream
          }
        )
      )
      const woken = (what: string) =>
        Effect.gen(function* () {
          const before = wakes
          yield* append
          yield* Effect.sync(() => wakes > before).pipe(
            Effect.repeat({ until: (ok) => ok, schedule: Schedule.spaced("20 millis") }),
            Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => new Error(`no wakeup: ${what}`) })
          )
        })

      yield* Effect.sleep("300 millis")
      yield* woken("before the connection is lost")
      assert.strictEqual(errors.length, 0, "heartbeats keep a live connection from being taken for lost")

      const killed = yield* sql<{ pid: number }>`
        SELECT pg_terminate_backend(pid) AS killed, pid FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN%'`
      assert.strictEqual(killed.length, 1)
      yield* Effect.sleep("1 second")
      assert.isAbove(errors.length, 0, "the lost connection was noticed")
      yield* woken("after listening anew")
    }).pipe(Effect.provide(Logger.minimumLogLevel(LogLevel.Error)))
  )

  it.scopedLive("stats of an empty outbox", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 2 }))
      yield* PgMigrations.run.pipe(Effect.provide(context))
      const outbox = yield* PgOutbox.make().pipe(Effect.provide(context))
      const empty = yield* outbox.stats
      assert.deepInclude(empty, { pending: 0, published: 0, failed: 0, held: 0, inFlight: 0 })
      assert.isTrue(Option.isNone(empty.oldestPendingAge))
    })
  )
})

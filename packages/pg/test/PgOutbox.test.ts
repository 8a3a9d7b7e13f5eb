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
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import pg from "pg"
import { eventually } from "../../../test/support/eventually.js"
import * as TestDatabase from "../../../test/support/TestDatabase.js"

const Noted = Event.make("Noted", { text: Schema.String })
const registry = EventRegistry.make(Noted)

/** A bystander session that counts the outbox's heartbeats (notifications on its channel), for the scope. */
const heartbeatCounter = (url: string) =>
  Effect.gen(function* () {
    const received = yield* Ref.make(0)
    yield* Effect.acquireRelease(
      Effect.promise(async () => {
        const client = new pg.Client({ connectionString: url, application_name: "eventfold-test-bystander" })
        await client.connect()
        client.on("notification", (message) => {
          if (message.payload?.startsWith("heartbeat:") === true) Effect.runSync(Ref.update(received, (n) => n + 1))
        })
        await client.query(`LISTEN ${PgOutbox.channel}`)
        return client
      }),
      (client) => Effect.promise(() => client.end())
    )
    return received
  })

describe("PgOutbox", () => {
  it.scopedLive("wakeups survive a lost LISTEN connection: the loss is noticed, listening starts anew", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      // Its own application name: the LISTEN session it kills is found by it, in its own database.
      const applicationName = `eventfold-test-${crypto.randomUUID().slice(0, 8)}`
      const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 2, applicationName }))
      yield* PgMigrations.run.pipe(Effect.provide(context))
      const store = yield* PgEventStore.make({ registry, outbox: true }).pipe(Effect.provide(context))
      const outbox = yield* PgOutbox.make({ heartbeat: "200 millis" }).pipe(Effect.provide(context))
      const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
      const heartbeats = yield* heartbeatCounter(url)

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
          yield* eventually(
            Effect.sync(() => wakes),
            (n) => n > before,
            { every: "20 millis", timeout: "10 seconds", what: `a wakeup ${what}` }
          )
        })
      // The outbox's LISTEN session, once its LISTEN has run.
      const listening = sql<{ pid: number }>`
        SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = ${`${applicationName} (listen)`}
           AND state = 'idle' AND query LIKE 'LISTEN%'`

      const [first] = yield* eventually(listening, (rows) => rows.length === 1, { what: "the LISTEN session" })
      yield* woken("before the connection is lost")
      // Real time: a live connection must outlast the silence that counts as lost (3 heartbeats).
      const beats = yield* Ref.get(heartbeats)
      yield* eventually(Ref.get(heartbeats), (n) => n >= beats + 4, { what: "four more heartbeats" })
      assert.strictEqual(errors.length, 0, "heartbeats keep a live connection from being taken for lost")

      const killed = yield* sql<{ pid: number }>`
        SELECT pg_terminate_backend(pid) AS killed, pid FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = ${`${applicationName} (listen)`}
           AND query LIKE 'LISTEN%'`
      assert.deepStrictEqual(
        killed.map((k) => k.pid),
        [first!.pid]
      )
      // The LISTEN connection fails as soon as it is lost (a connection that hangs without failing
      // would be noticed by the heartbeat's silence).
      yield* eventually(
        Effect.sync(() => errors.length),
        (n) => n > 0,
        { what: "the lost connection to be noticed" }
      )
      yield* eventually(listening, (rows) => rows.length === 1 && rows[0]!.pid !== first!.pid, {
        what: "a new LISTEN session"
      })
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

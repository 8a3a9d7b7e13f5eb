/**
 * The SQL echo (the spec's `echo`): every statement's text and duration at Debug
 * through Effect's logger, never a value; on the prepared path (once per statement, in
 * the caller's fiber) and on every statement through @effect/sql.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, ExpectedVersion } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgPool, PgTransaction } from "@eventfold/pg"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as TestDatabase from "../../../test/support/TestDatabase.js"

const Noted = Event.make("Noted", { text: Schema.String })
const registry = EventRegistry.make(Noted)

interface Line {
  readonly level: LogLevel.LogLevel
  readonly message: string
  /** The line's annotations: the caller's, when logged in the caller's fiber. */
  readonly annotations: ReadonlyMap<string, unknown>
}

/** A logger that keeps every line, Debug included, for the effect and what it builds. */
const capturing = (lines: Array<Line>) =>
  Layer.merge(
    Logger.replace(
      Logger.defaultLogger,
      Logger.make(({ annotations, logLevel, message }) => {
        const parts = Array.isArray(message) ? message : [message]
        lines.push({ level: logLevel, message: parts.map(String).join(" "), annotations: new Map(annotations) })
      })
    ),
    Logger.minimumLogLevel(LogLevel.Debug)
  )

const echoes = (lines: ReadonlyArray<Line>) => lines.filter((line) => line.message.startsWith("SQL ("))
const DURATION = /^SQL \(\d+\.\d{3} ms(, failed)?\) /

describe("PgPool echo", () => {
  it.scopedLive("logs each statement's text and duration at Debug, never its values, on every path", () =>
    Effect.gen(function* () {
      const lines: Array<Line> = []
      const url = yield* TestDatabase.fresh
      const secret = `secret-${crypto.randomUUID()}`
      const stream = { aggregateId: crypto.randomUUID(), aggregateType: "Note" }
      yield* Effect.gen(function* () {
        yield* PgMigrations.run
        const prepared = yield* PgEventStore.makePrepared({ registry })
        const sql = yield* SqlClient.SqlClient
        // The prepared path: one statement, echoed once, with the caller's annotations.
        const before = echoes(lines).length
        yield* prepared
          .append(stream, [{ event: Noted.make({ text: secret }) }], { expectedVersion: ExpectedVersion.noStream })
          .pipe(Effect.annotateLogs("caller", "appending"))
        const append = echoes(lines).slice(before)
        assert.strictEqual(append.length, 1, `one echo for one lean append: ${append.map((l) => l.message)}`)
        assert.match(append[0]!.message, /INSERT INTO events/)
        assert.strictEqual(append[0]!.annotations.get("caller"), "appending", "logged in the caller's fiber")
        yield* Stream.runDrain(prepared.readStream(stream))
        // @effect/sql: the application's own statement, a transaction's, a failure and a cursor.
        yield* sql`SELECT ${secret}::text AS echoed_parameter`
        yield* PgTransaction.withTransaction(
          prepared.append(stream, [{ event: Noted.make({ text: secret }) }], {
            expectedVersion: ExpectedVersion.exact(1)
          })
        )
        yield* Effect.flip(sql`SELECT 1 / ${0}::int AS division_by_zero`)
        yield* Stream.runDrain(sql`SELECT generate_series(1, 3) AS streamed_rows`.stream)
      }).pipe(
        Effect.provide(PgPool.layer({ url: Redacted.make(url), poolSize: 2, echo: true })),
        Effect.provide(capturing(lines))
      )
      const echoed = echoes(lines)
      for (const line of echoed) {
        assert.strictEqual(line.level, LogLevel.Debug)
        assert.match(line.message, DURATION)
        assert.notInclude(line.message, secret)
        assert.notInclude(line.message, stream.aggregateId)
      }
      const text = echoed.map((line) => line.message)
      const has = (pattern: RegExp) =>
        assert.isTrue(
          text.some((t) => pattern.test(t)),
          `no echo of ${pattern}`
        )
      has(/CREATE TABLE/) // the migrations, through @effect/sql
      has(/FROM events/) // the lean read
      has(/SELECT \$1::text AS echoed_parameter/)
      has(/^SQL \(\d+\.\d{3} ms\) BEGIN/)
      has(/COMMIT/)
      has(/^SQL \(\d+\.\d{3} ms, failed\) SELECT 1 \/ \$1::int AS division_by_zero/)
      has(/streamed_rows/)
    })
  )

  it.scopedLive("logs nothing when off", () =>
    Effect.gen(function* () {
      const lines: Array<Line> = []
      const url = yield* TestDatabase.fresh
      yield* Effect.gen(function* () {
        yield* PgMigrations.run
        const prepared = yield* PgEventStore.makePrepared({ registry })
        yield* prepared.append(
          { aggregateId: crypto.randomUUID(), aggregateType: "Note" },
          [{ event: Noted.make({ text: "x" }) }],
          { expectedVersion: ExpectedVersion.noStream }
        )
        yield* Effect.logDebug("the logger does take Debug lines")
      }).pipe(Effect.provide(PgPool.layer({ url: Redacted.make(url) })), Effect.provide(capturing(lines)))
      assert.isTrue(lines.some((line) => line.message === "the logger does take Debug lines"))
      assert.deepStrictEqual(echoes(lines), [])
    })
  )

  it.effect("is read from DATABASE_ECHO", () =>
    Effect.gen(function* () {
      const read = (value: string | undefined) =>
        PgPool.config().pipe(
          Effect.withConfigProvider(
            ConfigProvider.fromMap(new Map(value === undefined ? [] : [["DATABASE_ECHO", value]]))
          ),
          Effect.map((options) => options.echo)
        )
      assert.isTrue(yield* read("true"))
      assert.isFalse(yield* read("false"))
      assert.isUndefined(yield* read(undefined))
    })
  )
})

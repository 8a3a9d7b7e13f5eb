/**
 * Where a pool's events go, and what it prints about it (issue 12):
 *
 * - with no server configured, `embedded` starts an embedded PostgreSQL and says so in
 *   one log line naming its data directory; without `embedded` the pool fails with a
 *   typed error instead of connecting with pg's defaults (localhost, the OS user);
 * - a password in the URL appears in no error, no log line and no span attribute, for
 *   a server that refuses the connection, a URL that does not parse, and a real
 *   password-authenticating server given the wrong password.
 */
import * as Path from "node:path"
import * as Util from "node:util"
import { assert, describe, it } from "@effect/vitest"
import { PgPool } from "@eventfold/pg"
import * as EmbeddedPostgres from "@eventfold/pg-embedded/EmbeddedPostgres"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import { capturingLogs, withEnvironment } from "../../../test/support/environment.js"
import { recordingSpans } from "../../../test/support/spans.js"
import * as TempDir from "../../../test/support/tempDir.js"
import * as Driver from "../src/internal/pgDriver.js"

const tempDir = TempDir.tempDir("pool-env")

const once = { connectRetry: Schedule.recurs(1) }

describe("PgPool: where events go", () => {
  it.effect("with no server configured and no embedded fallback, fails with ServerNotConfiguredError", () =>
    Effect.gen(function* () {
      // PGPORT and PGUSER alone name no server: pg would connect to localhost with them.
      const fromEnvironment = yield* Effect.flip(
        Effect.scoped(Layer.build(PgPool.layerFromEnv(once))).pipe(
          withEnvironment({ PGPORT: "5432", PGUSER: "postgres" })
        )
      )
      assert.strictEqual(fromEnvironment._tag, "ServerNotConfiguredError")
      assert.include(fromEnvironment.message, "DATABASE_URL")
      const inCode = yield* Effect.flip(Effect.scoped(Layer.build(PgPool.layer({ database: "app", ...once }))))
      assert.strictEqual(inCode._tag, "ServerNotConfiguredError")
    })
  )
})

describe("PgPool: no secret is ever printed", () => {
  const secret = "S3cret-Pw_41"

  /** Builds a pool from `DATABASE_URL`, expecting it to fail; every text it produced, by where it went. */
  const failingPool = (url: string) =>
    Effect.gen(function* () {
      const [[exit, spans], lines] = yield* capturingLogs(
        recordingSpans(Effect.exit(Effect.scoped(Layer.build(PgPool.layerFromEnv(once)))))
      ).pipe(withEnvironment({ DATABASE_URL: url }))
      assert.isTrue(Exit.isFailure(exit), "the pool should not connect")
      const error = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
      return {
        error: error as Error,
        texts: {
          message: (error as Error).message,
          string: String(error),
          pretty: Exit.isFailure(exit) ? Cause.pretty(exit.cause) : "",
          inspect: Util.inspect(error, { depth: null }),
          json: JSON.stringify(error),
          logs: lines.map((line) => line.text).join("\n"),
          spans: Util.inspect(spans, { depth: null })
        }
      }
    })

  const assertNoSecret = (texts: Record<string, string>) => {
    for (const [where, text] of Object.entries(texts)) {
      assert.notInclude(text, secret, `the password appears in ${where}`)
    }
  }

  it.scopedLive("not for a server that refuses the connection, nor for a URL that does not parse", () =>
    Effect.gen(function* () {
      // Port 1: nothing listens there.
      const refused = yield* failingPool(`postgres://app:${secret}@127.0.0.1:1/events`)
      assert.include(refused.error.message, "127.0.0.1:1")
      assertNoSecret(refused.texts)
      assert.include(refused.texts.logs, "cannot be reached yet")
      // Refused before anything connects, as a ConfigError that names the variable.
      for (const url of [`postgres://app:${secret}@[::1/events`, `app:${secret}@db.internal/events`]) {
        const unparseable = yield* failingPool(url)
        assert.strictEqual((unparseable.error as { _op?: string })._op, "InvalidData")
        assert.include(unparseable.error.message, "PostgreSQL URL")
        assert.include(unparseable.texts.string, "DATABASE_URL")
        assertNoSecret(unparseable.texts)
      }
    })
  )

  it.scopedLive("not for a password-authenticating server given the wrong password", () =>
    Effect.gen(function* () {
      // The embedded server authenticates with scram-sha-256 (its password is "postgres").
      const server = yield* EmbeddedPostgres.start({
        dataDir: Path.join(yield* tempDir, "data"),
        persistent: false,
        durability: "relaxed"
      })
      const wrong = yield* failingPool(`postgres://postgres:${secret}@${server.host}:${server.port}/postgres`)
      assert.include(wrong.error.message, "password authentication failed")
      assertNoSecret(wrong.texts)
      // The right password connects: the failure above was the password's.
      const right = yield* Effect.exit(Effect.scoped(Layer.build(PgPool.layer({ url: server.url, ...once }))))
      assert.isTrue(Exit.isSuccess(right))
    })
  )

  it("a driver message that quotes a URL has its password redacted at the driver boundary", () => {
    const error = Driver.classify(new Error(`could not reach postgres://app:${secret}@db.example:5432/events`), true)
    assert.strictEqual(
      error.message,
      "cannot get a connection: could not reach postgres://app:***@db.example:5432/events"
    )
    // Nor does its cause, however it is printed.
    for (const text of [
      String(error.cause),
      Util.inspect(error, { depth: 10 }),
      Cause.pretty(Cause.fail(error)),
      JSON.stringify(error)
    ]) {
      assert.notInclude(text, secret)
    }
  })
})

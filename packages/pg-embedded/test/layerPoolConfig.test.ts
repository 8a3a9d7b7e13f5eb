/**
 * `EmbeddedPostgres.layerPoolConfig`, the zero-setup pool of `npm start` and test runs:
 *
 * - with no server configured it starts an embedded PostgreSQL, says so in one log line
 *   naming its data directory, and the pool's statements run there;
 * - with `DATABASE_URL` set it uses that server and starts nothing.
 */
import * as Fs from "node:fs/promises"
import * as Path from "node:path"
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, describe, it } from "@effect/vitest"
import * as PgPool from "@eventfold/pg/PgPool"
import * as EmbeddedPostgres from "@eventfold/pg-embedded/EmbeddedPostgres"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import { capturingLogs, withEnvironment } from "../../../test/support/environment.js"
import * as TempDir from "../../../test/support/tempDir.js"

const tempDir = TempDir.tempDir("pool-fallback")

const once = PgPool.config({ connectRetry: Schedule.recurs(1) })

/** The data directory of the server the layer's pool is connected to, resolved. */
const dataDirectoryOf = <E>(pool: Layer.Layer<SqlClient.SqlClient, E>) =>
  Effect.gen(function* () {
    const context = yield* Layer.build(pool)
    const sql = yield* Effect.provide(SqlClient.SqlClient, context)
    const rows = yield* sql<{ readonly dir: string }>`SELECT current_setting('data_directory') AS dir`
    return yield* Effect.promise(() => Fs.realpath(rows[0]!.dir))
  })

const exists = (path: string) =>
  Effect.promise(() =>
    Fs.stat(path).then(
      () => true,
      () => false
    )
  )

describe("EmbeddedPostgres.layerPoolConfig", () => {
  it.scopedLive("with no server configured, starts an embedded server and says so, naming its data directory", () =>
    Effect.gen(function* () {
      const dataDir = Path.join(yield* tempDir, "data")
      const [dir, lines] = yield* capturingLogs(
        dataDirectoryOf(
          EmbeddedPostgres.layerPoolConfig({ dataDir, persistent: false, durability: "relaxed" }, once)
        ).pipe(withEnvironment({}))
      )
      assert.strictEqual(dir, yield* Effect.promise(() => Fs.realpath(dataDir)))
      const said = lines.filter((line) => line.text.includes("embedded PostgreSQL"))
      assert.strictEqual(said.length, 1, lines.map((line) => line.text).join("\n"))
      assert.strictEqual(said[0]!.level, "INFO")
      assert.include(said[0]!.text, dataDir)
    })
  )

  it.scopedLive("with DATABASE_URL set, uses that server and starts none", () =>
    Effect.gen(function* () {
      const root = yield* tempDir
      // The configured server: one started here, as a machine's own server would be.
      const configured = yield* EmbeddedPostgres.start({
        dataDir: Path.join(root, "configured"),
        persistent: false,
        durability: "relaxed"
      })
      const fallbackDir = Path.join(root, "fallback")
      const [dir, lines] = yield* capturingLogs(
        dataDirectoryOf(
          EmbeddedPostgres.layerPoolConfig({ dataDir: fallbackDir, persistent: false, durability: "relaxed" }, once)
        ).pipe(withEnvironment({ DATABASE_URL: Redacted.value(configured.url) }))
      )
      assert.strictEqual(dir, yield* Effect.promise(() => Fs.realpath(configured.dataDir)))
      assert.isFalse(yield* exists(fallbackDir), "no embedded server may be started")
      assert.deepStrictEqual(
        lines.filter((line) => line.text.includes("embedded PostgreSQL")),
        [],
        "nothing is said about an embedded server"
      )
    })
  )
})

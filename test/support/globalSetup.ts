/**
 * vitest `globalSetup` for the projects that need PostgreSQL: one server for
 * the whole run, its admin URL given to tests as `inject("databaseUrl")`.
 *
 * - `DATABASE_URL` set: that server is used (checked once, up front).
 * - otherwise: an embedded PostgreSQL in a throwaway directory under the OS
 *   temp dir, on a free port, with relaxed durability; stopped and deleted
 *   when the run ends.
 *
 * vitest runs a project's globalSetup once per project, in the main process
 * and in a separate module instance per project. The server is therefore kept
 * on `globalThis` with a count of the projects using it: the first project
 * starts it, the others reuse it, the last teardown stops it.
 */

import * as Fs from "node:fs/promises"
import * as Os from "node:os"
import * as Path from "node:path"
import { redactCredentials } from "@eventfold/core/Settings"
import * as EmbeddedPostgres from "@eventfold/pg-embedded/EmbeddedPostgres"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import pg from "pg"
import type { TestProject } from "vitest/node"
import * as internal from "../../packages/pg-embedded/src/internal/embeddedPostgres.js"

declare module "vitest" {
  export interface ProvidedContext {
    /** Admin URL of the run's PostgreSQL server (database `postgres`); see `TestDatabase.fresh`. */
    databaseUrl: string
  }
}

/** Prefix of the throwaway data directories, so that leftovers of killed runs can be found. */
const tmpPrefix = "eventfold-test-pg-"

interface Shared {
  users: number
  readonly url: Promise<string>
  readonly close: () => Promise<void>
}

const sharedKey = Symbol.for("@eventfold/test/globalSetup/postgres")
const registry = globalThis as { [sharedKey]?: Shared }

const checkReachable = async (url: string): Promise<void> => {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 })
  try {
    await client.connect()
    await client.query("select 1")
  } catch (cause) {
    throw new Error(`DATABASE_URL=${redactCredentials(url)} is not reachable; unset it to use an embedded PostgreSQL`, {
      cause
    })
  } finally {
    await client.end().catch(() => undefined)
  }
}

/**
 * Deletes the throwaway directories of earlier runs that were killed before
 * their teardown (vitest exits on SIGINT/SIGTERM without running it), stopping
 * a server still running there. Directories of live runs are left alone.
 */
const sweepLeftovers = Effect.gen(function* () {
  const tmp = Os.tmpdir()
  const entries = yield* Effect.promise(() => Fs.readdir(tmp).catch(() => []))
  for (const entry of entries.filter((name) => name.startsWith(tmpPrefix))) {
    const dir = Path.join(tmp, entry)
    const owner = yield* internal.readOwner(dir)
    if (Option.isSome(owner) && (yield* internal.isAlive(owner.value))) continue
    if (Option.isNone(owner)) {
      // No owner yet: possibly a run that is starting right now. Only old ones are leftovers.
      const stat = yield* Effect.promise(() => Fs.stat(dir).catch(() => undefined))
      if (stat === undefined || Date.now() - stat.mtimeMs < 10 * 60_000) continue
    }
    yield* internal.reclaim(dir).pipe(
      Effect.zipRight(internal.removeDirectory(dir)),
      Effect.catchAll((error) => Effect.logWarning(`Could not clean up ${dir}`, error))
    )
  }
})

const startEmbedded = async (): Promise<Omit<Shared, "users">> => {
  await Effect.runPromise(sweepLeftovers)
  // mkdtemp makes a 0700 directory: usable as the data directory itself (initdb hands it to the
  // server's user), not as a parent of it when running as root.
  const dataDir = await Fs.mkdtemp(Path.join(Os.tmpdir(), tmpPrefix))
  const scope = Effect.runSync(Scope.make())
  const verbose = process.env.EVENTFOLD_PG_LOG !== undefined && process.env.EVENTFOLD_PG_LOG !== ""
  const server = await Effect.runPromise(
    EmbeddedPostgres.start({
      dataDir,
      persistent: false,
      durability: "relaxed",
      ...(verbose ? { onLog: (line: string) => process.stderr.write(`[postgres] ${line}\n`) } : {})
    }).pipe(Scope.extend(scope))
  )
  console.log(`PostgreSQL for tests: embedded, 127.0.0.1:${server.port}, data in ${server.dataDir}`)
  return {
    url: Promise.resolve(Redacted.value(server.url)),
    close: () => Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

const acquire = (): Shared => {
  const fromEnv = process.env.DATABASE_URL
  if (fromEnv !== undefined && fromEnv !== "") {
    return {
      users: 0,
      url: checkReachable(fromEnv).then(() => {
        console.log(`PostgreSQL for tests: DATABASE_URL=${redactCredentials(fromEnv)}`)
        return fromEnv
      }),
      close: () => Promise.resolve()
    }
  }
  const started = startEmbedded()
  return {
    users: 0,
    url: started.then((server) => server.url),
    close: () => started.then((server) => server.close())
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const shared = registry[sharedKey] ?? acquire()
  registry[sharedKey] = shared
  shared.users += 1
  try {
    project.provide("databaseUrl", await shared.url)
  } catch (error) {
    shared.users -= 1
    if (shared.users === 0) delete registry[sharedKey]
    throw error
  }
  return async () => {
    shared.users -= 1
    if (shared.users === 0) {
      delete registry[sharedKey]
      await shared.close()
    }
  }
}

/**
 * A directory under the OS temp dir, deleted when the scope closes. mkdtemp makes it
 * 0700; it is opened up (0755) because, run as root, a PostgreSQL server runs as the
 * `postgres` OS user, which must traverse it to reach a data directory inside.
 */
import * as Fs from "node:fs/promises"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"

export const tempDir = (prefix: string): Effect.Effect<string, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const dir = await Fs.mkdtemp(Path.join(Os.tmpdir(), `eventfold-${prefix}-`))
      await Fs.chmod(dir, 0o755)
      return dir
    }),
    (dir) => Effect.promise(() => Fs.rm(dir, { recursive: true, force: true }))
  )

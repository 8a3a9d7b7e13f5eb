/**
 * `npm run bench [-- --quick] [--repeat N] [--workloads W1,W4] [--sides raw,eventfold] [--profile]`
 *
 * For each workload, the raw-SQL baseline and Eventfold run alternately
 * (raw first on repeats 1, 3, ..., Eventfold first on 2, 4, ...) against the same
 * server, each in a fresh database migrated by PgMigrations.run and in a node
 * process of its own. Prints a table and writes bench/results/<time>.json.
 * Exits non-zero on errors and wrong counts only, never on speed.
 */
import { type ChildProcess, fork } from "node:child_process"
import * as Fs from "node:fs/promises"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as PgMigrations from "@eventfold/pg/PgMigrations"
import * as PgPool from "@eventfold/pg/PgPool"
import * as EmbeddedPostgres from "@eventfold/pg-embedded/EmbeddedPostgres"
import * as Console from "effect/Console"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import pg from "pg"
import type { ChildMessage, Params, ParentMessage, RunResult, Scale, Seed, Side } from "./protocol.js"
import { SIDES } from "./protocol.js"
import { median } from "./stats.js"
import { type Workload, workloads } from "./workloads.js"

class BenchError extends Data.TaggedError("BenchError")<{ readonly message: string; readonly cause?: unknown }> {}

const benchDir = Path.resolve(fileURLToPath(import.meta.url), "../..")
const childPath = Path.join(benchDir, "src/child.ts")

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

interface Options {
  readonly scale: Scale
  readonly repeat: number
  readonly workloads: ReadonlyArray<Workload>
  readonly sides: ReadonlyArray<Side>
  readonly profile: boolean
}

const usage = `Usage: npm run bench -- [--quick] [--repeat N] [--workloads W1,W4] [--sides raw,eventfold] [--profile]
  --quick        a smoke run of a few seconds (small sizes; figures are not meaningful)
  --repeat N     run every workload N times per side and report medians (default 1)
  --workloads    a subset, e.g. W1,W4 (default: all available)
  --sides        a subset of raw,eventfold (default both)
  --profile      write a V8 CPU profile of each run to bench/results/profiles/ (open in Chrome DevTools)
Uses DATABASE_URL when set, otherwise an embedded PostgreSQL (default durability).`

const parseArgs = (argv: ReadonlyArray<string>): Effect.Effect<Options, BenchError> =>
  Effect.suspend(() => {
    let scale: Scale = "full"
    let repeat = 1
    let selected: ReadonlyArray<Workload> = workloads
    let sides: ReadonlyArray<Side> = SIDES
    let profile = false
    const fail = (message: string) => Effect.fail(new BenchError({ message: `${message}\n${usage}` }))
    for (let i = 0; i < argv.length; i++) {
      const arg = argv[i]!
      const [flag, inline] = arg.includes("=") ? (arg.split("=", 2) as [string, string]) : [arg, undefined]
      const value = () => inline ?? argv[++i]
      switch (flag) {
        case "--quick":
          scale = "quick"
          break
        case "--repeat": {
          const n = Number(value())
          if (!Number.isInteger(n) || n < 1) return fail("--repeat needs a positive integer")
          repeat = n
          break
        }
        case "--workloads": {
          const ids = (value() ?? "").split(",").map((s) => s.trim().toUpperCase())
          const unknown = ids.filter((id) => !workloads.some((w) => w.id === id))
          if (unknown.length > 0) return fail(`unknown workload(s): ${unknown.join(", ")}`)
          selected = workloads.filter((w) => ids.includes(w.id))
          break
        }
        case "--sides": {
          const names = (value() ?? "").split(",").map((s) => s.trim().toLowerCase())
          const unknown = names.filter((n) => !SIDES.includes(n as Side))
          if (unknown.length > 0) return fail(`unknown side(s): ${unknown.join(", ")}`)
          sides = SIDES.filter((s) => names.includes(s))
          break
        }
        case "--profile":
          profile = true
          break
        case "--help":
        case "-h":
          return Effect.zipRight(
            Console.log(usage),
            Effect.sync(() => process.exit(0))
          )
        default:
          return fail(`unknown argument: ${arg}`)
      }
    }
    return Effect.succeed({ scale, repeat, workloads: selected, sides, profile })
  })

// ---------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------

const attempt = <A>(message: string, f: () => Promise<A>) =>
  Effect.tryPromise({ try: f, catch: (cause) => new BenchError({ message: `${message}: ${String(cause)}`, cause }) })

const withUrlDatabase = (url: string, database: string) => {
  const parsed = new URL(url)
  parsed.pathname = `/${database}`
  return parsed.toString()
}

/** A pg client on the server's maintenance database, for CREATE/DROP DATABASE. */
const adminClient = (url: string) =>
  Effect.acquireRelease(
    attempt("cannot connect to PostgreSQL", async () => {
      const client = new pg.Client({ connectionString: url, application_name: "eventfold-bench" })
      await client.connect()
      return client
    }),
    (client) => Effect.promise(() => client.end().catch(() => undefined))
  )

let databases = 0

/** A fresh database with the Eventfold schema, dropped (WITH FORCE) when the scope closes. */
const freshDatabase = (admin: pg.Client, serverUrl: string) =>
  Effect.gen(function* () {
    const name = `eventfold_bench_${process.pid}_${++databases}`
    yield* Effect.acquireRelease(
      attempt(`CREATE DATABASE ${name}`, () => admin.query(`CREATE DATABASE ${name}`)),
      () => Effect.promise(() => admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => undefined))
    )
    const url = withUrlDatabase(serverUrl, name)
    yield* PgMigrations.run.pipe(
      Effect.provide(PgPool.layer({ url: Redacted.make(url), poolSize: 1, maxOverflow: 0 })),
      Effect.mapError((cause) => new BenchError({ message: `migrating ${name}: ${cause.message}`, cause }))
    )
    return url
  })

const withClient = <A>(url: string, f: (client: pg.Client) => Promise<A>) =>
  attempt("database check", async () => {
    const client = new pg.Client({ connectionString: url, application_name: "eventfold-bench" })
    await client.connect()
    try {
      return await f(client)
    } finally {
      await client.end()
    }
  })

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

interface Child {
  readonly ready: Effect.Effect<void, BenchError>
  readonly run: (message: ParentMessage) => Effect.Effect<RunResult, BenchError>
}

/** Starts a child for `side`; it loads its modules while the parent prepares the database. */
const spawnChild = (side: Side, label: string, timeoutMs: number) =>
  Effect.gen(function* () {
    const child: ChildProcess = yield* Effect.acquireRelease(
      Effect.sync(() =>
        fork(childPath, [side], {
          execArgv: ["--conditions=@eventfold/source", "--import", "tsx"],
          stdio: ["ignore", "inherit", "inherit", "ipc"]
        })
      ),
      // Disconnecting lets the child exit by itself (and write its CPU profile); a child that
      // does not exit within 30 s is killed.
      (child) =>
        Effect.async<void>((resume) => {
          if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
          const timer = setTimeout(() => child.kill("SIGKILL"), 30_000)
          child.once("exit", () => {
            clearTimeout(timer)
            resume(Effect.void)
          })
          if (child.connected) child.disconnect()
        })
    )
    const messages: Array<ChildMessage> = []
    const waiters: Array<() => void> = []
    let exited: string | undefined
    const wake = () => {
      for (const w of waiters.splice(0)) w()
    }
    child.on("message", (m) => {
      messages.push(m as ChildMessage)
      wake()
    })
    child.on("exit", (code, signal) => {
      exited = `exited with ${signal ?? `code ${code}`}`
      wake()
    })
    child.on("error", (error) => {
      exited = `failed: ${error.message}`
      wake()
    })
    const next = Effect.async<ChildMessage, BenchError>((resume) => {
      const check = () => {
        const m = messages.shift()
        if (m !== undefined) return resume(Effect.succeed(m))
        if (exited !== undefined) return resume(Effect.fail(new BenchError({ message: `${label}: child ${exited}` })))
        waiters.push(check)
      }
      check()
    }).pipe(
      Effect.timeoutFail({
        duration: timeoutMs,
        onTimeout: () => new BenchError({ message: `${label}: no answer within ${timeoutMs / 1000} s` })
      })
    )
    const expect = <T extends ChildMessage["_tag"]>(tag: T) =>
      Effect.flatMap(next, (m) =>
        m._tag === tag
          ? Effect.succeed(m as Extract<ChildMessage, { _tag: T }>)
          : Effect.fail(
              new BenchError({
                message: m._tag === "error" ? `${label}: ${m.message}` : `${label}: unexpected ${m._tag}`
              })
            )
      )
    return {
      ready: Effect.asVoid(expect("ready")),
      run: (message) =>
        Effect.zipRight(
          Effect.sync(() => child.send(message)),
          Effect.map(expect("result"), (m) => m.result)
        )
    } satisfies Child
  })

// ---------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------

interface RunRecord {
  readonly workload: string
  readonly side: Side
  readonly repeat: number
  readonly result?: RunResult
  readonly problems: ReadonlyArray<string>
}

/** Where runs get their child process: a fresh one per run, or one per side for the whole bench. */
interface Children {
  readonly get: (side: Side, label: string, timeoutMs: number) => Effect.Effect<Child, BenchError, Scope.Scope>
}

const freshChildren: Children = {
  get: (side, label, timeoutMs) => spawnChild(side, label, timeoutMs)
}

/** One child per side, started now (while the server starts) and ready before the first run. */
const sharedChildren = (options: Options) =>
  Effect.gen(function* () {
    const timeoutMs = options.scale === "quick" ? 120_000 : 900_000
    const started = yield* Effect.forEach(options.sides, (side) => spawnChild(side, side, timeoutMs))
    return {
      ready: Effect.forEach(started, (child) => child.ready, { concurrency: "unbounded", discard: true }),
      children: {
        get: (side) => Effect.succeed({ ...started[options.sides.indexOf(side)]!, ready: Effect.void })
      } satisfies Children
    }
  })

const runOne = (
  children: Children,
  admin: pg.Client,
  serverUrl: string,
  options: Options,
  workload: Workload,
  side: Side,
  repeat: number,
  shared: { readonly url: string; readonly seed: Seed } | undefined
) =>
  Effect.gen(function* () {
    const params: Params = workload.params[options.scale]
    const label = `${workload.id}-${side}-r${repeat + 1}`
    const timeoutMs = options.scale === "quick" ? 120_000 : 900_000
    const child = yield* children.get(side, label, timeoutMs)
    // A fresh child loads its modules while the database is made.
    const [, url] = yield* Effect.all(
      [child.ready, shared ? Effect.succeed(shared.url) : freshDatabase(admin, serverUrl)],
      {
        concurrency: 2
      }
    )
    const seed = shared?.seed ?? {}
    const profile = options.profile ? Path.join(benchDir, "results/profiles", `${label}.cpuprofile`) : undefined
    if (profile !== undefined) yield* attempt("profiles", () => Fs.mkdir(Path.dirname(profile), { recursive: true }))
    const result = yield* child.run({
      _tag: "run",
      workload: workload.id,
      context: { url, params, seed },
      ...(profile === undefined ? {} : { profile })
    })
    const problems = yield* withClient(url, (client) => workload.verify(client, params, result, seed, side))
    return { workload: workload.id, side, repeat, result, problems } satisfies RunRecord
  }).pipe(
    Effect.scoped,
    Effect.catchAll((error) =>
      Effect.succeed({ workload: workload.id, side, repeat, problems: [error.message] } satisfies RunRecord)
    )
  )

const runWorkload = (children: Children, admin: pg.Client, serverUrl: string, options: Options, workload: Workload) =>
  Effect.gen(function* () {
    const params = workload.params[options.scale]
    let shared: { readonly url: string; readonly seed: Seed } | undefined
    if (workload.seed !== undefined) {
      const seedFn = workload.seed
      const url = yield* freshDatabase(admin, serverUrl)
      const seed = yield* withClient(url, (client) => seedFn(client, params))
      shared = { url, seed }
    }
    const records: Array<RunRecord> = []
    for (let repeat = 0; repeat < options.repeat; repeat++) {
      const order = repeat % 2 === 0 ? options.sides : [...options.sides].reverse()
      for (const side of order) {
        const record = yield* runOne(children, admin, serverUrl, options, workload, side, repeat, shared)
        records.push(record)
        yield* Console.error(progress(workload, record))
      }
    }
    return records
  }).pipe(Effect.scoped)

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

const int = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "—")
const ms = (n: number) => (Number.isFinite(n) ? (n < 10 ? n.toFixed(2) : n.toFixed(1)) : "—")
const mb = (n: number) => (Number.isFinite(n) ? n.toFixed(0) : "—")
const rate = (r: RunResult) => (r.events / r.elapsedMs) * 1000

const progress = (workload: Workload, record: RunRecord) => {
  const r = record.result
  const head = `  ${workload.id} ${record.side.padEnd(9)} #${record.repeat + 1}`
  if (r === undefined || record.problems.length > 0) return `${head} FAILED: ${record.problems.join("; ")}`
  return `${head} ${int(rate(r))} ${workload.unit}, p50 ${ms(r.latencies.p50)} ms, p99 ${ms(r.latencies.p99)} ms, peak RSS ${mb(r.peakRssMb)} MB, CPU ${ms((r.cpuMs * 1000) / Math.max(1, r.events))} µs/event`
}

interface Summary {
  readonly workload: string
  readonly title: string
  readonly unit: string
  readonly operation: string
  readonly side: Side
  readonly runs: number
  readonly failed: number
  readonly rate: number
  readonly rateMin: number
  readonly rateMax: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly peakRssMb: number
  readonly baselineRssMb: number
  /** Client CPU per event, µs: what the side costs the application's process. */
  readonly cpuUsPerEvent: number
  readonly counters: Readonly<Record<string, number>>
  readonly ratio?: number
  /**
   * The ratio within each interleaved pair (the same repeat of both sides, run back to
   * back, so that noise hits both alike): median, lowest and highest. On a noisy machine
   * it moves less than the ratio of the two sides' medians, which may come from
   * different pairs.
   */
  readonly pairs?: { readonly median: number; readonly min: number; readonly max: number }
}

/** The ratio of `side` to raw within each repeat that both ran without a problem. */
const pairRatios = (side: Side, records: ReadonlyArray<RunRecord>): ReadonlyArray<number> => {
  const okRate = (r: RunRecord) => (r.result !== undefined && r.problems.length === 0 ? rate(r.result) : undefined)
  return records.flatMap((record) => {
    if (record.side !== side) return []
    const mine = okRate(record)
    const raw = records.find((r) => r.side === "raw" && r.repeat === record.repeat)
    const base = raw === undefined ? undefined : okRate(raw)
    return mine === undefined || base === undefined ? [] : [mine / base]
  })
}

const summarize = (workload: Workload, side: Side, records: ReadonlyArray<RunRecord>): Summary => {
  const mine = records.filter((r) => r.side === side)
  const ok = mine.flatMap((r) => (r.result !== undefined && r.problems.length === 0 ? [r.result] : []))
  const rates = ok.map(rate)
  const counterNames = [...new Set(ok.flatMap((r) => Object.keys(r.counters)))]
  return {
    workload: workload.id,
    title: workload.title,
    unit: workload.unit,
    operation: workload.operation,
    side,
    runs: mine.length,
    failed: mine.length - ok.length,
    rate: median(rates),
    rateMin: Math.min(...rates),
    rateMax: Math.max(...rates),
    p50Ms: median(ok.map((r) => r.latencies.p50)),
    p99Ms: median(ok.map((r) => r.latencies.p99)),
    peakRssMb: median(ok.map((r) => r.peakRssMb)),
    baselineRssMb: median(ok.map((r) => r.baselineRssMb)),
    cpuUsPerEvent: median(ok.map((r) => (r.cpuMs * 1000) / Math.max(1, r.events))),
    counters: Object.fromEntries(
      counterNames.map((name) => [name, median(ok.map((r) => r.counters[name] ?? Number.NaN))])
    )
  }
}

const notesOf = (s: Summary): string => {
  const notes: Array<string> = []
  if (s.counters.successes !== undefined)
    notes.push(`${int(s.counters.successes)} ok / ${int(s.counters.conflicts ?? 0)} conflicts`)
  if (s.counters.retries !== undefined) notes.push(`${int(s.counters.retries)} lost races retried`)
  if (s.workload === "W5") notes.push(`RSS before run ${mb(s.baselineRssMb)} MB`)
  if (s.counters.skipped !== undefined) {
    notes.push(
      `${int(s.counters.delivered ?? Number.NaN)} delivered, ${int(s.counters.duplicates ?? Number.NaN)} duplicates, ${int(s.counters.skipped)} skipped`
    )
  }
  if (s.failed > 0) notes.push(`${s.failed} of ${s.runs} FAILED`)
  return notes.join(", ")
}

const table = (rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)))
  const line = (r: ReadonlyArray<string>) =>
    `| ${r.map((cell, c) => (c >= 2 && c <= 8 ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!))).join(" | ")} |`
  return [
    line(rows[0]!),
    `|${widths.map((w, c) => (c >= 2 && c <= 8 ? `${"-".repeat(w + 1)}:` : "-".repeat(w + 2))).join("|")}|`
  ]
    .concat(rows.slice(1).map(line))
    .join("\n")
}

const report = (summaries: ReadonlyArray<Summary>, repeat: number) => {
  const header = [
    "workload",
    "side",
    "throughput",
    "p50 ms",
    "p99 ms",
    "peak RSS MB",
    "CPU µs/event",
    "Eventfold/raw",
    "pairs",
    "notes"
  ]
  const rows = summaries.map((s) => [
    `${s.workload} ${s.unit === "events/s" ? "" : `(${s.unit})`}`.trim(),
    s.side,
    repeat > 1 && Number.isFinite(s.rate) ? `${int(s.rate)} (${int(s.rateMin)}–${int(s.rateMax)})` : int(s.rate),
    ms(s.p50Ms),
    ms(s.p99Ms),
    mb(s.peakRssMb),
    ms(s.cpuUsPerEvent),
    s.ratio === undefined || !Number.isFinite(s.ratio) ? "" : `${s.ratio.toFixed(2)}×`,
    s.pairs === undefined ? "" : `${s.pairs.median.toFixed(2)}× (${s.pairs.min.toFixed(2)}–${s.pairs.max.toFixed(2)})`,
    notesOf(s)
  ])
  return table([header, ...rows])
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

const serverUrl = Effect.gen(function* () {
  const fromEnv = process.env.DATABASE_URL
  if (fromEnv !== undefined && fromEnv !== "") return { url: fromEnv, server: "DATABASE_URL" }
  const dataDir = Path.join(Os.tmpdir(), `eventfold-bench-${process.pid}`)
  yield* Console.error(
    `No DATABASE_URL: starting an embedded PostgreSQL (default durability), data in ${dataDir} (deleted at the end)...`
  )
  const server = yield* EmbeddedPostgres.start({ dataDir, persistent: false }).pipe(
    Effect.mapError((cause) => new BenchError({ message: cause.message, cause }))
  )
  return { url: Redacted.value(server.url), server: `embedded PostgreSQL on port ${server.port}` }
})

const main = Effect.gen(function* () {
  const options = yield* parseArgs(process.argv.slice(2))
  // --quick reuses one child per side (its peak RSS then covers every workload it ran);
  // a full run gives each run a fresh child, so that peak RSS is per workload and side.
  const shared = options.scale === "quick" ? yield* sharedChildren(options) : undefined
  const [{ url, server }] = yield* Effect.all([serverUrl, shared?.ready ?? Effect.void], { concurrency: 2 })
  const children = shared?.children ?? freshChildren
  const admin = yield* adminClient(url)
  const settings = yield* attempt("reading server settings", async () => {
    const { rows } = await admin.query<Record<string, string>>(`
      SELECT version() AS version, current_setting('fsync') AS fsync,
             current_setting('synchronous_commit') AS synchronous_commit,
             current_setting('shared_buffers') AS shared_buffers, current_setting('max_wal_size') AS max_wal_size`)
    return rows[0]!
  })
  const machine = {
    cpus: Os.cpus().length,
    cpu: Os.cpus()[0]?.model ?? "unknown",
    memoryGb: Math.round(Os.totalmem() / 2 ** 30),
    node: process.version,
    loadAverage: Os.loadavg()
  }
  yield* Console.error(
    `Eventfold bench (${options.scale}, repeat ${options.repeat}) on ${server}: ${settings.version?.split(" on ")[0]}, fsync=${settings.fsync}, synchronous_commit=${settings.synchronous_commit}; ${machine.cpus} CPUs, node ${machine.node}`
  )

  const summaries: Array<Summary> = []
  const allRecords: Array<RunRecord> = []
  const skipped: Array<{ readonly workload: string; readonly reason: string }> = []
  for (const workload of options.workloads) {
    const reason = workload.unavailable === undefined ? undefined : yield* Effect.promise(workload.unavailable)
    if (reason !== undefined) {
      skipped.push({ workload: workload.id, reason })
      yield* Console.error(`  ${workload.id} skipped: ${reason}`)
      continue
    }
    const records = yield* runWorkload(children, admin, url, options, workload).pipe(
      Effect.catchAll((error) =>
        Effect.succeed(
          options.sides.map(
            (side): RunRecord => ({ workload: workload.id, side, repeat: 0, problems: [error.message] })
          )
        )
      )
    )
    allRecords.push(...records)
    const raw = summarize(workload, "raw", records)
    for (const side of options.sides) {
      const summary = summarize(workload, side, records)
      const pairs = pairRatios(side, records)
      summaries.push(
        side === "raw" || !options.sides.includes("raw")
          ? summary
          : {
              ...summary,
              ratio: summary.rate / raw.rate,
              ...(pairs.length < 2
                ? {}
                : { pairs: { median: median(pairs), min: Math.min(...pairs), max: Math.max(...pairs) } })
            }
      )
    }
  }

  yield* Console.log(`\n${report(summaries, options.repeat)}\n`)
  if (shared !== undefined) {
    yield* Console.log("--quick: one child process per side ran every workload, so peak RSS is cumulative.")
  }
  for (const s of skipped) yield* Console.log(`${s.workload} skipped: ${s.reason}`)
  const failures = allRecords.filter((r) => r.problems.length > 0)
  for (const f of failures)
    yield* Console.log(`FAILED ${f.workload} ${f.side} #${f.repeat + 1}: ${f.problems.join("; ")}`)

  const resultsDir = Path.join(benchDir, "results")
  const file = Path.join(resultsDir, `bench-${new Date().toISOString().replace(/[:.]/g, "-")}.json`)
  yield* attempt("writing results", async () => {
    await Fs.mkdir(resultsDir, { recursive: true })
    await Fs.writeFile(
      file,
      `${JSON.stringify(
        {
          date: new Date().toISOString(),
          scale: options.scale,
          repeat: options.repeat,
          server,
          settings,
          machine,
          workloads: options.workloads.map((w) => ({
            id: w.id,
            title: w.title,
            unit: w.unit,
            operation: w.operation,
            params: w.params[options.scale]
          })),
          summaries,
          runs: allRecords,
          skipped
        },
        null,
        2
      )}\n`
    )
  })
  yield* Console.log(`Results: ${Path.relative(process.cwd(), file)}`)
  if (failures.length > 0) {
    return yield* new BenchError({ message: `${failures.length} run(s) failed (errors or wrong counts)` })
  }
})

NodeRuntime.runMain(main.pipe(Effect.scoped), { disableErrorReporting: false })

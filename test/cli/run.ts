/**
 * The command-line programs run as a user runs them: a child process from the repository's
 * root, with an environment that has none of the test process's PG*, DATABASE_*, OTEL_* and
 * LOG_LEVEL variables (only what a test sets applies), and stdout and stderr piped (so not
 * a terminal: no colors, plain progress lines).
 */
import * as Child from "node:child_process"
import { fileURLToPath } from "node:url"
import { assert } from "@effect/vitest"
import * as Effect from "effect/Effect"

export const root = fileURLToPath(new URL("../../", import.meta.url))

/** How a run ended, and what it printed where. */
export interface Run {
  readonly program: string
  readonly args: ReadonlyArray<string>
  /** The exit code; null when a signal ended the process. */
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
  readonly millis: number
}

const inherited = /^(PG|DATABASE_|OTEL_)|^LOG_LEVEL$/

const environment = (variables: Readonly<Record<string, string>>): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) if (!inherited.test(key)) env[key] = value
  return { ...env, ...variables }
}

const spawn = (
  program: string,
  argv: ReadonlyArray<string>,
  args: ReadonlyArray<string>,
  variables: Readonly<Record<string, string>>
): Effect.Effect<Run> =>
  Effect.async<Run>((resume) => {
    const started = Date.now()
    const child = Child.execFile(
      process.execPath,
      [...argv, ...args],
      { cwd: root, env: environment(variables), timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : null
        resume(Effect.succeed({ program, args, code, stdout, stderr, millis: Date.now() - started }))
      }
    )
    return Effect.sync(() => child.kill())
  })

/** `eventfold <args>`: the package's binary, as npm links it (it runs the sources through tsx here). */
export const eventfold = (
  args: ReadonlyArray<string>,
  variables: Readonly<Record<string, string>> = {}
): Effect.Effect<Run> => spawn("eventfold", ["packages/cli/bin/eventfold.js"], args, variables)

/** `orders-admin <args>`: the projections example's mounted commands, as `npm run admin` starts them. */
export const ordersAdmin = (
  args: ReadonlyArray<string>,
  variables: Readonly<Record<string, string>> = {}
): Effect.Effect<Run> =>
  spawn(
    "orders-admin",
    ["--conditions=@eventfold/source", "--import", "tsx", "examples/projections/src/admin.ts"],
    args,
    variables
  )

/**
 * `eventfold <args>`, sent `signal` (SIGINT, as Ctrl-C sends it, by default) once `ready`
 * holds of what it has written on stderr so far.
 */
export const interruptedEventfold = (
  args: ReadonlyArray<string>,
  variables: Readonly<Record<string, string>>,
  ready: (stderr: string) => boolean,
  signal: "SIGINT" | "SIGTERM" = "SIGINT"
): Effect.Effect<Run> =>
  Effect.async<Run>((resume) => {
    const started = Date.now()
    const child = Child.spawn(process.execPath, ["packages/cli/bin/eventfold.js", ...args], {
      cwd: root,
      env: environment(variables),
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    let sent = false
    child.stdout.on("data", (chunk) => {
      stdout += String(chunk)
    })
    child.stderr.on("data", (chunk) => {
      stderr += String(chunk)
      if (!sent && ready(stderr)) {
        sent = true
        child.kill(signal)
      }
    })
    child.once("close", (code) =>
      resume(Effect.succeed({ program: "eventfold", args, code, stdout, stderr, millis: Date.now() - started }))
    )
    return Effect.sync(() => child.kill())
  })

/** Runs independent invocations side by side (each is a process or two: not too many at once). */
export const all = <const T extends ReadonlyArray<Effect.Effect<Run>>>(runs: T) => Effect.all(runs, { concurrency: 3 })

const shown = (run: Run) =>
  `${run.program} ${run.args.join(" ")} exited with ${run.code} after ${run.millis} ms\n--- stdout\n${run.stdout}--- stderr\n${run.stderr}`

/** Checks the exit code, showing everything the run printed when it is not `code`. */
export const assertExit = (run: Run, code: number): Run => {
  assert.strictEqual(run.code, code, shown(run))
  return run
}

/** The run's stdout as the one JSON document it must be, of the shape the test expects (its checks say). */
export const json = <A = unknown>(run: Run): A => {
  try {
    return JSON.parse(run.stdout) as A
  } catch (error) {
    return assert.fail(`stdout is not one JSON document (${String(error)}):\n${shown(run)}`)
  }
}

const ansi = new RegExp(`${String.fromCharCode(27)}\\[`)

/** No escape codes anywhere: the output is not a terminal. */
export const assertPlain = (run: Run): void => {
  assert.notMatch(run.stdout, ansi, `escape codes on stdout:\n${shown(run)}`)
  assert.notMatch(run.stderr, ansi, `escape codes on stderr:\n${shown(run)}`)
}

const lines = (text: string) => text.split("\n").filter((line) => line.trim() !== "")

/**
 * The failure's one line on stderr (`<program>: ...`), besides the program's log lines
 * (`<program>: warn: ...`); no stack, nothing on stdout.
 */
export const errorLine = (run: Run, options: { readonly stdout?: "empty" | "any" } = {}): string => {
  const logs = new RegExp(`^${run.program}: (trace|debug|info|warn|error|fatal): `)
  const errors = lines(run.stderr).filter((line) => !logs.test(line))
  assert.strictEqual(errors.length, 1, `one line on stderr besides logs:\n${shown(run)}`)
  const line = errors[0]!
  assert.isTrue(line.startsWith(`${run.program}: `), `the line names the program:\n${shown(run)}`)
  assert.isTrue(run.stderr.endsWith(`${line}\n`), `the error is the last line:\n${shown(run)}`)
  assert.notMatch(run.stderr, /^\s+at /m, `no stack:\n${shown(run)}`)
  if (options.stdout !== "any") assert.strictEqual(run.stdout, "", `nothing on stdout:\n${shown(run)}`)
  return line
}

/**
 * The rows of the table whose header line starts with `header` (tables may be indented
 * under a section's title), as cells: columns are two spaces or more apart.
 */
export const table = (text: string, header: string): ReadonlyArray<ReadonlyArray<string>> => {
  const all = text.split("\n")
  const start = all.findIndex((line) => line.trim().startsWith(header))
  assert.isAtLeast(start, 0, `a table headed ${header} in:\n${text}`)
  const rows: Array<ReadonlyArray<string>> = []
  for (const line of all.slice(start)) {
    if (line.trim() === "") break
    rows.push(line.trim().split(/\s{2,}/))
  }
  return rows
}

/** The value of a `label  value` line. */
export const field = (text: string, label: string): string => {
  const line = text.split("\n").find((l) => l.startsWith(`${label}  `))
  assert.isDefined(line, `a line ${label} in:\n${text}`)
  return line!.slice(label.length).trim()
}

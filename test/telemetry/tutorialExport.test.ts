/**
 * Issue 13's "done when": `npm start` (the tutorial, run as a child process as npm
 * runs it) with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an OTLP/HTTP receiver and
 * `OTEL_SERVICE_NAME` set exports its traces (`EventStore.append` with the SQL client
 * span under it) and its metrics (`eventfold.append.*`, `eventfold.pool.*`) before it
 * exits; without the variables it prints what the README says it prints, and a
 * collector that cannot be reached changes neither its output nor its exit code.
 */
import { execFile } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"
import { Telemetry } from "@eventfold/core"
import * as Effect from "effect/Effect"
import * as OtlpReceiver from "../support/OtlpReceiver.js"
import * as TestDatabase from "../support/TestDatabase.js"

const root = fileURLToPath(new URL("../../", import.meta.url))

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/**
 * Runs the tutorial as `npm start` does, on the database `url`, with `variables` added to an
 * environment that has no OTEL_* variable of the test process's.
 */
const tutorial = (url: string, variables: Record<string, string> = {}): Effect.Effect<Run> =>
  Effect.async<Run>((resume) => {
    const environment: NodeJS.ProcessEnv = {}
    for (const [key, value] of Object.entries(process.env)) if (!key.startsWith("OTEL_")) environment[key] = value
    const child = execFile(
      process.execPath,
      ["--conditions=@eventfold/source", "--import", "tsx", "examples/tutorial-postgresql/src/main.ts"],
      { cwd: root, env: { ...environment, DATABASE_URL: url, ...variables }, timeout: 50_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : null
        resume(Effect.succeed({ code, stdout, stderr }))
      }
    )
    return Effect.sync(() => child.kill())
  })

/** The order id of a run is new each time. */
const normalized = (stdout: string): string =>
  stdout.replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g, "<order id>")

/** What the README says `npm start` prints, less the log line of the embedded server (a DATABASE_URL is set here). */
const documented = (): string => {
  const readme = Fs.readFileSync(`${root}README.md`, "utf8")
  const block = /`npm start` prints:\n\n```\n([\s\S]*?)```/.exec(readme)?.[1]
  assert.isDefined(block, "the README shows what npm start prints")
  return normalized(
    block!
      .split("\n")
      .filter((line) => !line.includes("INFO (#"))
      .join("\n")
  )
}

const closedPort = Effect.async<number>((resume) => {
  const server = Net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = server.address() as Net.AddressInfo
    server.close(() => resume(Effect.succeed(port)))
  })
})

const assertSucceeded = (run: Run) =>
  assert.strictEqual(run.code, 0, `the tutorial failed:\n${run.stdout}\n${run.stderr}`)

describe("The tutorial's telemetry", () => {
  it.scopedLive("without OTEL_* variables, it prints what the README says, and nothing else", () =>
    Effect.gen(function* () {
      const run = yield* tutorial(yield* TestDatabase.fresh)
      assertSucceeded(run)
      assert.strictEqual(normalized(run.stdout), documented())
      assert.strictEqual(run.stderr, "")
    })
  )

  it.scopedLive("with an endpoint and a service name, its traces and metrics arrive before it exits", () =>
    Effect.gen(function* () {
      const receiver = yield* OtlpReceiver.make
      const run = yield* tutorial(yield* TestDatabase.fresh, {
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_SERVICE_NAME: "tutorial-under-test"
      })
      assertSucceeded(run)
      assert.strictEqual(normalized(run.stdout), documented(), "the output is the same with telemetry on")
      // The process has exited: whatever arrived, arrived before it did.
      const received = yield* receiver.received
      const names = received.spans.map((span) => span.name)
      const appends = OtlpReceiver.spansNamed(received, Telemetry.Spans.append)
      assert.strictEqual(appends.length, 2, `two appends (create, ship) among ${names}`)
      for (const append of appends) {
        assert.strictEqual(append.resource["service.name"], "tutorial-under-test")
        const statements = received.spans.filter((span) => span.parentSpanId === append.spanId)
        assert.deepStrictEqual(
          statements.map((span) => span.name),
          ["INSERT events"],
          "the append's SQL client span, under it"
        )
        assert.strictEqual(statements[0]!.kind, 3, "a client span")
        assert.strictEqual(statements[0]!.traceId, append.traceId)
        assert.strictEqual(statements[0]!.attributes[Telemetry.Attributes.dbSystem], "postgresql")
      }
      const metrics = new Set(received.metrics.map((metric) => metric.name))
      for (const name of [
        Telemetry.Metrics.appendEvents,
        Telemetry.Metrics.appendDuration,
        Telemetry.Metrics.poolConnections,
        Telemetry.Metrics.poolAcquireDuration
      ]) {
        assert.isTrue(metrics.has(name), `${name} among ${[...metrics]}`)
      }
      const events = OtlpReceiver.dataPoints(received, Telemetry.Metrics.appendEvents)
      assert.isTrue(
        events.some((point) => point.value === 2),
        `two events appended: ${JSON.stringify(events)}`
      )
    })
  )

  it.scopedLive("a collector that cannot be reached changes neither its output nor its exit code", () =>
    Effect.gen(function* () {
      const port = yield* closedPort
      const run = yield* tutorial(yield* TestDatabase.fresh, {
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
        // The exporters' retries end within a second: the child's exit then shows any late failure.
        OTEL_EXPORTER_OTLP_TIMEOUT: "1000"
      })
      assertSucceeded(run)
      // Its output is the tutorial's, and warnings of OtelTelemetry's.
      const warning = /^\[[\d:.]+\] WARN \(#\d+\): OtelTelemetry: /
      const lines = run.stdout.split("\n")
      assert.strictEqual(normalized(lines.filter((line) => !warning.test(line)).join("\n")), documented())
      assert.isTrue(
        lines.some((line) => warning.test(line)),
        `a warning:\n${run.stdout}`
      )
      assert.notMatch(run.stdout + run.stderr, /Unhandled|UnhandledPromiseRejection|uncaught/i)
    })
  )
})

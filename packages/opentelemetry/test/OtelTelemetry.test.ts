/**
 * OtelTelemetry against a real OTLP/HTTP receiver (`test/support/OtlpReceiver.ts`): what
 * the exporters put on the wire, what the layer provides when nothing is configured,
 * and what an unreachable collector does to the program (nothing).
 */
import * as Net from "node:net"
import * as Util from "node:util"
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, EventStore, ExpectedVersion, Telemetry } from "@eventfold/core"
import { OtelTelemetry } from "@eventfold/opentelemetry"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import { afterEach, vi } from "vitest"
import * as OtlpReceiver from "../../../test/support/OtlpReceiver.js"
import * as processGuard from "../../../test/support/processGuard.js"

const Noted = Event.make("Noted", { text: Schema.String })
const registry = EventRegistry.make(Noted)

/** The tracer of a runtime nobody gave one. */
const defaultTracer = Effect.runSync(Effect.tracer)

/** An append to the memory store inside a span of the caller's, with a log line in it. */
const appendInRequest = Effect.gen(function* () {
  const store = yield* EventStore.EventStore
  yield* store.append(
    { aggregateId: crypto.randomUUID(), aggregateType: "Note" },
    [{ event: Noted.make({ text: "x" }) }],
    { expectedVersion: ExpectedVersion.noStream }
  )
  yield* Effect.logInfo("appended")
}).pipe(Effect.withSpan("request"), Effect.provide(EventStore.layerMemory({ registry })))

/** What the program sees: whether a tracer was installed and whether Eventfold's metrics are on. */
const observed = Effect.all({
  tracerInstalled: Effect.map(Effect.tracer, (tracer) => tracer !== defaultTracer),
  metricsEnabled: FiberRef.get(Telemetry.metricsEnabled)
})

const withEnvironment = (variables: Record<string, string>) =>
  Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(variables))))

/** A port of 127.0.0.1 nothing listens on (taken from the system, then let go). */
const closedPort = Effect.async<number>((resume) => {
  const server = Net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = server.address() as Net.AddressInfo
    server.close(() => resume(Effect.succeed(port)))
  })
})

/** Keeps every log line, Debug included. */
const capturing = (lines: Array<string>) =>
  Layer.merge(
    Logger.replace(
      Logger.defaultLogger,
      Logger.make(({ message }) => {
        lines.push((Array.isArray(message) ? message : [message]).map(String).join(" "))
      })
    ),
    Logger.minimumLogLevel(LogLevel.Debug)
  )

describe("OtelTelemetry", () => {
  afterEach(() => {
    vi.restoreAllMocks()
  })

  it.scopedLive("exports spans with their parents, Eventfold's metrics and the log before the layer closes", () =>
    Effect.gen(function* () {
      const receiver = yield* OtlpReceiver.make
      const inside = yield* Effect.provide(
        Effect.zipLeft(observed, appendInRequest),
        OtelTelemetry.layer({ endpoint: receiver.url, serviceName: "otel-test", serviceVersion: "1.2.3" })
      )
      assert.deepStrictEqual(inside, { tracerInstalled: true, metricsEnabled: true })
      // No waiting: closing the layer flushed every signal.
      const received = yield* receiver.received
      const [request] = OtlpReceiver.spansNamed(received, "request")
      const [append] = OtlpReceiver.spansNamed(received, Telemetry.Spans.append)
      assert.isDefined(request, `no request span among ${received.spans.map((s) => s.name)}`)
      assert.isDefined(append, "no EventStore.append span")
      assert.strictEqual(append!.parentSpanId, request!.spanId)
      assert.strictEqual(append!.traceId, request!.traceId)
      assert.strictEqual(request!.parentSpanId, "")
      assert.strictEqual(append!.attributes[Telemetry.Attributes.aggregateType], "Note")
      assert.strictEqual(append!.resource["service.name"], "otel-test")
      assert.strictEqual(append!.resource["service.version"], "1.2.3")

      const events = OtlpReceiver.dataPoints(received, Telemetry.Metrics.appendEvents)
      assert.isTrue(
        events.some((p) => p.attributes[Telemetry.Attributes.backend] === "memory" && (p.value ?? 0) >= 1),
        `eventfold.append.events: ${JSON.stringify(events)}`
      )
      const durations = OtlpReceiver.dataPoints(received, Telemetry.Metrics.appendDuration)
      assert.isTrue(
        durations.some((p) => (p.count ?? 0) >= 1),
        "eventfold.append.duration has a count"
      )

      const log = received.logs.find((l) => l.body === "appended")
      assert.isDefined(log, "the log line was exported")
      assert.strictEqual(log!.severityText, "INFO")
      assert.strictEqual(log!.attributes.traceId, request!.traceId)
      for (const path of ["/v1/traces", "/v1/metrics", "/v1/logs"]) {
        const request = received.requests.find((r) => r.path === path)
        assert.strictEqual(request?.headers["content-type"], "application/json", path)
      }
    })
  )

  it.scopedLive("exports metrics every metricExportInterval while the program runs", () =>
    Effect.gen(function* () {
      const receiver = yield* OtlpReceiver.make
      const counter = Metric.counter("otel_test.ticks", { incremental: true })
      yield* Effect.gen(function* () {
        yield* Metric.increment(counter)
        // Arrives while the program still runs: the periodic export, not the flush on close.
        yield* receiver.waitFor((r) => OtlpReceiver.dataPoints(r, "otel_test.ticks").length > 0, {
          what: "a periodic metrics export"
        })
      }).pipe(Effect.provide(OtelTelemetry.layer({ endpoint: receiver.url, metricExportInterval: "100 millis" })))
    })
  )

  it.scopedLive("Telemetry.flush sends what is buffered while the program runs", () =>
    Effect.gen(function* () {
      const receiver = yield* OtlpReceiver.make
      const counter = Metric.counter("otel_test.flushed", { incremental: true })
      yield* Effect.gen(function* () {
        assert.strictEqual((yield* Telemetry.Telemetry).exporter, "otlp")
        yield* appendInRequest
        yield* Metric.increment(counter)
        // The batch processor waits 5 s and the metric reader an hour: only the flush sends them now.
        yield* Telemetry.flush
        const received = yield* receiver.received
        assert.isTrue(received.spans.some((span) => span.name === "EventStore.append"))
        assert.isAbove(OtlpReceiver.dataPoints(received, "otel_test.flushed").length, 0)
      }).pipe(Effect.provide(OtelTelemetry.layer({ endpoint: receiver.url, metricExportInterval: "1 hour" })))
      // Without the service, flushing is nothing.
      yield* Telemetry.flush
      assert.strictEqual((yield* Effect.provide(Telemetry.Telemetry, OtelTelemetry.layer({}))).exporter, "none")
    })
  )

  it.scopedLive("provides nothing without an endpoint, or when disabled: no tracer, metrics off", () =>
    Effect.gen(function* () {
      const receiver = yield* OtlpReceiver.make
      const nothing = { tracerInstalled: false, metricsEnabled: false }
      assert.deepStrictEqual(
        yield* Effect.provide(observed, OtelTelemetry.layerConfig()).pipe(withEnvironment({})),
        nothing
      )
      assert.deepStrictEqual(yield* Effect.provide(observed, OtelTelemetry.layer({})), nothing)
      assert.deepStrictEqual(
        yield* Effect.provide(Effect.zipLeft(observed, appendInRequest), OtelTelemetry.layerConfig()).pipe(
          withEnvironment({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_SDK_DISABLED: "true" })
        ),
        nothing
      )
      assert.deepStrictEqual((yield* receiver.received).requests, [])
      // The same variables without OTEL_SDK_DISABLED do export: the check above could fail.
      assert.deepStrictEqual(
        yield* Effect.provide(observed, OtelTelemetry.layerConfig()).pipe(
          withEnvironment({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url })
        ),
        { tracerInstalled: true, metricsEnabled: true }
      )
    })
  )

  it.scopedLive("reads the standard variables: per-signal endpoints, resource, sampler", () =>
    Effect.gen(function* () {
      const receiver = yield* OtlpReceiver.make
      yield* Effect.provide(appendInRequest, OtelTelemetry.layerConfig()).pipe(
        withEnvironment({
          OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: `${receiver.url}/v1/metrics`,
          OTEL_SERVICE_NAME: "from-env",
          OTEL_RESOURCE_ATTRIBUTES: "deployment.environment=test,team=a%20b%2Cc",
          OTEL_TRACES_SAMPLER: "always_off"
        })
      )
      const received = yield* receiver.received
      assert.deepStrictEqual(received.spans, [], "no traces endpoint, and sampled out anyway")
      assert.deepStrictEqual([...new Set(received.requests.map((r) => r.path))], ["/v1/metrics"])
      const resource = received.metrics[0]?.resource ?? {}
      assert.strictEqual(resource["service.name"], "from-env")
      assert.strictEqual(resource["deployment.environment"], "test")
      assert.strictEqual(resource.team, "a b,c")

      const sampled = yield* OtelTelemetry.config().pipe(
        withEnvironment({ OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.25" })
      )
      assert.strictEqual(sampled.sampler, "parentbased_traceidratio")
      assert.strictEqual(sampled.samplerArg, 0.25)
      // A ratio of 0 keeps no trace: the sampler is the one configured, not OpenTelemetry's default.
      const none = yield* OtlpReceiver.make
      yield* Effect.provide(appendInRequest, OtelTelemetry.layerConfig()).pipe(
        withEnvironment({
          OTEL_EXPORTER_OTLP_ENDPOINT: none.url,
          OTEL_TRACES_SAMPLER: "traceidratio",
          OTEL_TRACES_SAMPLER_ARG: "0"
        })
      )
      assert.deepStrictEqual((yield* none.received).spans, [])
      assert.isAbove((yield* none.received).metrics.length, 0)

      for (const [variable, value] of [
        ["OTEL_TRACES_SAMPLER", "jaeger_remote"],
        ["OTEL_TRACES_SAMPLER_ARG", "2"],
        ["OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"],
        ["OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"],
        ["OTEL_METRIC_EXPORT_INTERVAL", "-5"],
        ["OTEL_RESOURCE_ATTRIBUTES", "novalue"]
      ] as const) {
        const error = yield* Effect.flip(OtelTelemetry.config().pipe(withEnvironment({ [variable]: value })))
        assert.include(String(error), variable)
      }
      for (const protocol of ["http/json", "http/protobuf"]) {
        const accepted = yield* OtelTelemetry.config().pipe(withEnvironment({ OTEL_EXPORTER_OTLP_PROTOCOL: protocol }))
        assert.isUndefined(accepted.endpoint)
      }
    })
  )

  it.scopedLive("sends the headers with every export and never prints them", () =>
    Effect.gen(function* () {
      const secret = `s3cret-${crypto.randomUUID()}`
      const receiver = yield* OtlpReceiver.make
      const environment = {
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_EXPORTER_OTLP_HEADERS: `authorization=Bearer%20${secret},x-tenant=acme`
      }
      const options = yield* OtelTelemetry.config().pipe(withEnvironment(environment))
      assert.deepStrictEqual(Redacted.value(options.headers!), {
        authorization: `Bearer ${secret}`,
        "x-tenant": "acme"
      })
      for (const printed of [String(options), JSON.stringify(options), Util.inspect(options, { depth: 10 })]) {
        assert.notInclude(printed, secret)
      }
      yield* Effect.provide(appendInRequest, OtelTelemetry.layerConfig()).pipe(withEnvironment(environment))
      const { requests } = yield* receiver.received
      assert.sameMembers([...new Set(requests.map((r) => r.path))], ["/v1/traces", "/v1/metrics", "/v1/logs"])
      for (const request of requests) {
        assert.strictEqual(request.headers.authorization, `Bearer ${secret}`)
        assert.strictEqual(request.headers["x-tenant"], "acme")
      }

      // Against a collector that refuses them, the warnings say what failed and never quote the headers.
      const lines: Array<string> = []
      const port = yield* closedPort
      yield* Effect.provide(
        appendInRequest,
        OtelTelemetry.layer({
          endpoint: `http://127.0.0.1:${port}`,
          headers: options.headers,
          exportTimeout: "500 millis",
          shutdownTimeout: "300 millis"
        })
      ).pipe(Effect.provide(capturing(lines)))
      assert.isTrue(
        lines.some((line) => line.includes("OtelTelemetry")),
        `a warning: ${lines.join("\n")}`
      )
      for (const line of lines) assert.notInclude(line, secret)

      const malformed = yield* Effect.flip(
        OtelTelemetry.config().pipe(withEnvironment({ OTEL_EXPORTER_OTLP_HEADERS: `${secret}-without-a-key` }))
      )
      assert.include(String(malformed), "OTEL_EXPORTER_OTLP_HEADERS")
      assert.notInclude(String(malformed), secret)
    })
  )

  it.live("an unreachable collector neither fails the program nor reaches the process, and closing is bounded", () =>
    processGuard.guarded(
      Effect.gen(function* () {
        const lines: Array<string> = []
        const port = yield* closedPort
        const started = Date.now()
        const result = yield* Effect.provide(
          Effect.as(appendInRequest, "the program's own result"),
          OtelTelemetry.layer({
            endpoint: `http://127.0.0.1:${port}`,
            exportTimeout: "1 second",
            shutdownTimeout: "500 millis"
          })
        ).pipe(Effect.provide(capturing(lines)))
        const elapsed = Date.now() - started
        assert.strictEqual(result, "the program's own result")
        // The flush gives up after shutdownTimeout; NodeSdk's own shutdown after a second more at most.
        assert.isBelow(elapsed, 5_000)
        assert.isTrue(
          lines.some((line) => /OtelTelemetry: the last (traces|metrics|logs) were not exported/.test(line)),
          `a warning naming what was not exported: ${lines.join("\n")}`
        )
      })
    )
  )

  it.scopedLive("the console layer prints spans and metrics, for development", () =>
    Effect.gen(function* () {
      const printed: Array<unknown> = []
      vi.spyOn(console, "dir").mockImplementation((item: unknown) => {
        printed.push(item)
      })
      const inside = yield* Effect.provide(
        Effect.zipLeft(observed, appendInRequest),
        OtelTelemetry.layerConsole({ serviceName: "console-test" })
      )
      assert.deepStrictEqual(inside, { tracerInstalled: true, metricsEnabled: true })
      const text = Util.inspect(printed, { depth: 10 })
      assert.include(text, Telemetry.Spans.append)
      assert.include(text, Telemetry.Metrics.appendEvents)
    })
  )
})

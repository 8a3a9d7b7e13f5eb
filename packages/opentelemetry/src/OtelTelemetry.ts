/**
 * Eventfold's telemetry exported with OpenTelemetry: the spans of every operation and
 * statement, Eventfold's metrics (and any other Effect metric) and the program's log,
 * over OTLP/HTTP to a collector (Jaeger, Grafana Tempo and Prometheus behind an
 * OpenTelemetry Collector, or any vendor's OTLP endpoint). Built on
 * @effect/opentelemetry's `NodeSdk`.
 *
 * - {@link layerConfig} reads the standard `OTEL_*` variables. With no endpoint
 *   configured (or `OTEL_SDK_DISABLED=true`) it provides nothing: no tracer is
 *   installed, so the hottest calls keep skipping their spans, and Eventfold's metrics
 *   stay off. Provide it unconditionally; the environment decides.
 * - {@link layer} takes the same settings as options (tests, programs that configure
 *   themselves); {@link layerConsole} prints spans and metrics, for development.
 * - With an endpoint, each signal is batched and sent in the background; closing the
 *   layer flushes what is left, so that a short-lived program's telemetry arrives
 *   before it exits.
 * - A collector that cannot be reached never fails the program nor reaches the
 *   process: a failed export is a warning in the program's log (OpenTelemetry's
 *   diagnostic log, routed there), and closing waits at most `shutdownTimeout` for the
 *   last exports, then names the signals that were not sent. The exporters' own retries
 *   may keep the process alive for up to `exportTimeout` (`OTEL_EXPORTER_OTLP_TIMEOUT`,
 *   10 s by default) after that.
 *
 * @since 0.1.0
 */
import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import * as Settings from "@eventfold/core/Settings"
import * as Telemetry from "@eventfold/core/Telemetry"
import * as OtelApi from "@opentelemetry/api"
import { OTLPLogExporter } from "@opentelemetry/exporter-logs-otlp-http"
import { OTLPMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { BatchLogRecordProcessor } from "@opentelemetry/sdk-logs"
import { ConsoleMetricExporter, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics"
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ConsoleSpanExporter,
  type Sampler as OtelSampler,
  ParentBasedSampler,
  SimpleSpanProcessor,
  TraceIdRatioBasedSampler
} from "@opentelemetry/sdk-trace-base"
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"

/**
 * The trace samplers of `OTEL_TRACES_SAMPLER`. The ratio ones keep the share of
 * traces given by `samplerArg` (`OTEL_TRACES_SAMPLER_ARG`, 0 to 1, default 1);
 * `parentbased_*` follow the caller's decision when a span has a parent.
 *
 * @since 0.1.0
 * @category models
 */
export type SamplerName =
  | "always_on"
  | "always_off"
  | "traceidratio"
  | "parentbased_always_on"
  | "parentbased_always_off"
  | "parentbased_traceidratio"

const samplerNames: ReadonlyArray<SamplerName> = [
  "always_on",
  "always_off",
  "traceidratio",
  "parentbased_always_on",
  "parentbased_always_off",
  "parentbased_traceidratio"
]

/**
 * Where and how to export. Each field has the standard variable {@link config} reads
 * it from.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * The collector's OTLP/HTTP base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`, e.g.
   * `http://localhost:4318`): traces go to `/v1/traces` under it, metrics to
   * `/v1/metrics`, logs to `/v1/logs`.
   */
  readonly endpoint?: string | undefined
  /** The full URL for traces (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), over `endpoint`. */
  readonly tracesEndpoint?: string | undefined
  /** The full URL for metrics (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`), over `endpoint`. */
  readonly metricsEndpoint?: string | undefined
  /** The full URL for logs (`OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`), over `endpoint`. */
  readonly logsEndpoint?: string | undefined
  /**
   * Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`, `key=value,key2=value2`):
   * usually an API key, hence secret.
   */
  readonly headers?: Redacted.Redacted<Readonly<Record<string, string>>> | undefined
  /** `service.name` (`OTEL_SERVICE_NAME`). Default `unknown_service:node`, as OpenTelemetry's. */
  readonly serviceName?: string | undefined
  /** `service.version`. */
  readonly serviceVersion?: string | undefined
  /** More resource attributes (`OTEL_RESOURCE_ATTRIBUTES`, `key=value,...`, values percent-encoded). */
  readonly resourceAttributes?: Readonly<Record<string, string>> | undefined
  /** `OTEL_TRACES_SAMPLER`. Default `parentbased_always_on`. */
  readonly sampler?: SamplerName | undefined
  /** `OTEL_TRACES_SAMPLER_ARG`: the ratio of the ratio samplers, 0 to 1. Default 1. */
  readonly samplerArg?: number | undefined
  /** How often metrics are exported (`OTEL_METRIC_EXPORT_INTERVAL`, milliseconds there). Default 60 s. */
  readonly metricExportInterval?: Duration.DurationInput | undefined
  /** How long one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`, milliseconds there). Default 10 s. */
  readonly exportTimeout?: Duration.DurationInput | undefined
  /** How long closing the layer may wait for the last exports. Default 3 s. */
  readonly shutdownTimeout?: Duration.DurationInput | undefined
  /** Export nothing, whatever else is set (`OTEL_SDK_DISABLED`). */
  readonly disabled?: boolean | undefined
}

const defaults = {
  serviceName: "unknown_service:node",
  metricExportInterval: Duration.seconds(60),
  exportTimeout: Duration.seconds(10),
  shutdownTimeout: Duration.seconds(3)
}

/** `base` with a signal's path under it, as OpenTelemetry joins them (`http://c:4318` + `v1/traces`). */
const signalUrl = (specific: string | undefined, base: string | undefined, path: string): string | undefined =>
  specific ?? (base === undefined ? undefined : `${base.endsWith("/") ? base : `${base}/`}${path}`)

/**
 * The endpoints of each signal; a signal with none is not exported.
 *
 * @since 0.1.0
 * @category utils
 */
export const endpoints = (
  options: Options
): {
  readonly traces?: string | undefined
  readonly metrics?: string | undefined
  readonly logs?: string | undefined
} =>
  options.disabled === true
    ? {}
    : {
        traces: signalUrl(options.tracesEndpoint, options.endpoint, "v1/traces"),
        metrics: signalUrl(options.metricsEndpoint, options.endpoint, "v1/metrics"),
        logs: signalUrl(options.logsEndpoint, options.endpoint, "v1/logs")
      }

const makeSampler = (name: SamplerName, ratio: number): OtelSampler => {
  switch (name) {
    case "always_on":
      return new AlwaysOnSampler()
    case "always_off":
      return new AlwaysOffSampler()
    case "traceidratio":
      return new TraceIdRatioBasedSampler(ratio)
    case "parentbased_always_on":
      return new ParentBasedSampler({ root: new AlwaysOnSampler() })
    case "parentbased_always_off":
      return new ParentBasedSampler({ root: new AlwaysOffSampler() })
    case "parentbased_traceidratio":
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio) })
  }
}

const millis = (duration: Duration.DurationInput): number => Duration.toMillis(Duration.decode(duration))

// ---------------------------------------------------------------------------
// Diagnostics
// ---------------------------------------------------------------------------

/**
 * What OpenTelemetry reported: its error handler passes an exception as the JSON of
 * its fields (stack included); the message is what a reader needs.
 */
const describeDiagnostic = (message: string, args: ReadonlyArray<unknown>): string => {
  const describe = (value: unknown): string => {
    if (value instanceof Error) return value.message
    if (typeof value !== "string") return String(value)
    if (!value.startsWith("{")) return value
    try {
      const parsed: unknown = JSON.parse(value)
      return typeof parsed === "object" && parsed !== null && "message" in parsed ? String(parsed.message) : value
    } catch {
      return value
    }
  }
  return [message, ...args].map(describe).join(" ")
}

/**
 * OpenTelemetry reports what goes wrong inside it (an export the collector refused or
 * never answered) to a process-wide diagnostic logger, silent until someone sets one.
 * While the layer lives, its errors and warnings go to the program's logger as
 * warnings, through the runtime the layer was built in: its loggers are the
 * program's, without the OpenTelemetry log exporter, so that a failing log export
 * never logs into itself. Removed with the layer (`diag.disable`).
 */
const layerDiagnostics: Layer.Layer<never> = Layer.scopedDiscard(
  Effect.gen(function* () {
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const warn = (message: string, ...args: Array<unknown>) => {
      runFork(Effect.logWarning(`OtelTelemetry: ${describeDiagnostic(message, args)}`))
    }
    const ignore = () => {}
    const logger: OtelApi.DiagLogger = { error: warn, warn, info: ignore, debug: ignore, verbose: ignore }
    yield* Effect.acquireRelease(
      Effect.sync(() =>
        OtelApi.diag.setLogger(logger, { logLevel: OtelApi.DiagLogLevel.WARN, suppressOverrideMessage: true })
      ),
      () => Effect.sync(() => OtelApi.diag.disable())
    )
  })
)

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

/** NodeSdk's layer, its `Resource` output dropped: what it installs is the tracer, the metric reader and the logger. */
const sdk = (configuration: NodeSdk.Configuration): Layer.Layer<never> =>
  Layer.map(
    NodeSdk.layer(() => configuration),
    () => Context.empty()
  )

const resourceOf = (options: Options): NonNullable<NodeSdk.Configuration["resource"]> => ({
  serviceName: options.serviceName ?? defaults.serviceName,
  ...(options.serviceVersion === undefined ? {} : { serviceVersion: options.serviceVersion }),
  ...(options.resourceAttributes === undefined ? {} : { attributes: { ...options.resourceAttributes } })
})

/** What NodeSdk's own shutdown may take after {@link layerFlush} has flushed (or given up). */
const sdkShutdownTimeout = Duration.seconds(1)

/**
 * Flushes every signal when the layer closes, before NodeSdk shuts the providers
 * down: the program's last spans, its metrics as they are at the end and its last log
 * lines are sent, within `timeout`. A signal that could not be sent in time is named
 * in a warning (NodeSdk gives up silently); the program's exit is never failed by it.
 */
const layerFlush = (
  signals: ReadonlyArray<Signal>,
  timeout: Duration.DurationInput,
  exporter: Telemetry.Service["exporter"]
): Layer.Layer<Telemetry.Telemetry> =>
  Layer.scoped(
    Telemetry.Telemetry,
    Effect.as(
      Effect.addFinalizer(() => flushSignals(signals, timeout)),
      Telemetry.Telemetry.of({ exporter, flush: flushSignals(signals, timeout) })
    )
  )

/** A signal an exporting layer can flush. */
interface Signal {
  readonly name: string
  readonly url: string
  readonly forceFlush: () => Promise<void>
}

/** Flushes each signal within `timeout`; a signal not sent in time is named in a warning, never a failure. */
const flushSignals = (signals: ReadonlyArray<Signal>, timeout: Duration.DurationInput): Effect.Effect<void> =>
  Effect.forEach(
    signals,
    (signal) =>
      Effect.tryPromise(signal.forceFlush).pipe(
        // A finalizer runs uninterruptibly; the wait for the collector must not.
        Effect.interruptible,
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () => new Error(`not sent within ${Duration.format(timeout)}`)
        }),
        Effect.catchAll((error) =>
          Effect.logWarning(
            `OtelTelemetry: the last ${signal.name} were not exported to ${Settings.redactCredentials(signal.url)}: ${
              error instanceof Error && error.cause instanceof Error ? error.cause.message : error.message
            }`
          )
        )
      ),
    { concurrency: "unbounded", discard: true }
  )

/**
 * Exports to an OTLP/HTTP collector as `options` say: traces (batched), metrics
 * (every `metricExportInterval`) and logs (batched), each signal that has an endpoint;
 * Eventfold's metrics are turned on when metrics are exported. With no endpoint, or
 * `disabled`, it is `Telemetry.layerNone` (no tracer, metrics off). The `Telemetry`
 * service it provides flushes on demand (`Telemetry.flush`); closing it flushes every signal, waiting at most
 * `shutdownTimeout` (a collector that cannot be reached is reported in a warning, and
 * the exporters' retries, bounded by `exportTimeout`, may keep the process alive that
 * much longer).
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<Telemetry.Telemetry> => {
  const urls = endpoints(options)
  if (urls.traces === undefined && urls.metrics === undefined && urls.logs === undefined) return Telemetry.layerNone
  const timeoutMillis = millis(options.exportTimeout ?? defaults.exportTimeout)
  const exporter = (url: string) => ({
    url,
    timeoutMillis,
    // Unwrapped here, at the exporter: the only place the headers are needed in the clear.
    ...(options.headers === undefined ? {} : { headers: { ...Redacted.value(options.headers) } })
  })
  // Made anew each time the layer is built: a processor that was shut down stays down.
  return Layer.suspend(() => {
    const spanProcessor =
      urls.traces === undefined
        ? undefined
        : new BatchSpanProcessor(new OTLPTraceExporter(exporter(urls.traces)), { exportTimeoutMillis: timeoutMillis })
    const intervalMillis = millis(options.metricExportInterval ?? defaults.metricExportInterval)
    const metricReader =
      urls.metrics === undefined
        ? undefined
        : new PeriodicExportingMetricReader({
            exporter: new OTLPMetricExporter(exporter(urls.metrics)),
            exportIntervalMillis: intervalMillis,
            // The reader refuses an export that may outlast the interval.
            exportTimeoutMillis: Math.min(timeoutMillis, intervalMillis)
          })
    const logProcessor =
      urls.logs === undefined
        ? undefined
        : new BatchLogRecordProcessor({
            exporter: new OTLPLogExporter(exporter(urls.logs)),
            exportTimeoutMillis: timeoutMillis
          })
    const exported = sdk({
      resource: resourceOf(options),
      spanProcessor,
      tracerConfig: { sampler: makeSampler(options.sampler ?? "parentbased_always_on", options.samplerArg ?? 1) },
      metricReader,
      logRecordProcessor: logProcessor,
      shutdownTimeout: sdkShutdownTimeout
    })
    const signals = [
      ...(spanProcessor === undefined || urls.traces === undefined
        ? []
        : [{ name: "traces", url: urls.traces, forceFlush: () => spanProcessor.forceFlush() }]),
      ...(metricReader === undefined || urls.metrics === undefined
        ? []
        : [{ name: "metrics", url: urls.metrics, forceFlush: () => metricReader.forceFlush() }]),
      ...(logProcessor === undefined || urls.logs === undefined
        ? []
        : [{ name: "logs", url: urls.logs, forceFlush: () => logProcessor.forceFlush() }])
    ]
    return layerFlush(signals, options.shutdownTimeout ?? defaults.shutdownTimeout, "otlp").pipe(
      Layer.provideMerge(urls.metrics === undefined ? exported : Layer.merge(exported, Telemetry.layerMetrics)),
      Layer.provideMerge(layerDiagnostics)
    )
  })
}

/**
 * Prints every span as it ends and the metrics every `metricExportInterval` (default
 * 10 s) on the console, and turns Eventfold's metrics on: for development. The log
 * stays with the program's own logger, which prints it already.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConsole = (
  options: {
    readonly serviceName?: string | undefined
    readonly metricExportInterval?: Duration.DurationInput | undefined
    /** Print spans only. Default true. */
    readonly metrics?: boolean | undefined
  } = {}
): Layer.Layer<Telemetry.Telemetry> =>
  Layer.suspend(() => {
    const spanProcessor = new SimpleSpanProcessor(new ConsoleSpanExporter())
    const metricReader =
      options.metrics === false
        ? undefined
        : new PeriodicExportingMetricReader({
            exporter: new ConsoleMetricExporter(),
            exportIntervalMillis: millis(options.metricExportInterval ?? Duration.seconds(10))
          })
    const printed = sdk({
      resource: resourceOf({ serviceName: options.serviceName }),
      spanProcessor,
      metricReader
    })
    const signals: Array<Signal> = [{ name: "traces", url: "console", forceFlush: () => spanProcessor.forceFlush() }]
    if (metricReader !== undefined) {
      signals.push({ name: "metrics", url: "console", forceFlush: () => metricReader.forceFlush() })
    }
    return layerFlush(signals, defaults.shutdownTimeout, "console").pipe(
      Layer.provideMerge(metricReader === undefined ? printed : Layer.merge(printed, Telemetry.layerMetrics))
    )
  })

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/**
 * `key=value` pairs separated by commas, values percent-encoded (the W3C Baggage
 * format the OTEL_* variables use). `secret`: the value is never quoted in an error.
 */
const parsePairs = (raw: string, secret: boolean): Either.Either<Record<string, string>, string> => {
  const pairs: Record<string, string> = {}
  const entries = raw.split(",").filter((entry) => entry.trim() !== "")
  for (const [index, entry] of entries.entries()) {
    const at = entry.indexOf("=")
    const key = at < 0 ? "" : entry.slice(0, at).trim()
    if (key === "") {
      return Either.left(`entry ${index + 1} is not key=value${secret ? "" : ` ("${entry.trim()}")`}`)
    }
    try {
      pairs[key] = decodeURIComponent(entry.slice(at + 1).trim())
    } catch {
      return Either.left(`the value of ${key} is not percent-encoded properly`)
    }
  }
  return Either.right(pairs)
}

const pairsConfig = (name: string): Config.Config<Record<string, string>> =>
  Config.mapOrFail(Config.string(name), (raw) =>
    Either.mapLeft(parsePairs(raw, false), (message) => ConfigError.InvalidData([name], message))
  )

/** Read as a secret: a malformed value fails without quoting it. */
const headersConfig = (name: string): Config.Config<Redacted.Redacted<Record<string, string>>> =>
  Config.mapOrFail(Config.redacted(name), (raw) =>
    Either.map(
      Either.mapLeft(parsePairs(Redacted.value(raw), true), (message) => ConfigError.InvalidData([name], message)),
      (pairs) => Redacted.make(pairs)
    )
  )

const urlConfig = (name: string): Config.Config<string> =>
  Config.mapOrFail(Config.string(name), (raw) => {
    try {
      return Either.right(new URL(raw).href)
    } catch {
      return Either.left(ConfigError.InvalidData([name], `not a URL: ${raw}`))
    }
  })

const millisConfig = (name: string): Config.Config<Duration.Duration> =>
  Config.map(
    Config.validate(Config.integer(name), {
      message: "expected a positive number of milliseconds",
      validation: (n) => n > 0
    }),
    Duration.millis
  )

/**
 * The JavaScript OTLP/HTTP exporters speak OTLP/JSON, which every OTLP/HTTP receiver
 * takes: `http/protobuf` (what many deployments set for all their services) is served
 * with JSON on the same endpoint; gRPC, another port and protocol, is refused.
 */
const protocolConfig = Config.validate(Config.string("OTEL_EXPORTER_OTLP_PROTOCOL"), {
  message:
    "grpc is not supported: the OTLP/HTTP exporters send JSON over HTTP (port 4318), which every OTLP/HTTP receiver accepts; set http/json or http/protobuf",
  validation: (protocol) => protocol === "http/json" || protocol === "http/protobuf"
})

/**
 * The settings from the standard OpenTelemetry variables, over `defaultOptions`:
 * `OTEL_EXPORTER_OTLP_ENDPOINT` and the per-signal `OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_ENDPOINT`,
 * `OTEL_EXPORTER_OTLP_HEADERS` (secret), `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME`,
 * `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`,
 * `OTEL_METRIC_EXPORT_INTERVAL` and `OTEL_SDK_DISABLED`. `OTEL_EXPORTER_OTLP_PROTOCOL`, when
 * set, must be `http/json`. A malformed value is a `ConfigError` naming the variable
 * (never quoting a header).
 *
 * @since 0.1.0
 * @category constructors
 */
export const config = (defaultOptions: Options = {}): Config.Config<Options> =>
  Config.zipWith(
    Config.option(protocolConfig),
    Settings.overDefaults(
      {
        endpoint: urlConfig("OTEL_EXPORTER_OTLP_ENDPOINT"),
        tracesEndpoint: urlConfig("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        metricsEndpoint: urlConfig("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
        logsEndpoint: urlConfig("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"),
        headers: headersConfig("OTEL_EXPORTER_OTLP_HEADERS"),
        exportTimeout: millisConfig("OTEL_EXPORTER_OTLP_TIMEOUT"),
        serviceName: Config.nonEmptyString("OTEL_SERVICE_NAME"),
        resourceAttributes: pairsConfig("OTEL_RESOURCE_ATTRIBUTES"),
        sampler: Config.literal(...samplerNames)("OTEL_TRACES_SAMPLER"),
        samplerArg: Config.validate(Config.number("OTEL_TRACES_SAMPLER_ARG"), {
          message: "expected a ratio between 0 and 1",
          validation: (n) => n >= 0 && n <= 1
        }),
        metricExportInterval: millisConfig("OTEL_METRIC_EXPORT_INTERVAL"),
        disabled: Config.boolean("OTEL_SDK_DISABLED")
      },
      defaultOptions
    ),
    (_protocol, options): Options => options
  )

/**
 * {@link layer} with the settings of {@link config}: provide it to every program;
 * without `OTEL_EXPORTER_OTLP_ENDPOINT` (or a per-signal endpoint) it provides nothing
 * and costs nothing.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (defaultOptions: Options = {}): Layer.Layer<Telemetry.Telemetry, ConfigError.ConfigError> =>
  Layer.unwrapEffect(Effect.map(config(defaultOptions), layer))

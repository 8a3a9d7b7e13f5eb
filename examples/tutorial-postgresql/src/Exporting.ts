/**
 * Exporting telemetry (README, "Exporting telemetry"): the layers an application
 * provides, in production (the OTEL_* variables decide), in development (the console),
 * and configured in code; the SQL echo; Eventfold's metrics read without exporting
 * them. Type-checked with the examples; the README's snippets come from here.
 */
import { type EventStore, Telemetry } from "@eventfold/core"
import { OtelTelemetry } from "@eventfold/opentelemetry"
import { PgEventStore, PgPool } from "@eventfold/pg"
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import { registry } from "./Order.js"

// Production: OTEL_EXPORTER_OTLP_ENDPOINT and the other standard variables decide; without
// an endpoint this is Layer.empty and costs nothing.
export const TelemetryLive = OtelTelemetry.layerConfig({ serviceName: "orders" })

// Development: every span as it ends and the metrics every 10 s, on the console.
export const TelemetryDev = OtelTelemetry.layerConsole({ serviceName: "orders" })

// Configured in code: a vendor's endpoint and API key, one trace in ten, metrics every 15 s.
export const TelemetryToVendor = Layer.unwrapEffect(
  Effect.map(Config.redacted("VENDOR_API_KEY"), (apiKey) =>
    OtelTelemetry.layer({
      endpoint: "https://otlp.vendor.example",
      headers: Redacted.make({ "x-api-key": Redacted.value(apiKey) }),
      serviceName: "orders",
      sampler: "parentbased_traceidratio",
      samplerArg: 0.1,
      metricExportInterval: "15 seconds"
    })
  )
)

// The telemetry layer goes around everything else: the pool, made inside, then records
// its metrics too, and the layer closes last, flushing the program's final spans.
export const AppLive = PgEventStore.layerPrepared({ registry }).pipe(Layer.provideMerge(PgPool.layerFromEnv()))
export const run = <A, E>(program: Effect.Effect<A, E, EventStore.EventStore>) =>
  program.pipe(Effect.provide(AppLive), Effect.provide(TelemetryLive))

// The SQL echo (or DATABASE_ECHO=true): every statement's text, never its values, and its
// duration, at Debug; the level is lowered around everything, the pool's making included.
export const runEchoing = <A, E>(program: Effect.Effect<A, E, EventStore.EventStore>) =>
  program.pipe(
    Effect.provide(
      PgEventStore.layerPrepared({ registry }).pipe(Layer.provideMerge(PgPool.layerFromEnv({ echo: true })))
    ),
    Logger.withMinimumLogLevel(LogLevel.Debug)
  )

// Eventfold's metrics without exporting them, read in a test or a health endpoint.
export const eventsAppended = Effect.map(Metric.value(Telemetry.appendMetrics.events), (state) => state.count)
export const MetricsOnly = Telemetry.layerMetrics

/**
 * A tiny OTLP/HTTP receiver for tests: what an OpenTelemetry Collector would receive
 * from a program on `/v1/traces`, `/v1/metrics` and `/v1/logs`, kept in memory. No
 * collector runs on the machines of this project, and an exporter is only proven by
 * what arrives on the wire.
 *
 * The JavaScript OTLP/HTTP exporters (`@opentelemetry/exporter-*-otlp-http`) send
 * OTLP/JSON (`Content-Type: application/json`, ids as hex strings), gzipped when
 * `OTEL_EXPORTER_OTLP_COMPRESSION=gzip`; that is what this receiver reads. Anything
 * else (protobuf) is answered 415 and kept in `requests`, so that a test sees why
 * nothing arrived.
 *
 * ```ts
 * const receiver = yield* OtlpReceiver.make // closed with the scope
 * // ... a program exports to receiver.url ...
 * const spans = yield* receiver.waitFor((r) => r.spans.some((s) => s.name === "EventStore.append"))
 * ```
 */

import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as Zlib from "node:zlib"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import { eventually } from "./eventually.js"

/** An attribute value, as OTLP/JSON's AnyValue decodes (64-bit integers as numbers). */
export type Value = string | number | boolean | null | ReadonlyArray<Value> | { readonly [key: string]: Value }

/** Attributes by key. */
export type Attributes = Readonly<Record<string, Value>>

/** A span as it arrived. */
export interface ReceivedSpan {
  readonly name: string
  /** OTLP's SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  readonly kind: number
  readonly traceId: string
  readonly spanId: string
  /** Empty for a root span. */
  readonly parentSpanId: string
  readonly attributes: Attributes
  readonly links: ReadonlyArray<{ readonly traceId: string; readonly spanId: string; readonly attributes: Attributes }>
  readonly resource: Attributes
  readonly scope: string
}

/** One data point of a metric: `value` for sums and gauges, `count`/`sum`/`bucketCounts` for histograms. */
export interface ReceivedDataPoint {
  readonly attributes: Attributes
  readonly value?: number | undefined
  readonly count?: number | undefined
  readonly sum?: number | undefined
  readonly bucketCounts?: ReadonlyArray<number> | undefined
  readonly explicitBounds?: ReadonlyArray<number> | undefined
}

/** A metric of one export request (a metric exported twice arrives twice, with its values then). */
export interface ReceivedMetric {
  readonly name: string
  readonly description: string
  readonly unit: string
  readonly type: "sum" | "gauge" | "histogram" | "exponentialHistogram" | "summary"
  readonly dataPoints: ReadonlyArray<ReceivedDataPoint>
  readonly resource: Attributes
}

/** A log record as it arrived. */
export interface ReceivedLog {
  readonly body: Value
  readonly severityText: string
  readonly severityNumber: number
  readonly attributes: Attributes
  readonly traceId: string
  readonly spanId: string
  readonly resource: Attributes
}

/** One HTTP request the receiver answered, whatever it held. */
export interface ReceivedRequest {
  readonly method: string
  readonly path: string
  readonly headers: Http.IncomingHttpHeaders
  /** The status the receiver answered with: 200 when it read the body, 415 for a format it does not read. */
  readonly status: number
}

/** Everything received so far. */
export interface Received {
  readonly spans: ReadonlyArray<ReceivedSpan>
  readonly metrics: ReadonlyArray<ReceivedMetric>
  readonly logs: ReadonlyArray<ReceivedLog>
  readonly requests: ReadonlyArray<ReceivedRequest>
}

/** A running receiver. */
export interface OtlpReceiver {
  /** The base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` takes it: `http://127.0.0.1:<port>`. */
  readonly url: string
  /** What arrived so far (a copy). */
  readonly received: Effect.Effect<Received>
  /** Polls what arrived until `done` holds (or fails after `timeout`, naming `what`). */
  readonly waitFor: (
    done: (received: Received) => boolean,
    options?: { readonly what?: string; readonly timeout?: `${number} seconds` }
  ) => Effect.Effect<Received, Error>
}

// ---------------------------------------------------------------------------
// OTLP/JSON decoding
// ---------------------------------------------------------------------------

/** A JSON object, loosely: the fields OTLP/JSON may leave out are read as absent. */
type Json = { readonly [key: string]: unknown }

const isObject = (u: unknown): u is Json => typeof u === "object" && u !== null && !Array.isArray(u)
const objects = (u: unknown): ReadonlyArray<Json> => (Array.isArray(u) ? u.filter(isObject) : [])
const text = (u: unknown): string => (typeof u === "string" ? u : "")
const number = (u: unknown): number | undefined =>
  typeof u === "number" ? u : typeof u === "string" && u !== "" ? Number(u) : undefined

const anyValue = (u: unknown): Value => {
  if (!isObject(u)) return null
  if ("stringValue" in u) return text(u.stringValue)
  if ("boolValue" in u) return u.boolValue === true
  if ("intValue" in u) return number(u.intValue) ?? null
  if ("doubleValue" in u) return number(u.doubleValue) ?? null
  if ("bytesValue" in u) return text(u.bytesValue)
  if ("arrayValue" in u) return objects(isObject(u.arrayValue) ? u.arrayValue.values : undefined).map(anyValue)
  if ("kvlistValue" in u) return attributes(isObject(u.kvlistValue) ? u.kvlistValue.values : undefined)
  return null
}

const attributes = (u: unknown): Attributes =>
  Object.fromEntries(objects(u).map((kv) => [text(kv.key), anyValue(kv.value)]))

const resourceOf = (u: Json): Attributes => attributes(isObject(u.resource) ? u.resource.attributes : undefined)

const spansOf = (body: Json): Array<ReceivedSpan> =>
  objects(body.resourceSpans).flatMap((rs) =>
    objects(rs.scopeSpans).flatMap((ss) =>
      objects(ss.spans).map(
        (span): ReceivedSpan => ({
          name: text(span.name),
          kind: number(span.kind) ?? 0,
          traceId: text(span.traceId),
          spanId: text(span.spanId),
          parentSpanId: text(span.parentSpanId),
          attributes: attributes(span.attributes),
          links: objects(span.links).map((link) => ({
            traceId: text(link.traceId),
            spanId: text(link.spanId),
            attributes: attributes(link.attributes)
          })),
          resource: resourceOf(rs),
          scope: text(isObject(ss.scope) ? ss.scope.name : undefined)
        })
      )
    )
  )

const dataPoint = (point: Json): ReceivedDataPoint => ({
  attributes: attributes(point.attributes),
  value: number(point.asInt) ?? number(point.asDouble),
  count: number(point.count),
  sum: number(point.sum),
  bucketCounts: Array.isArray(point.bucketCounts) ? point.bucketCounts.map((c) => number(c) ?? 0) : undefined,
  explicitBounds: Array.isArray(point.explicitBounds) ? point.explicitBounds.map((b) => number(b) ?? 0) : undefined
})

const metricTypes = ["sum", "gauge", "histogram", "exponentialHistogram", "summary"] as const

const metricsOf = (body: Json): Array<ReceivedMetric> =>
  objects(body.resourceMetrics).flatMap((rm) =>
    objects(rm.scopeMetrics).flatMap((sm) =>
      objects(sm.metrics).map((metric): ReceivedMetric => {
        const type = metricTypes.find((t) => isObject(metric[t])) ?? "gauge"
        const data = metric[type]
        return {
          name: text(metric.name),
          description: text(metric.description),
          unit: text(metric.unit),
          type,
          dataPoints: objects(isObject(data) ? data.dataPoints : undefined).map(dataPoint),
          resource: resourceOf(rm)
        }
      })
    )
  )

const logsOf = (body: Json): Array<ReceivedLog> =>
  objects(body.resourceLogs).flatMap((rl) =>
    objects(rl.scopeLogs).flatMap((sl) =>
      objects(sl.logRecords).map(
        (record): ReceivedLog => ({
          body: anyValue(record.body),
          severityText: text(record.severityText),
          severityNumber: number(record.severityNumber) ?? 0,
          attributes: attributes(record.attributes),
          traceId: text(record.traceId),
          spanId: text(record.spanId),
          resource: resourceOf(rl)
        })
      )
    )
  )

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

const readBody = (request: Http.IncomingMessage): Promise<Buffer> =>
  new Promise((resolve, reject) => {
    const chunks: Array<Buffer> = []
    const source: NodeJS.ReadableStream =
      request.headers["content-encoding"] === "gzip" ? request.pipe(Zlib.createGunzip()) : request
    source.on("data", (chunk: Buffer) => chunks.push(chunk))
    source.on("end", () => resolve(Buffer.concat(chunks)))
    source.on("error", reject)
    request.on("error", reject)
  })

/** Starts a receiver on a free port of 127.0.0.1; it stops when the scope closes. */
export const make: Effect.Effect<OtlpReceiver, never, Scope.Scope> = Effect.gen(function* () {
  const spans: Array<ReceivedSpan> = []
  const metrics: Array<ReceivedMetric> = []
  const logs: Array<ReceivedLog> = []
  const requests: Array<ReceivedRequest> = []

  const handle = async (request: Http.IncomingMessage, response: Http.ServerResponse): Promise<void> => {
    const path = (request.url ?? "").split("?")[0] ?? ""
    const answer = (status: number, body: string) => {
      requests.push({ method: request.method ?? "", path, headers: request.headers, status })
      response.writeHead(status, { "content-type": "application/json" }).end(body)
    }
    const body = await readBody(request)
    if (!(request.headers["content-type"] ?? "").startsWith("application/json")) {
      return answer(415, JSON.stringify({ message: "this receiver reads OTLP/JSON only" }))
    }
    const parsed: unknown = JSON.parse(body.toString("utf8"))
    const json = isObject(parsed) ? parsed : {}
    if (path === "/v1/traces") spans.push(...spansOf(json))
    else if (path === "/v1/metrics") metrics.push(...metricsOf(json))
    else if (path === "/v1/logs") logs.push(...logsOf(json))
    else return answer(404, JSON.stringify({ message: `no OTLP signal at ${path}` }))
    answer(200, "{}")
  }

  const server = Http.createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      requests.push({ method: request.method ?? "", path: request.url ?? "", headers: request.headers, status: 400 })
      if (!response.headersSent) response.writeHead(400).end(String(error))
    })
  })
  const port = yield* Effect.acquireRelease(
    Effect.async<number>((resume) => {
      server.listen(0, "127.0.0.1", () => resume(Effect.succeed((server.address() as AddressInfo).port)))
    }),
    () =>
      Effect.async<void>((resume) => {
        server.close(() => resume(Effect.void))
        server.closeAllConnections()
      })
  )

  const received = Effect.sync(
    (): Received => ({ spans: [...spans], metrics: [...metrics], logs: [...logs], requests: [...requests] })
  )
  return {
    url: `http://127.0.0.1:${port}`,
    received,
    waitFor: (done, options = {}) =>
      eventually(received, done, {
        what: options.what ?? "telemetry at the receiver",
        timeout: options.timeout ?? "30 seconds",
        every: "50 millis"
      })
  }
})

/** The spans named `name`. */
export const spansNamed = (received: Received, name: string): ReadonlyArray<ReceivedSpan> =>
  received.spans.filter((span) => span.name === name)

/** The data points of every export of the metric named `name`. */
export const dataPoints = (received: Received, name: string): ReadonlyArray<ReceivedDataPoint> =>
  received.metrics.filter((metric) => metric.name === name).flatMap((metric) => metric.dataPoints)

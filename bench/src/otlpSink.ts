/**
 * `npm run bench:otlp-sink [-- --port 4318]`: an OTLP/HTTP endpoint on this machine that
 * takes what exporters send and keeps only counts, so that the bench can measure what
 * exporting costs the program (`OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 npm
 * run bench -- --workloads W1,W2`) without a collector. Prints, every 10 seconds and on
 * SIGINT/SIGTERM, the requests, bytes and spans received per signal. Spans are counted
 * from OTLP/JSON, the only encoding the JavaScript OTLP/HTTP exporters send.
 */
import * as Http from "node:http"

const portFlag = process.argv.indexOf("--port")
const port = portFlag >= 0 ? Number(process.argv[portFlag + 1]) : 4318
const received = new Map<string, { requests: number; bytes: number; items: number }>()

/** Spans, metric data points or log records in an OTLP/JSON request body, or 0 when it is not one. */
const items = (body: string): number => {
  try {
    const parsed = JSON.parse(body) as Record<string, Array<Record<string, Array<Record<string, Array<unknown>>>>>>
    let n = 0
    for (const key of ["resourceSpans", "resourceMetrics", "resourceLogs"]) {
      for (const resource of parsed[key] ?? []) {
        for (const scope of resource.scopeSpans ?? resource.scopeMetrics ?? resource.scopeLogs ?? []) {
          n += (scope.spans ?? scope.metrics ?? scope.logRecords ?? []).length
        }
      }
    }
    return n
  } catch {
    return 0
  }
}

const server = Http.createServer((request, response) => {
  const chunks: Array<Buffer> = []
  request.on("data", (chunk: Buffer) => chunks.push(chunk))
  request.on("end", () => {
    const body = Buffer.concat(chunks)
    const entry = received.get(request.url ?? "") ?? { requests: 0, bytes: 0, items: 0 }
    entry.requests++
    entry.bytes += body.length
    entry.items += items(body.toString("utf8"))
    received.set(request.url ?? "", entry)
    response.writeHead(200, { "content-type": "application/json" }).end("{}")
  })
})

const report = () => {
  for (const [path, entry] of received) {
    console.log(`${path}: ${entry.requests} requests, ${entry.bytes} bytes, ${entry.items} items`)
  }
}

server.listen(port, "127.0.0.1", () => console.log(`OTLP/HTTP sink on http://127.0.0.1:${port}`))
const timer = setInterval(report, 10_000)
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    clearInterval(timer)
    report()
    server.close()
  })
}

import { assert, describe, it } from "@effect/vitest"
import { EventMetadata } from "@eventfold/core"
import * as Effect from "effect/Effect"
import * as FastCheck from "effect/FastCheck"
import * as FiberRef from "effect/FiberRef"
import * as Tracer from "effect/Tracer"
import { recordingSpans } from "../../../test/support/spans.js"

const hex = (length: number) =>
  FastCheck.string({ unit: FastCheck.constantFrom(..."0123456789abcdef"), minLength: length, maxLength: length })

describe("EventMetadata", () => {
  it.prop(
    "a traceparent reads back as the span it was written from",
    [hex(32), hex(16), FastCheck.boolean()],
    ([traceId, spanId, sampled]) => {
      const written = EventMetadata.traceparent(Tracer.externalSpan({ traceId, spanId, sampled }))
      const valid = !/^0+$/.test(traceId) && !/^0+$/.test(spanId)
      if (!valid) return written === null
      const read = EventMetadata.parseTraceparent(written)
      return (
        written === `00-${traceId}-${spanId}-${sampled ? "01" : "00"}` &&
        read?.traceId === traceId &&
        read.spanId === spanId &&
        read.sampled === sampled
      )
    }
  )

  it("refuses what W3C Trace Context does not allow", () => {
    const good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert.isDefined(EventMetadata.parseTraceparent(good))
    for (const bad of [
      good.toUpperCase(),
      `01${good.slice(2)}`,
      `${good}-extra`,
      `${good}\r\nx: y`,
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
      "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
      "",
      null,
      undefined
    ]) {
      assert.isUndefined(EventMetadata.parseTraceparent(bad), String(bad))
    }
  })

  it("stored documents: null members left out, unknown or ill-typed ones ignored, a bad traceparent dropped", () => {
    assert.isNull(EventMetadata.toJson(EventMetadata.empty))
    const metadata = {
      correlationId: "req-1",
      causationId: null,
      traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    }
    const json = EventMetadata.toJson(metadata)!
    assert.deepStrictEqual(JSON.parse(json), { correlation_id: "req-1", traceparent: metadata.traceparent })
    assert.deepStrictEqual(EventMetadata.fromDocument(JSON.parse(json)), metadata)
    assert.deepStrictEqual(
      EventMetadata.fromDocument({ correlation_id: 7, causation_id: "c", traceparent: "forged\r\nheader", other: 1 }),
      { correlationId: null, causationId: "c", traceparent: null }
    )
    for (const odd of [null, 1, "x", [], {}]) {
      assert.strictEqual(EventMetadata.fromDocument(odd), EventMetadata.empty)
    }
  })

  it.effect("withCommand and withCorrelationId set the causality appends take", () =>
    Effect.gen(function* () {
      const read = FiberRef.get(EventMetadata.currentCausality)
      assert.deepStrictEqual(yield* read, { correlationId: null, causationId: null })
      assert.deepStrictEqual(yield* read.pipe(EventMetadata.withCommand({ commandId: "c1" })), {
        correlationId: "c1",
        causationId: "c1"
      })
      assert.deepStrictEqual(
        yield* read.pipe(EventMetadata.withCommand({ commandId: "c1" }), EventMetadata.withCorrelationId("r1")),
        { correlationId: "r1", causationId: "c1" }
      )
      assert.deepStrictEqual(
        yield* read.pipe(
          EventMetadata.withCommand({ commandId: "c1", correlationId: "r2" }),
          EventMetadata.withCorrelationId("r1")
        ),
        { correlationId: "r2", causationId: "c1" }
      )
    })
  )

  it.effect("reactingTo runs a consumer span linked to the event's append, caused by the event", () =>
    Effect.gen(function* () {
      const event = {
        eventId: "e-1",
        metadata: {
          correlationId: "r-1",
          causationId: "c-1",
          traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        }
      }
      const [causality, spans] = yield* recordingSpans(
        FiberRef.get(EventMetadata.currentCausality).pipe(EventMetadata.reactingTo(event, "Mailer.handle"))
      )
      assert.deepStrictEqual(causality, { correlationId: "r-1", causationId: "e-1" })
      const [span] = spans
      assert.strictEqual(span!.name, "Mailer.handle")
      assert.deepStrictEqual(
        span!.links.map((link) => [link.span.traceId, link.span.spanId]),
        [["4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"]]
      )
      assert.deepStrictEqual(
        EventMetadata.spanLinks([event, event, { metadata: EventMetadata.empty }]).map((l) => l.span.spanId),
        ["00f067aa0ba902b7"]
      )
    })
  )
})

/**
 * Records the spans a program starts, with their attributes, by wrapping the running
 * tracer: the span names and attribute keys of `Telemetry` can then be checked.
 */

import * as Effect from "effect/Effect"
import * as Tracer from "effect/Tracer"

/** A span the program started: its name and its attributes, as set at start and later. */
export interface RecordedSpan {
  readonly name: string
  readonly kind: Tracer.SpanKind
  readonly attributes: ReadonlyMap<string, unknown>
  readonly traceId: string
  readonly spanId: string
  /** The parent's span id, if it has one. */
  readonly parentSpanId: string | undefined
  readonly links: ReadonlyArray<Tracer.SpanLink>
}

/**
 * Runs `effect` under a tracer that records every span started in it (forked fibers
 * included). `live`, when given, gets the list as it grows, to watch while `effect` runs.
 */
export const recordingSpans = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  live?: (spans: ReadonlyArray<RecordedSpan>) => void
): Effect.Effect<readonly [A, ReadonlyArray<RecordedSpan>], E, R> =>
  Effect.gen(function* () {
    const spans: Array<RecordedSpan> = []
    live?.(spans)
    const inner = yield* Effect.tracer
    const tracer = Tracer.make({
      span: (name, ...rest) => {
        const span = inner.span(name, ...rest)
        const attributes = new Map<string, unknown>(span.attributes)
        spans.push({
          name,
          kind: span.kind,
          attributes,
          traceId: span.traceId,
          spanId: span.spanId,
          parentSpanId: span.parent._tag === "Some" ? span.parent.value.spanId : undefined,
          links: span.links
        })
        const attribute = span.attribute.bind(span)
        span.attribute = (key, value) => {
          attributes.set(key, value)
          attribute(key, value)
        }
        return span
      },
      context: (f, fiber) => inner.context(f, fiber)
    })
    const result = yield* Effect.withTracer(effect, tracer)
    return [result, spans] as const
  })

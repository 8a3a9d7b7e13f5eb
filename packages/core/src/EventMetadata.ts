/**
 * What travels with every event besides its payload: the W3C trace context of the
 * append, and the ids that say which request the event belongs to (correlation) and
 * what caused it (causation: a command, or the event a projection or process manager
 * reacted to). PostgreSQL keeps them in the `metadata` column of `events` (and of
 * `event_outbox`), never in the payload, which stays exactly the event's encoded fields.
 *
 * Correlation and causation come from the fiber's context: a request handler sets them
 * once ({@link withCorrelationId}, {@link withCommand}), projection runners set them
 * for each event they handle ({@link causedBy}), and an append's options override them.
 * The trace context is the append's span (or, with no tracer installed, a trace an
 * upstream service propagated). The outbox relay sends it as `traceparent`, and
 * consumers continue the trace with a span link ({@link spanLink}).
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"
import * as Tracer from "effect/Tracer"

/**
 * The ids that link events to their cause, as the fiber's context holds them.
 *
 * @since 0.1.0
 * @category models
 */
export interface Causality {
  /** The request, conversation or process the events belong to. */
  readonly correlationId: string | null
  /** The command or event that caused them. */
  readonly causationId: string | null
}

/**
 * The metadata of a stored event.
 *
 * @since 0.1.0
 * @category models
 */
export interface EventMetadata extends Causality {
  /** The W3C `traceparent` of the append that stored the event, or null when none was traced. */
  readonly traceparent: string | null
}

/**
 * No metadata: what events appended outside any request, trace or handler carry.
 *
 * @since 0.1.0
 * @category models
 */
export const empty: EventMetadata = Object.freeze({ correlationId: null, causationId: null, traceparent: null })

/**
 * The correlation and causation ids appends take when their options name none.
 *
 * @since 0.1.0
 * @category context
 */
export const currentCausality: FiberRef.FiberRef<Causality> = globalValue(
  "@eventfold/core/EventMetadata/currentCausality",
  () => FiberRef.unsafeMake<Causality>({ correlationId: null, causationId: null })
)

/**
 * Runs `self` as part of one request (or conversation, or process): the events it
 * appends carry `correlationId`.
 *
 * @since 0.1.0
 * @category context
 */
export const withCorrelationId =
  (correlationId: string) =>
  <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.locallyWith(self, currentCausality, (current) => ({ ...current, correlationId }))

/**
 * Runs `self` as the handling of one command: the events it appends are caused by
 * `commandId` and carry `correlationId`, or the correlation already in context, or,
 * when there is none, the command's id (a command starts a conversation).
 *
 * @since 0.1.0
 * @category context
 */
export const withCommand =
  (command: { readonly commandId: string; readonly correlationId?: string }) =>
  <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.locallyWith(self, currentCausality, (current) => ({
      correlationId: command.correlationId ?? current.correlationId ?? command.commandId,
      causationId: command.commandId
    }))

/**
 * The causality of what reacts to `event`: caused by it, in its correlation (the
 * event's own id when it has none: it started the conversation).
 *
 * @since 0.1.0
 * @category context
 */
export const causalityOf = (event: Reaction): Causality => ({
  correlationId: event.metadata.correlationId ?? event.eventId,
  causationId: event.eventId
})

/**
 * What a reaction needs of the event it reacts to (a `RecordedEvent` has it).
 *
 * @since 0.1.0
 * @category models
 */
export interface Reaction {
  readonly eventId: string
  readonly metadata: Causality
}

/**
 * Runs `self` as a reaction to `event` (what projection runners do for each event
 * they handle): the events it appends are caused by `event`, in its correlation.
 *
 * @since 0.1.0
 * @category context
 */
export const causedBy =
  (event: Reaction) =>
  <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.locallyWith(self, currentCausality, () => causalityOf(event))

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/
const INVALID_TRACE = /^0+$/

/**
 * A span's W3C `traceparent` (version 00).
 *
 * @since 0.1.0
 * @category trace context
 */
export const traceparent = (span: Tracer.AnySpan): string | null => {
  const value = `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`
  return parseTraceparent(value) === undefined ? null : value
}

/**
 * The span a `traceparent` names, or undefined when it is not a valid version-00
 * `traceparent` (W3C Trace Context: lower-case hex, ids not all zeros).
 *
 * @since 0.1.0
 * @category trace context
 */
export const parseTraceparent = (value: string | null | undefined): Tracer.ExternalSpan | undefined => {
  if (typeof value !== "string") return undefined
  const match = TRACEPARENT.exec(value)
  if (match === null || INVALID_TRACE.test(match[1]!) || INVALID_TRACE.test(match[2]!)) return undefined
  return Tracer.externalSpan({
    traceId: match[1]!,
    spanId: match[2]!,
    sampled: (Number.parseInt(match[3]!, 16) & 1) === 1
  })
}

/**
 * A link from a consumer's span to the append that stored `event`, or undefined when
 * the event carries no trace context. A consumer continues the producer's trace this
 * way (OpenTelemetry's messaging conventions): one request can be followed from the
 * handler that appended to the read model that consumed.
 *
 * @since 0.1.0
 * @category trace context
 */
export const spanLink = (event: { readonly metadata: EventMetadata }): Tracer.SpanLink | undefined => {
  const span = parseTraceparent(event.metadata.traceparent)
  return span === undefined ? undefined : { _tag: "SpanLink", span, attributes: {} }
}

/**
 * The links of a batch's span to the appends of its events, at most `limit` of them
 * (one per trace context, in order).
 *
 * @since 0.1.0
 * @category trace context
 */
export const spanLinks = (
  events: Iterable<{ readonly metadata: EventMetadata }>,
  limit = 128
): Array<Tracer.SpanLink> => {
  const links: Array<Tracer.SpanLink> = []
  const seen = new Set<string>()
  for (const event of events) {
    if (links.length >= limit) break
    const parent = event.metadata.traceparent
    if (parent === null || seen.has(parent)) continue
    seen.add(parent)
    const link = spanLink(event)
    if (link !== undefined) links.push(link)
  }
  return links
}

/**
 * Runs `self` as a consumer's handling of `event`, outside a projection runner (which
 * does this for its handlers): in a consumer span named `name` that links to the append
 * that stored the event, and caused by the event ({@link causedBy}).
 *
 * @example
 * ```ts
 * store.subscribe().pipe(
 *   Stream.mapEffect((event) => sendEmail(event).pipe(EventMetadata.reactingTo(event, "Mailer.handle")))
 * )
 * ```
 *
 * @since 0.1.0
 * @category trace context
 */
export const reactingTo =
  (event: Reaction & { readonly metadata: EventMetadata }, name: string) =>
  <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => {
    const link = spanLink(event)
    return self.pipe(
      causedBy(event),
      Effect.withSpan(name, { kind: "consumer", links: link === undefined ? [] : [link] })
    )
  }

/**
 * The metadata's JSON document as stored (snake-case keys, null members left out),
 * or null when it has none.
 *
 * @since 0.1.0
 * @category codecs
 */
export const toJson = (metadata: EventMetadata): string | null => {
  if (metadata.correlationId === null && metadata.causationId === null && metadata.traceparent === null) return null
  const document: Record<string, string> = {}
  if (metadata.correlationId !== null) document.correlation_id = metadata.correlationId
  if (metadata.causationId !== null) document.causation_id = metadata.causationId
  if (metadata.traceparent !== null) document.traceparent = metadata.traceparent
  return JSON.stringify(document)
}

/**
 * Reads a stored metadata document (as {@link toJson} writes it, parsed); members of
 * another type, and members Eventfold does not know, are left out.
 *
 * @since 0.1.0
 * @category codecs
 */
export const fromDocument = (document: unknown): EventMetadata => {
  if (typeof document !== "object" || document === null) return empty
  const record = document as Record<string, unknown>
  const text = (value: unknown) => (typeof value === "string" ? value : null)
  const correlationId = text(record.correlation_id)
  const causationId = text(record.causation_id)
  // Only a valid traceparent: it goes into message headers as it is.
  const parent = parseTraceparent(text(record.traceparent)) === undefined ? null : (record.traceparent as string)
  return correlationId === null && causationId === null && parent === null
    ? empty
    : { correlationId, causationId, traceparent: parent }
}

/**
 * The registry maps a stored `event_type` to its schema. It is the one place
 * where stored rows become typed events and typed events become stored rows.
 *
 * @since 0.1.0
 */
import * as Either from "effect/Either"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import { EventDecodeError, InvalidEventError, UnknownEventTypeError } from "./Errors.js"
import type * as Event from "./Event.js"
import * as JsonShape from "./internal/jsonShape.js"
import * as PlainStruct from "./internal/plainStruct.js"
import * as Validate from "./internal/validate.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface EventRegistry {
  readonly types: ReadonlyMap<string, Event.AnyEventType>
  /** Encodes an event value to the JSON payload stored for it. */
  readonly encode: (event: Event.Any) => Either.Either<unknown, UnknownEventTypeError | InvalidEventError>
  /** Decodes a stored payload of the given type; `meta` names the stored event in errors. */
  readonly decode: (
    eventType: string,
    payload: unknown,
    meta: { readonly eventId: string; readonly globalPosition: bigint }
  ) => Either.Either<Event.Any, UnknownEventTypeError | EventDecodeError>
  /**
   * As {@link EventRegistry.decode}, for a payload the caller hands over (a store's
   * read, which gets a payload of its own): when the payload has exactly the event's
   * fields, the event is the payload object itself, given its `_tag`.
   */
  readonly decodeOwned: EventRegistry["decode"]
}

/**
 * Schema's parser, behind the fast path of a plain struct (see internal/plainStruct.ts)
 * when the schema is one; a value the fast path does not accept goes to Schema, which
 * accepts or explains it.
 */
const withFastPath = <A>(
  schema: Schema.Schema.Any,
  parse: (u: unknown) => Either.Either<A, ParseResult.ParseError>
): ((u: unknown) => Either.Either<A, ParseResult.ParseError>) => {
  const fast = PlainStruct.compile(schema.ast)
  const guarded = guard(schema, parse)
  if (fast === undefined) return guarded
  return (u) => {
    const output = fast(u)
    return output === undefined ? guarded(u) : Either.right(output as A)
  }
}

/**
 * Schema's parser recurses with the value (a recursive schema, `Schema.suspend`): a
 * value nested deeper than the stack allows fails to match instead of crashing the caller.
 */
const guard =
  <A>(
    schema: Schema.Schema.Any,
    parse: (u: unknown) => Either.Either<A, ParseResult.ParseError>
  ): ((u: unknown) => Either.Either<A, ParseResult.ParseError>) =>
  (u) => {
    try {
      return parse(u)
    } catch (cause) {
      const reason = cause instanceof Error ? cause.message : String(cause)
      return Either.left(ParseResult.parseError(new ParseResult.Type(schema.ast, u, `cannot be parsed: ${reason}`)))
    }
  }

/**
 * Schema's explanation of a value that does not match, and the ParseError as the cause
 * to keep. Both print the value, and one nested thousands deep overflows the stack:
 * then the message says so and the ParseError is not kept, as it would crash whoever
 * prints the error (`Cause.pretty`, a logger). The error still names the event.
 */
const explain = (
  error: ParseResult.ParseError
): { readonly message: string; readonly cause?: ParseResult.ParseError } => {
  try {
    return { message: ParseResult.TreeFormatter.formatErrorSync(error), cause: error }
  } catch (cause) {
    return {
      message: `the value does not match its schema (too deep to explain: ${cause instanceof Error ? cause.message : String(cause)})`
    }
  }
}

/**
 * Builds a registry from event definitions. What could never be stored and read back
 * is a programming error and throws at once, when the registry is made:
 * - two definitions of one event type;
 * - an event type that is empty, longer than 255 characters, or holds a NUL or a lone
 *   surrogate (the `event_type` column could not store it as given);
 * - a payload schema whose encoded side is not plain JSON: a `Date`
 *   (`Schema.DateFromSelf`; use `Schema.Date`, an ISO string), a `bigint`
 *   (`Schema.BigIntFromSelf`; use `Schema.BigInt`), bytes, a symbol, or `undefined`
 *   where the property is not optional. Stored as JSON, these would read back as
 *   something else, and every read of the event would fail.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (...definitions: ReadonlyArray<Event.AnyEventType>): EventRegistry => {
  const types = new Map<string, Event.AnyEventType>()
  const encoders = new Map<string, (u: unknown) => Either.Either<unknown, ParseResult.ParseError>>()
  const exact = new Map<string, (u: unknown) => boolean>()
  const decoders = new Map<
    string,
    (u: unknown) => Either.Either<{ readonly [k: string]: unknown }, ParseResult.ParseError>
  >()
  for (const definition of definitions) {
    const existing = types.get(definition.type)
    if (existing !== undefined) {
      if (existing === definition) continue
      throw new Error(`EventRegistry: event type "${definition.type}" is defined twice`)
    }
    const badType = Validate.textError("event type", definition.type)
    if (badType !== undefined) throw new Error(`EventRegistry: ${badType.reason}`)
    const notJson = JsonShape.notJson(definition.payload.ast)
    if (notJson !== undefined) {
      throw new Error(`EventRegistry: event type "${definition.type}" cannot be stored: its ${notJson}`)
    }
    types.set(definition.type, definition)
    encoders.set(definition.type, withFastPath(definition.payload, Schema.encodeUnknownEither(definition.payload)))
    decoders.set(
      definition.type,
      withFastPath(definition.decodePayload, Schema.decodeUnknownEither(definition.decodePayload))
    )
    const isExact = PlainStruct.compileExact(definition.decodePayload.ast)
    if (isExact !== undefined) exact.set(definition.type, isExact)
  }

  const encode = (event: Event.Any) => {
    const encoder = typeof event?._tag === "string" ? encoders.get(event._tag) : undefined
    if (encoder === undefined) {
      return Either.left(new UnknownEventTypeError({ eventType: String(event?._tag) }))
    }
    // The tag lives in the event_type column; the payload's Struct has no _tag field, so
    // encoding drops it (excess properties are ignored) and keeps the other fields only.
    const _tag = event._tag
    return encoder(event).pipe(
      Either.mapLeft((error) => {
        const { message, cause } = explain(error)
        return new InvalidEventError({
          reason: `event ${_tag} does not match its schema: ${message}`,
          eventType: _tag,
          ...(cause === undefined ? {} : { cause })
        })
      })
    )
  }

  const decode = (
    eventType: string,
    payload: unknown,
    meta: { readonly eventId: string; readonly globalPosition: bigint }
  ): Either.Either<Event.Any, UnknownEventTypeError | EventDecodeError> => {
    const decoder = decoders.get(eventType)
    if (decoder === undefined) {
      return Either.left(
        new UnknownEventTypeError({ eventType, eventId: meta.eventId, globalPosition: meta.globalPosition })
      )
    }
    // Once per event read: no Either combinators, and the tag set on the Schema's output
    // rather than on a copy of it. The output is the decoder's own object or part of the
    // payload, which backends hand to one read only; an output that is the payload itself
    // (an empty struct) is copied all the same.
    const decoded = decoder(payload)
    if (Either.isLeft(decoded)) {
      const { message, cause } = explain(decoded.left)
      return Either.left(
        new EventDecodeError({
          eventId: meta.eventId,
          eventType,
          globalPosition: meta.globalPosition,
          message,
          ...(cause === undefined ? {} : { cause })
        })
      )
    }
    const fields = decoded.right
    if (fields === payload) return Either.right({ _tag: eventType, ...fields })
    ;(fields as { _tag?: string })._tag = eventType
    return Either.right(fields as unknown as Event.Any)
  }

  const decodeOwned: EventRegistry["decode"] = (eventType, payload, meta) => {
    if (exact.get(eventType)?.(payload) !== true) return decode(eventType, payload, meta)
    ;(payload as { _tag?: string })._tag = eventType
    return Either.right(payload as Event.Any)
  }

  return { types, encode, decode, decodeOwned }
}

/**
 * A registry that merges several (e.g. one per aggregate).
 *
 * @since 0.1.0
 * @category combinators
 */
export const merge = (...registries: ReadonlyArray<EventRegistry>): EventRegistry =>
  make(...registries.flatMap((registry) => [...registry.types.values()]))

import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { InvalidEventError } from "../Errors.js"
import type { Direction, ReadAllOptions, StreamId } from "../EventStore.js"
import type * as Subscription from "../Subscription.js"

// Checks done once in core, before any backend sees the input, so that memory and
// PostgreSQL reject the same inputs with the same typed error and nothing is written.

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** Text columns are VARCHAR(255); PostgreSQL rejects NUL and a lone surrogate would be mangled. */
const MAX_TEXT = 255
// biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is exactly what we reject
const BAD_TEXT = /\u0000|\p{Surrogate}/u

/** In JSON text: a NUL escape or a lone surrogate escape (jsonb rejects both), not preceded by an escaped backslash. */
const BAD_JSON =
  /(?<!\\)(?:\\\\)*\\u(?:0000|d[89ab][0-9a-f]{2}(?!\\ud[c-f][0-9a-f]{2})|(?<!\\ud[89ab][0-9a-f]{2})d[c-f][0-9a-f]{2})/i

// Each check returns the error, or undefined: the append path runs them per event,
// synchronously; the Effect forms below serve the read options.

export const uuidError = (name: string, value: unknown): InvalidEventError | undefined =>
  typeof value === "string" && UUID.test(value)
    ? undefined
    : new InvalidEventError({ reason: `${name} must be a UUID, got ${describe(value)}` })

export const textError = (name: string, value: unknown): InvalidEventError | undefined => {
  if (typeof value !== "string" || value.length === 0) {
    return new InvalidEventError({ reason: `${name} must be a non-empty string, got ${describe(value)}` })
  }
  if (value.length > MAX_TEXT) {
    return new InvalidEventError({ reason: `${name} is longer than ${MAX_TEXT} characters` })
  }
  if (BAD_TEXT.test(value)) {
    return new InvalidEventError({ reason: `${name} contains a NUL character or a lone surrogate` })
  }
  return undefined
}

export const streamError = (stream: StreamId): InvalidEventError | undefined =>
  uuidError("aggregateId", stream?.aggregateId) ?? textError("aggregateType", stream?.aggregateType)

const check = (error: InvalidEventError | undefined) => (error === undefined ? Effect.void : Effect.fail(error))

export const uuid = (name: string, value: unknown) => check(uuidError(name, value))

export const text = (name: string, value: unknown) => check(textError(name, value))

export const stream = (stream: StreamId) => check(streamError(stream))

/** The payload as JSON text, or why PostgreSQL could not store it. */
export const payloadJson = (eventType: string, payload: unknown): Either.Either<string, InvalidEventError> => {
  let json: string
  try {
    // The plain call stays on V8's fast path; a replacer costs twice as much per append.
    // A non-finite number comes out as null, so only a payload with a null is looked at again.
    json = JSON.stringify(payload)
    if (typeof json === "string" && json.includes("null")) JSON.stringify(payload, rejectNonJson)
  } catch (error) {
    // A bigint throws either way; the replacer's message says what to do about it.
    let cause = error
    try {
      JSON.stringify(payload, rejectNonJson)
    } catch (explained) {
      cause = explained
    }
    return Either.left(
      new InvalidEventError({
        reason: `event ${eventType}: payload is not representable as JSON (${cause instanceof Error ? cause.message : cause})`,
        eventType,
        cause
      })
    )
  }
  if (typeof json !== "string" || json[0] !== "{") {
    return Either.left(
      new InvalidEventError({ reason: `event ${eventType}: the encoded payload must be a JSON object`, eventType })
    )
  }
  if (json.includes("\\u") && BAD_JSON.test(json)) {
    return Either.left(
      new InvalidEventError({
        reason: `event ${eventType}: payload contains a NUL character or a lone surrogate, which PostgreSQL cannot store`,
        eventType
      })
    )
  }
  return Either.right(json)
}

/** JSON.stringify would silently turn these into null or drop them: the stored event would not decode. */
const rejectNonJson = (key: string, value: unknown) => {
  if (typeof value === "number" && !Number.isFinite(value)) throw new Error(`${key || "value"} is ${value}`)
  if (typeof value === "bigint") throw new Error(`${key || "value"} is a bigint: encode it (e.g. Schema.BigInt) first`)
  return value
}

export const readAllOptions = (options: ReadAllOptions) =>
  Effect.gen(function* () {
    if (options.limit !== undefined && (!Number.isSafeInteger(options.limit) || options.limit < 0)) {
      return yield* new InvalidEventError({ reason: `limit must be a non-negative integer, got ${options.limit}` })
    }
    if (options.tenantId !== undefined) yield* uuid("tenantId", options.tenantId)
    for (const type of options.aggregateTypes ?? []) yield* text("aggregateTypes", type)
    for (const type of options.eventTypes ?? []) yield* text("eventTypes", type)
    for (const [name, date] of [
      ["since", options.since],
      ["until", options.until]
    ] as const) {
      if (date !== undefined && Number.isNaN(date.getTime())) {
        return yield* new InvalidEventError({ reason: `${name} is an invalid date` })
      }
    }
    const direction: Direction = options.direction ?? "forward"
    return {
      ...options,
      direction,
      ...(options.tenantId === undefined ? {} : { tenantId: options.tenantId.toLowerCase() })
    }
  })

export const subscribeOptions = (options: Subscription.Options) =>
  Effect.gen(function* () {
    const after = options.after ?? 0n
    if (typeof after !== "bigint" || after < 0n) {
      return yield* new InvalidEventError({ reason: `after must be a non-negative bigint, got ${String(after)}` })
    }
    const batchSize = options.batchSize ?? 1000
    if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
      return yield* new InvalidEventError({ reason: `batchSize must be a positive integer, got ${batchSize}` })
    }
    const { tenantId, aggregateTypes, eventTypes } = yield* readAllOptions({
      ...(options.tenantId === undefined ? {} : { tenantId: options.tenantId }),
      ...(options.aggregateTypes === undefined ? {} : { aggregateTypes: options.aggregateTypes }),
      ...(options.eventTypes === undefined ? {} : { eventTypes: options.eventTypes })
    })
    return {
      after,
      batchSize,
      ...(tenantId === undefined ? {} : { tenantId }),
      ...(aggregateTypes === undefined ? {} : { aggregateTypes }),
      ...(eventTypes === undefined ? {} : { eventTypes })
    } satisfies Subscription.BackendOptions
  })

const describe = (value: unknown): string =>
  typeof value === "string" ? JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value) : String(value)

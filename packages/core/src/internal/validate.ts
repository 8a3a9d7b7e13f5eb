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

/** Versions are INTEGER columns. */
export const MAX_VERSION = 2 ** 31 - 1

/** Global positions are BIGINT. */
export const MAX_POSITION = 2n ** 63n - 1n

/** A version bound of a read, within what the column holds; versions lie in 1..MAX_VERSION, so it selects the same events. */
export const versionBound = (version: number): number => Math.min(Math.max(version, 0), MAX_VERSION)

/** The timestamps PostgreSQL takes as ISO text (years 1 to 9999) and gives back unchanged. */
export const MIN_TIME = Date.parse("0001-01-01T00:00:00.000Z")
export const MAX_TIME = Date.parse("9999-12-31T23:59:59.999Z")

/** Why a timestamp cannot be stored, or undefined. */
export const timestampError = (name: string, date: unknown): InvalidEventError | undefined => {
  if (!(date instanceof Date) || Number.isNaN(date.getTime())) {
    return new InvalidEventError({ reason: `${name} is not a valid Date` })
  }
  const time = date.getTime()
  return time < MIN_TIME || time > MAX_TIME
    ? new InvalidEventError({
        reason: `${name} ${date.toISOString()} is outside the years 1 to 9999 that PostgreSQL stores`
      })
    : undefined
}

/** Past this many characters, a payload's size in bytes is counted (jsonb holds at most 255 MiB). */
const MAX_PAYLOAD_BYTES = 0x0fffffff
const MAX_PAYLOAD_CHARS_UNCOUNTED = Math.floor(MAX_PAYLOAD_BYTES / 3)

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

/**
 * The payload as JSON text, or why PostgreSQL could not store it or it would not read
 * back as written. `opaque`: the schema lets values through unchecked
 * (`Schema.Unknown`...), so every value is checked to be plain JSON data.
 */
export const payloadJson = (
  eventType: string,
  payload: unknown,
  opaque = false
): Either.Either<string, InvalidEventError> => {
  let json: string
  try {
    if (opaque) {
      json = JSON.stringify(payload, rejectNonData)
    } else {
      // The plain call stays on V8's fast path; a replacer costs twice as much per append.
      // A non-finite number comes out as null, so only a payload with a null is looked at again.
      json = JSON.stringify(payload)
      if (typeof json === "string" && json.includes("null")) JSON.stringify(payload, rejectNonJson)
    }
  } catch (error) {
    // A bigint throws either way; the replacer's message says what to do about it. Too deep
    // a payload throws a RangeError, which is also the answer.
    let cause = error
    if (!opaque && !(error instanceof RangeError)) {
      try {
        JSON.stringify(payload, rejectNonJson)
      } catch (explained) {
        cause = explained
      }
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
  if (json.length > MAX_PAYLOAD_CHARS_UNCOUNTED && new TextEncoder().encode(json).length > MAX_PAYLOAD_BYTES) {
    return Either.left(
      new InvalidEventError({
        reason: `event ${eventType}: the payload is larger than the ${MAX_PAYLOAD_BYTES} bytes a jsonb value holds`,
        eventType
      })
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

/**
 * Values JSON would change rather than keep: anything but null, booleans, finite numbers,
 * strings, and arrays and objects of plain prototype. An undefined property is dropped
 * (it reads back absent); anywhere else undefined, a function or a symbol would not.
 */
function rejectNonData(this: unknown, key: string, value: unknown): unknown {
  // `value` has been through toJSON already: the holder has the original.
  const original = (this as Record<string, unknown>)[key]
  const name = key || "payload"
  switch (typeof original) {
    case "string":
    case "boolean":
      return value
    case "number":
      if (!Number.isFinite(original)) throw new Error(`${name} is ${original}`)
      return value
    case "bigint":
      throw new Error(`${name} is a bigint: encode it (e.g. Schema.BigInt) first`)
    case "undefined":
      if (Array.isArray(this)) throw new Error(`${name} is undefined in an array, where JSON writes null`)
      return value
    case "function":
    case "symbol":
      throw new Error(`${name} is a ${typeof original}, which JSON drops`)
  }
  if (original === null) return value
  const prototype = Object.getPrototypeOf(original)
  // An array's holes come to the replacer as undefined elements, refused above.
  if (prototype === Array.prototype || prototype === Object.prototype || prototype === null) return value
  const type = (original as { constructor?: { name?: unknown } }).constructor?.name
  throw new Error(
    `${name} is ${typeof type === "string" && type !== "" ? `a ${type}` : "an object"}, not plain JSON data`
  )
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
    // Bounds past the storable range (events lie within it), made into bounds PostgreSQL
    // takes that select the same events: `since` is inclusive, `until` exclusive.
    let since = options.since?.getTime()
    let until = options.until?.getTime()
    if (since !== undefined && since < MIN_TIME) since = undefined
    if (since !== undefined && since > MAX_TIME) {
      since = MAX_TIME
      until = MAX_TIME
    } else if (until !== undefined && until > MAX_TIME) until = undefined
    if (until !== undefined && until < MIN_TIME) until = MIN_TIME
    // Positions likewise: `after` exclusive, `before` exclusive, positions from 1.
    let after = options.after
    let before = options.before
    if (after !== undefined && after < 0n) after = undefined
    if (after !== undefined && after > MAX_POSITION) after = MAX_POSITION
    if (before !== undefined && before > MAX_POSITION) before = undefined
    if (before !== undefined && before < 0n) before = 0n
    const { since: _since, until: _until, after: _after, before: _before, ...rest } = options
    return {
      ...rest,
      ...(after === undefined ? {} : { after }),
      ...(before === undefined ? {} : { before }),
      ...(since === undefined ? {} : { since: new Date(since) }),
      ...(until === undefined ? {} : { until: new Date(until) }),
      direction,
      ...(options.tenantId === undefined ? {} : { tenantId: options.tenantId.toLowerCase() })
    }
  })

export const subscribeOptions = (options: Subscription.Options) =>
  Effect.gen(function* () {
    const after = options.after ?? 0n
    if (typeof after !== "bigint" || after < 0n || after > MAX_POSITION) {
      return yield* new InvalidEventError({
        reason: `after must be a bigint from 0 to ${MAX_POSITION}, got ${String(after)}`
      })
    }
    const batchSize = options.batchSize ?? 1000
    if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
      return yield* new InvalidEventError({ reason: `batchSize must be a positive integer, got ${batchSize}` })
    }
    const name = options.name
    if (name !== undefined && (typeof name !== "string" || name.length === 0 || name.length > 255)) {
      return yield* new InvalidEventError({ reason: `name must have 1 to 255 characters, got ${describe(name)}` })
    }
    const { tenantId, aggregateTypes, eventTypes } = yield* readAllOptions({
      ...(options.tenantId === undefined ? {} : { tenantId: options.tenantId }),
      ...(options.aggregateTypes === undefined ? {} : { aggregateTypes: options.aggregateTypes }),
      ...(options.eventTypes === undefined ? {} : { eventTypes: options.eventTypes })
    })
    return {
      after,
      batchSize,
      ...(name === undefined ? {} : { name }),
      ...(tenantId === undefined ? {} : { tenantId }),
      ...(aggregateTypes === undefined ? {} : { aggregateTypes }),
      ...(eventTypes === undefined ? {} : { eventTypes })
    } satisfies Subscription.BackendOptions
  })

const describe = (value: unknown): string =>
  typeof value === "string" ? JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value) : String(value)

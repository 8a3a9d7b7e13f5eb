import type * as EventStore from "@eventfold/core/EventStore"
import * as Either from "effect/Either"
import * as Schema from "effect/Schema"

/**
 * An int8 column: a bigint when the pool maps OID 20, a string otherwise (pg's default).
 * Either way an exact integer, never a lossy number.
 */
export const Int8 = Schema.Union(Schema.BigIntFromSelf, Schema.BigInt)

/**
 * The columns of `events` a stored event is read from. The two timestamps come as
 * epoch milliseconds: building a Date from a number costs a fraction of parsing
 * pg's timestamptz text (the largest share of client time per event read), and a
 * Date holds milliseconds either way.
 */
export const COLUMNS =
  "global_position, event_id, event_type, aggregate_id, aggregate_type, version, tenant_id, actor_id, " +
  "(extract(epoch FROM timestamp) * 1000)::float8 AS timestamp_ms, " +
  "(extract(epoch FROM created_at) * 1000)::float8 AS created_at_ms, payload"

/** A row that does not have the shape of an `events` row. */
export class MalformedRowError extends Schema.TaggedError<MalformedRowError>()("MalformedRowError", {
  message: Schema.String
}) {}

const text = (row: Record<string, unknown>, column: string): string => {
  const value = row[column]
  if (typeof value !== "string") throw new MalformedRowError({ message: `events.${column} is not text` })
  return value
}

const nullableText = (row: Record<string, unknown>, column: string): string | null =>
  row[column] === null ? null : text(row, column)

const date = (row: Record<string, unknown>, column: string): Date => {
  const value = row[column]
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new MalformedRowError({ message: `events.${column} is not a timestamp in epoch milliseconds` })
  }
  return new Date(Math.floor(value))
}

/** An int8 value as pg returns it (a string, or a bigint with a type parser), or undefined. */
export const int8 = (value: unknown): bigint | undefined =>
  typeof value === "bigint" ? value : typeof value === "string" && /^-?\d+$/.test(value) ? BigInt(value) : undefined

const position = (value: unknown): bigint => {
  const result = int8(value)
  if (result === undefined) throw new MalformedRowError({ message: "events.global_position is not an int8" })
  return result
}

/**
 * Decodes `events` rows (selected with {@link COLUMNS}) into stored events.
 *
 * This is the read path's hottest loop (every event of every read), so the row is
 * checked field by field rather than through a Schema: the same checks a Struct of
 * these column types makes, without its per-row allocations. The payload is left
 * for the registry, which decodes it with the event's own Schema.
 */
export const decodeRows = (
  rows: ReadonlyArray<Record<string, unknown>>
): Either.Either<Array<EventStore.StoredEvent>, MalformedRowError> => {
  const events = new Array<EventStore.StoredEvent>(rows.length)
  try {
    for (let i = 0; i < rows.length; i++) {
      const row = rows[i]!
      const version = row.version
      if (typeof version !== "number") throw new MalformedRowError({ message: "events.version is not an integer" })
      events[i] = {
        eventId: text(row, "event_id"),
        eventType: text(row, "event_type"),
        aggregateId: text(row, "aggregate_id"),
        aggregateType: text(row, "aggregate_type"),
        version,
        tenantId: nullableText(row, "tenant_id"),
        actorId: nullableText(row, "actor_id"),
        timestamp: date(row, "timestamp_ms"),
        globalPosition: position(row.global_position),
        createdAt: date(row, "created_at_ms"),
        payload: row.payload
      }
    }
  } catch (error) {
    if (error instanceof MalformedRowError) return Either.left(error)
    throw error
  }
  return Either.right(events)
}

/** An int4 column as pg parses it (a number) or as text (the lean path), or undefined. */
export const integer = (value: unknown): number | undefined => {
  if (typeof value === "number") return value
  if (typeof value !== "string" || value === "") return undefined
  // Number() and an integer check: cheaper than a pattern, per row read.
  const n = Number(value)
  return Number.isSafeInteger(n) ? n : undefined
}

/** A boolean column as pg parses it or as text ('t'). */
export const boolean = (value: unknown): boolean => value === true || value === "t"

/**
 * Decodes an `events` row selected as [version, event_type, payload::text] for
 * folding, as text (the lean path) or parsed by pg (through @effect/sql in a
 * transaction). Throws a MalformedRowError for a row of another shape.
 */
export const decodeStreamRow = (row: ReadonlyArray<unknown>): EventStore.StoredStreamEvent => {
  const version = integer(row[0])
  const eventType = row[1]
  const payload = row[2]
  if (version === undefined) throw new MalformedRowError({ message: "events.version is not an integer" })
  if (typeof eventType !== "string") throw new MalformedRowError({ message: "events.event_type is not text" })
  if (typeof payload !== "string") throw new MalformedRowError({ message: "events.payload is not text" })
  return { version, eventType, payload: JSON.parse(payload) }
}

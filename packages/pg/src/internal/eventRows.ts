import * as EventMetadata from "@eventfold/core/EventMetadata"
import type * as EventStore from "@eventfold/core/EventStore"
import * as Schema from "effect/Schema"

/**
 * An int8 column: a bigint when the pool maps OID 20, a string otherwise (pg's default).
 * Either way an exact integer, never a lossy number.
 */
export const Int8 = Schema.Union(Schema.BigIntFromSelf, Schema.BigInt)

/**
 * A count, an int4 or a float8 as a number: pg gives int8 (`count(*)`) as a string, or a
 * bigint when the application's client parses int8 so.
 */
export const Count = Schema.Union(
  Schema.Number,
  Schema.NumberFromString,
  Schema.transform(Schema.BigIntFromSelf, Schema.Number, {
    strict: true,
    decode: (n) => Number(n),
    encode: (n) => BigInt(n)
  })
)

/**
 * The columns of `events` a stored event is read from, in the order {@link decodeRow}
 * reads them. The two timestamps come as epoch milliseconds: building a Date from a
 * number costs a fraction of parsing pg's timestamptz text (the largest share of
 * client time per event read), and a Date holds milliseconds either way. The payload
 * comes as text, parsed by {@link decodeRow} on either path (see leanQuery.ts); so
 * does the metadata, NULL for most events.
 */
export const COLUMNS =
  "global_position, event_id, event_type, aggregate_id, aggregate_type, version, tenant_id, actor_id, " +
  "(extract(epoch FROM timestamp) * 1000)::float8, (extract(epoch FROM created_at) * 1000)::float8, payload::text, " +
  "metadata::text"

/** A row that does not have the shape of an `events` row. */
export class MalformedRowError extends Schema.TaggedError<MalformedRowError>()("MalformedRowError", {
  message: Schema.String
}) {}

const text = (value: unknown, column: string): string => {
  if (typeof value !== "string") throw new MalformedRowError({ message: `events.${column} is not text` })
  return value
}

const nullableText = (value: unknown, column: string): string | null => (value === null ? null : text(value, column))

const date = (value: unknown, column: string): Date => {
  const ms = typeof value === "string" ? Number(value) : value
  if (typeof ms !== "number" || !Number.isFinite(ms)) {
    throw new MalformedRowError({ message: `events.${column} is not a timestamp in epoch milliseconds` })
  }
  return new Date(Math.floor(ms))
}

/** An int8 value as pg returns it (a string, or a bigint with a type parser), or undefined. */
export const int8 = (value: unknown): bigint | undefined =>
  typeof value === "bigint" ? value : typeof value === "string" && /^-?\d+$/.test(value) ? BigInt(value) : undefined

/**
 * Decodes an `events` row selected with {@link COLUMNS}, as text (the lean path) or
 * parsed by pg (through @effect/sql in a transaction); throws a MalformedRowError for
 * a row of another shape.
 *
 * This is the read path's hottest code (every event of every read), so the row is
 * checked field by field rather than through a Schema: the same checks a Struct of
 * these column types makes, without its per-row allocations. The payload is left
 * for the registry, which decodes it with the event's own Schema.
 */
export const decodeRow = (row: ReadonlyArray<unknown>): EventStore.StoredEvent => {
  const position = int8(row[0])
  if (position === undefined) throw new MalformedRowError({ message: "events.global_position is not an int8" })
  const version = integer(row[5])
  if (version === undefined) throw new MalformedRowError({ message: "events.version is not an integer" })
  return {
    globalPosition: position,
    eventId: text(row[1], "event_id"),
    eventType: text(row[2], "event_type"),
    aggregateId: text(row[3], "aggregate_id"),
    aggregateType: text(row[4], "aggregate_type"),
    version,
    tenantId: nullableText(row[6], "tenant_id"),
    actorId: nullableText(row[7], "actor_id"),
    timestamp: date(row[8], "timestamp"),
    createdAt: date(row[9], "created_at"),
    metadata:
      row[11] === null ? EventMetadata.empty : EventMetadata.fromDocument(JSON.parse(text(row[11], "metadata"))),
    payload: JSON.parse(text(row[10], "payload"))
  }
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

/** The types of result columns read by name. */
export type ColumnType = "int4" | "int8" | "bool" | "text"

type ColumnValue<T extends ColumnType> = T extends "int4"
  ? number
  : T extends "int8"
    ? bigint
    : T extends "bool"
      ? boolean
      : string

/** A row read by column name: each column's value, or null for SQL NULL. */
export type Named<C extends { readonly [name: string]: ColumnType }> = {
  readonly [K in keyof C]: ColumnValue<C[K]> | null
}

const column = (type: ColumnType, value: unknown, name: string): unknown => {
  switch (type) {
    case "int4": {
      const n = integer(value)
      if (n === undefined) throw new MalformedRowError({ message: `column ${name} is not an integer` })
      return n
    }
    case "int8": {
      const n = int8(value)
      if (n === undefined) throw new MalformedRowError({ message: `column ${name} is not an int8` })
      return n
    }
    case "bool":
      if (value !== true && value !== false && value !== "t" && value !== "f") {
        throw new MalformedRowError({ message: `column ${name} is not a boolean` })
      }
      return value === true || value === "t"
    case "text":
      return text(value, name)
  }
}

/**
 * Reads rows (arrays of columns, text or parsed by pg) into records keyed by the
 * statement's result column names. `columns` lists them in the statement's order, with
 * their types; a value of another type throws a MalformedRowError.
 */
export const columns = <const C extends { readonly [name: string]: ColumnType }>(spec: C) => {
  const entries = Object.entries(spec)
  return (row: ReadonlyArray<unknown>): Named<C> => {
    const result: { [name: string]: unknown } = {}
    for (let i = 0; i < entries.length; i++) {
      const [name, type] = entries[i]!
      const value = row[i]
      result[name] = value === null || value === undefined ? null : column(type, value, name)
    }
    return result as Named<C>
  }
}

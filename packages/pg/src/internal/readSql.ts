/**
 * The statements that read stored events. The hot ones (a stream, the whole log, a
 * subscription's page) have fixed texts and run as named prepared statements; their
 * generic plans are checked on an empty table (test/PgEventStore.test.ts). A read
 * with filters (tenant, types, time window) runs unnamed, planned for its values on
 * every run: a generic plan made while the table was small (a sequential scan, or
 * the tenant index and a sort) would be kept as the table grows.
 */
import type * as EventStore from "@eventfold/core/EventStore"
import * as EventRows from "./eventRows.js"
import type * as LeanQuery from "./leanQuery.js"

/** A PostgreSQL array literal of text: each element quoted, `"` and `\\` escaped. */
export const textArray = (values: ReadonlyArray<string>): string =>
  `{${values.map((value) => `"${value.replace(/["\\]/g, "\\$&")}"`).join(",")}}`

/**
 * A SELECT of stored events, built condition by condition with numbered parameters.
 * Without filters its text depends only on its shape, and it is one named prepared
 * statement per connection; with filters it runs unnamed.
 */
export class EventQuery {
  readonly values: Array<unknown> = []
  private readonly conditions: Array<string> = []
  private filtered = false

  param(value: unknown, type: string): string {
    this.values.push(value)
    return `$${this.values.length}::${type}`
  }

  where(condition: string): this {
    this.conditions.push(condition)
    return this
  }

  /** A condition that makes the statement's plan depend on its values (a time window). */
  filter(condition: string): this {
    this.filtered = true
    return this.where(condition)
  }

  /** Tenant, aggregate types and event types: the filters of readAll and subscribe. */
  filters(options: {
    readonly tenantId?: string | undefined
    readonly aggregateTypes?: ReadonlyArray<string> | undefined
    readonly eventTypes?: ReadonlyArray<string> | undefined
  }): this {
    this.filtered ||=
      options.tenantId !== undefined || options.aggregateTypes !== undefined || options.eventTypes !== undefined
    if (options.tenantId !== undefined) this.where(`tenant_id = ${this.param(options.tenantId, "uuid")}`)
    if (options.aggregateTypes !== undefined) {
      this.where(`aggregate_type = ANY (${this.param(textArray(options.aggregateTypes), "varchar[]")})`)
    }
    if (options.eventTypes !== undefined) {
      this.where(`event_type = ANY (${this.param(textArray(options.eventTypes), "varchar[]")})`)
    }
    return this
  }

  statement(order: string, limit: number): LeanQuery.Statement {
    const text = `SELECT ${EventRows.COLUMNS} FROM events${
      this.conditions.length === 0 ? "" : ` WHERE ${this.conditions.join(" AND ")}`
    } ORDER BY ${order} LIMIT ${this.param(limit, "int")}`
    if (this.filtered) return { name: "", text }
    let name = statementNames.get(text)
    if (name === undefined) {
      name = `eventfold_read_${statementNames.size + 1}`
      statementNames.set(text, name)
    }
    return { name, text }
  }
}

/** One name per statement text, for the process: pg keys prepared statements by name on each connection. */
const statementNames = new Map<string, string>()

/** A page of a stream for folding: the narrow columns, by the (aggregate_id, aggregate_type, version) index. */
export const READ_STREAM_EVENTS: LeanQuery.Statement = {
  name: "eventfold_read_stream_events",
  // The payload as text on both paths (pg would parse jsonb through @effect/sql, not on the lean one).
  text: `SELECT version, event_type, payload::text FROM events
          WHERE aggregate_id = $1::uuid AND aggregate_type = $2::varchar AND version >= $3::int
          ORDER BY version LIMIT $4::int`
}

/** {@link READ_STREAM_EVENTS} in a tenant scope: only the tenant's rows, whoever reads. */
export const READ_STREAM_EVENTS_TENANT: LeanQuery.Statement = {
  name: "eventfold_read_stream_events_tenant",
  text: `SELECT version, event_type, payload::text FROM events
          WHERE aggregate_id = $1::uuid AND aggregate_type = $2::varchar AND tenant_id = $5::uuid
            AND version >= $3::int
          ORDER BY version LIMIT $4::int`
}

/**
 * A page of one stream from `cursor` towards `bound` (inclusive both), and its order;
 * with `tenantId`, only that tenant's rows (a stream is one tenant's: all or nothing).
 */
export const streamPage = (
  stream: EventStore.StreamId,
  forward: boolean,
  cursor: number,
  bound: number,
  tenantId: string | null = null
): readonly [EventQuery, string] => {
  const query = new EventQuery()
  query
    .where(`aggregate_id = ${query.param(stream.aggregateId, "uuid")}`)
    .where(`aggregate_type = ${query.param(stream.aggregateType, "varchar")}`)
    .where(`version ${forward ? ">=" : "<="} ${query.param(cursor, "int")}`)
    .where(`version ${forward ? "<=" : ">="} ${query.param(bound, "int")}`)
  if (tenantId !== null) query.where(`tenant_id = ${query.param(tenantId, "uuid")}`)
  return [query, forward ? "version ASC" : "version DESC"]
}

/** A page of the global log past `cursor` (none: from the start, or from the end backwards), and its order. */
export const logPage = (
  options: EventStore.ReadAllOptions & { readonly direction: EventStore.Direction },
  cursor: bigint | undefined
): readonly [EventQuery, string] => {
  const forward = options.direction === "forward"
  const query = new EventQuery().filters(options)
  if (options.since !== undefined)
    query.filter(`timestamp >= ${query.param(options.since.toISOString(), "timestamptz")}`)
  if (options.until !== undefined)
    query.filter(`timestamp < ${query.param(options.until.toISOString(), "timestamptz")}`)
  if (options.before !== undefined && forward) query.where(`global_position < ${query.param(options.before, "int8")}`)
  if (options.after !== undefined && !forward) query.where(`global_position > ${query.param(options.after, "int8")}`)
  if (cursor !== undefined) query.where(`global_position ${forward ? ">" : "<"} ${query.param(cursor, "int8")}`)
  return [query, forward ? "global_position ASC" : "global_position DESC"]
}

/** A subscription's page: positions in (after, upTo], filtered. */
export const subscriptionPage = (
  options: {
    readonly tenantId?: string | undefined
    readonly aggregateTypes?: ReadonlyArray<string> | undefined
    readonly eventTypes?: ReadonlyArray<string> | undefined
  },
  after: bigint,
  upTo: bigint
): readonly [EventQuery, string] => {
  const query = new EventQuery().filters(options)
  query
    .where(`global_position > ${query.param(after, "int8")}`)
    .where(`global_position <= ${query.param(upTo, "int8")}`)
  return [query, "global_position ASC"]
}

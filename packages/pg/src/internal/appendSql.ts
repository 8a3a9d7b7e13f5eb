/**
 * The statements of an append: one statement per append, whatever the batch size,
 * and the lookups that explain an append that did not go in.
 *
 * **Stream heads.** Every stream has a row in `event_streams` holding its last
 * version. An append moves the head and inserts the events in one statement: the
 * head's row lock is the stream's point of serialization, so the version an append
 * numbers its events from is always the stream's, and
 *
 * - `exact(n)` updates the head only `WHERE version = n`: a writer that lost a race
 *   waits for the winner's commit, re-reads the row (READ COMMITTED re-checks an
 *   updated row) and updates nothing;
 * - `noStream` inserts the head `ON CONFLICT DO NOTHING`;
 * - `any` upserts the head, and `streamExists` updates it unconditionally: they always
 *   land at the next version, however many writers race;
 * - the events take the versions after the head's old value, so no gap is possible,
 *   and the unique constraint on (aggregate_id, aggregate_type, version) is never the
 *   arbiter of a race, only a last line of defence.
 *
 * **Tenants.** A stream's tenant is fixed by its first append: the head keeps it, and an
 * append moves only a head of its own tenant (`tenant_id IS NOT DISTINCT FROM`, so no
 * tenant is a tenant too). An append to another tenant's stream moves nothing and inserts
 * nothing, as superuser too; the lookups below then say why (`foreign_tenant`). Under
 * row-level security (migration 12) another tenant's head is invisible, so the lookups
 * ask `eventfold_stream_tenant_differs`, a SECURITY DEFINER function, when they see no
 * head and row-level security binds the caller; an `any` append meets that head through its primary key and fails the policy
 * (SQLSTATE 42501), which the decisions explain the same way.
 *
 * The head also outlives its events: a stream whose old events were archived or
 * deleted keeps its version, so a version is never handed out twice (the lifecycle
 * of streams, archiving and deletion, builds on this row; so does uniqueness of
 * versions when `events` is partitioned and its unique constraints can no longer
 * span the table).
 *
 * Statements name their parameters; {@link Statement.params} lists them in order, so
 * that values are bound by name, never by position. Their result columns are named
 * too, and read by name (see `appendDecision.ts`). Every lookup in them is an equality
 * on a primary or unique key or on the leading columns of the version index, so the
 * generic plan PostgreSQL settles on after five runs is the right one even when it
 * was made while the tables were empty (test/PgEventStore.test.ts).
 */

/**
 * What the append checks the stream's head against.
 */
export type Base = "exact" | "noStream" | "any" | "streamExists"

/** One event (its fields as parameters) or a batch (one JSON document). */
export type Shape = "single" | "batch"

/** The parameters a statement may bind, by name. */
export interface Parameters {
  readonly aggregateId: string
  readonly aggregateType: string
  readonly tenantId: string | null
  readonly actorId: string | null
  /** The append's metadata document (JSON text), or null when it has none. */
  readonly metadata: string | null
  /** The expected version (base "exact"). */
  readonly expected: number
  /** How many events the append has. */
  readonly count: number
  /** A single event's fields. */
  readonly eventId: string
  readonly eventType: string
  readonly timestamp: string
  readonly payload: string
  /** A batch, as one JSON array of {event_id, event_type, timestamp, payload}. */
  readonly events: string
  /** The batch's event ids, as a uuid[] literal. */
  readonly eventIds: string
  /** The version the stream's events reach (head repair). */
  readonly lastVersion: number
}

/** A statement: its name (prepared once per connection), text, and parameters in order. */
export interface Statement<P extends keyof Parameters = keyof Parameters> {
  readonly name: string
  readonly text: string
  readonly params: ReadonlyArray<P>
}

/** Numbers parameters in order of first use: `$1::uuid`, ... */
const binder = () => {
  const params: Array<keyof Parameters> = []
  const bind = (name: keyof Parameters, type: string) => {
    let index = params.indexOf(name)
    if (index < 0) index = params.push(name) - 1
    return `$${index + 1}::${type}`
  }
  return { params, bind }
}

/** The values of a statement's parameters, in its order. */
export const values = (statement: Statement, parameters: Partial<Parameters>): ReadonlyArray<unknown> =>
  statement.params.map((name) => parameters[name])

const COLUMNS =
  "event_id, aggregate_id, aggregate_type, event_type, tenant_id, actor_id, version, timestamp, payload, metadata"

/**
 * The append. Result columns: `version` (the stream's version after it, null when
 * nothing went in), `first_position`, `last_position`. A single event without the
 * outbox returns no row when it did not go in; the others return one row whose
 * `version` is null. With `outbox`, it also writes one `event_outbox` entry per event
 * and notifies `eventfold_outbox` (delivered at commit).
 */
export const appendStatement = (base: Base, shape: Shape, outbox: boolean): Statement => {
  const { bind, params } = binder()
  const id = bind("aggregateId", "uuid")
  const type = bind("aggregateType", "varchar")
  const tenant = bind("tenantId", "uuid")
  const actor = bind("actorId", "varchar")
  const metadata = bind("metadata", "jsonb")
  const count = shape === "single" ? "1" : bind("count", "int")
  const stream = `aggregate_id = ${id} AND aggregate_type = ${type}`
  const ownTenant = `tenant_id IS NOT DISTINCT FROM ${tenant}`
  const head =
    base === "exact"
      ? `UPDATE event_streams SET version = version + ${count}, updated_at = now()
   WHERE ${stream} AND version = ${bind("expected", "int")} AND ${ownTenant}
  RETURNING version`
      : base === "streamExists"
        ? `UPDATE event_streams SET version = version + ${count}, updated_at = now()
   WHERE ${stream} AND ${ownTenant}
  RETURNING version`
        : `INSERT INTO event_streams AS s (aggregate_id, aggregate_type, tenant_id, version)
  VALUES (${id}, ${type}, ${tenant}, ${count})
  ON CONFLICT (aggregate_id, aggregate_type) DO ${
    base === "any"
      ? "UPDATE SET version = s.version + EXCLUDED.version, updated_at = now()\n   WHERE s.tenant_id IS NOT DISTINCT FROM EXCLUDED.tenant_id"
      : "NOTHING"
  }
  RETURNING s.version`
  const insert =
    shape === "single"
      ? `INSERT INTO events (${COLUMNS})
  SELECT ${bind("eventId", "uuid")}, ${id}, ${type}, ${bind("eventType", "varchar")}, ${tenant}, ${actor}, head.version,
         ${bind("timestamp", "timestamptz")}, ${bind("payload", "jsonb")}, ${metadata}
    FROM head`
      : `INSERT INTO events (${COLUMNS})
  SELECT (i.d->>'event_id')::uuid, ${id}, ${type}, i.d->>'event_type', ${tenant}, ${actor},
         head.version - ${count} + i.n::int, (i.d->>'timestamp')::timestamptz, i.d->'payload', ${metadata}
    FROM head, jsonb_array_elements(${bind("events", "jsonb")}) WITH ORDINALITY AS i(d, n)
   ORDER BY i.n`
  const name = `eventfold_append_${base}_${shape}${outbox ? "_outbox" : ""}`
  if (shape === "single" && !outbox) {
    return {
      name,
      params,
      text: `WITH head AS (
  ${head}
)
${insert}
RETURNING version, global_position AS first_position, global_position AS last_position`
    }
  }
  const returning = outbox
    ? "RETURNING global_position, event_id, event_type, version, timestamp, payload"
    : "RETURNING global_position, version"
  const outboxed = outbox
    ? `, outboxed AS (
  INSERT INTO event_outbox (event_id, event_type, aggregate_id, aggregate_type, tenant_id, actor_id, event_data,
                            global_position, version, occurred_at, metadata)
  SELECT inserted.event_id, inserted.event_type, ${id}, ${type}, ${tenant}, ${actor}, inserted.payload,
         inserted.global_position, inserted.version, inserted.timestamp, ${metadata}
    FROM inserted
)`
    : ""
  return {
    name,
    params,
    text: `WITH head AS (
  ${head}
), inserted AS (
  ${insert}
  ${returning}
)${outboxed}
SELECT max(inserted.version) AS version,
       min(inserted.global_position) AS first_position, max(inserted.global_position) AS last_position
  FROM inserted${outbox ? ", (SELECT pg_notify('eventfold_outbox', current_schema())) AS notified" : ""}`
  }
}

const headVersion = (id: string, type: string) =>
  `coalesce((SELECT s.version FROM event_streams s WHERE s.aggregate_id = ${id} AND s.aggregate_type = ${type}), 0)`

/**
 * Whether the stream's head belongs to another tenant than the append's: read from the
 * head when it is visible, else, for a role that row-level security binds (only then:
 * the call is the expensive part, and only such roles may make it), asked of the
 * SECURITY DEFINER function that sees past it and compares with the tenant set.
 */
const foreignTenant = (id: string, type: string, tenant: string) =>
  `coalesce((SELECT s.tenant_id IS DISTINCT FROM ${tenant} FROM event_streams s
                    WHERE s.aggregate_id = ${id} AND s.aggregate_type = ${type}),
                 CASE WHEN row_security_active('event_streams')
                      THEN eventfold_stream_tenant_differs(${id}, ${type}) ELSE false END)`

/** The last version of the stream's stored events, 0 when it has none: one backward probe of the version index. */
const lastVersion = (id: string, type: string) =>
  `coalesce((SELECT v.version FROM events v WHERE v.aggregate_id = ${id} AND v.aggregate_type = ${type}
                  ORDER BY v.version DESC LIMIT 1), 0)`

/**
 * Why a single event did not go in: the stream's head (result `head_version`, 0 when
 * it has none), the last version of its stored events (`last_version`; above the head
 * only when events were written around the store), and whether the event's id is
 * stored already (`stored`; then {@link explainStatement} tells a replay from a
 * duplicate), and whether the stream belongs to another tenant (`foreign_tenant`).
 * Index probes, planned once.
 */
export const headStatement: Statement = (() => {
  const { bind, params } = binder()
  const id = bind("aggregateId", "uuid")
  const type = bind("aggregateType", "varchar")
  return {
    name: "eventfold_append_head",
    params,
    text: `SELECT ${headVersion(id, type)} AS head_version,
       ${lastVersion(id, type)} AS last_version,
       EXISTS (SELECT 1 FROM events x WHERE x.event_id = ${bind("eventId", "uuid")}) AS stored,
       ${foreignTenant(id, type, bind("tenantId", "uuid"))} AS foreign_tenant`
  }
})()

/**
 * Why an append did not go in, or met a unique constraint: the stream's head
 * (`head_version`) and the last version of its stored events (`last_version`; above
 * the head only when events were written around the store), and which of the batch's
 * ids are stored already, with where they are, to tell an idempotent replay from a
 * duplicate: `found`, `same_stream` (all in this stream), `base_min`/`base_max` (each
 * stored version minus its place in the batch: equal when the ids are stored at
 * consecutive versions in the batch's order), `replay_version`, `first_position`,
 * `last_position`, `duplicate_event_id` (the first of the batch found); whether the
 * stream belongs to another tenant (`foreign_tenant`), and, when some ids were not
 * found, the first of them stored by another tenant (`foreign_event_id`: under
 * row-level security the ids of other tenants are invisible, yet taken).
 */
export const explainStatement: Statement = (() => {
  const { bind, params } = binder()
  const id = bind("aggregateId", "uuid")
  const type = bind("aggregateType", "varchar")
  const tenant = bind("tenantId", "uuid")
  const ids = bind("eventIds", "uuid[]")
  return {
    name: "eventfold_append_explain",
    params,
    // One probe of events_event_id_key per id (a lateral equality, kept apart by its LIMIT):
    // `event_id = ANY($3)` gets a sequential scan as its generic plan when the table was
    // small at planning, and keeps it as the table grows.
    text: `SELECT ${headVersion(id, type)} AS head_version,
       ${lastVersion(id, type)} AS last_version,
       count(e.event_id)::int AS found,
       coalesce(bool_and(e.aggregate_id = ${id} AND e.aggregate_type = ${type}), false) AS same_stream,
       min(e.version - ids.n::int) AS base_min,
       max(e.version - ids.n::int) AS base_max,
       max(e.version) AS replay_version,
       min(e.global_position) AS first_position,
       max(e.global_position) AS last_position,
       (array_agg(e.event_id::text ORDER BY ids.n) FILTER (WHERE e.event_id IS NOT NULL))[1] AS duplicate_event_id,
       ${foreignTenant(id, type, tenant)} AS foreign_tenant,
       CASE WHEN count(e.event_id) < count(*) AND row_security_active('events')
            THEN eventfold_event_of_another_tenant(${ids})::text END AS foreign_event_id
  FROM unnest(${ids}) WITH ORDINALITY AS ids(event_id, n)
  LEFT JOIN LATERAL (SELECT x.event_id, x.aggregate_id, x.aggregate_type, x.version, x.global_position
                       FROM events x WHERE x.event_id = ids.event_id LIMIT 1) AS e ON true`
  }
})()

/**
 * Raises a stream's head to the last version of its stored events (written around
 * the store, by SQL of the application's), creating the head when it has none. The
 * head never goes down.
 */
export const repairStatement: Statement = (() => {
  const { bind, params } = binder()
  const id = bind("aggregateId", "uuid")
  const type = bind("aggregateType", "varchar")
  return {
    name: "eventfold_append_repair",
    params,
    text: `INSERT INTO event_streams AS s (aggregate_id, aggregate_type, tenant_id, version)
SELECT ${id}, ${type},
       (SELECT e.tenant_id FROM events e WHERE e.aggregate_id = ${id} AND e.aggregate_type = ${type}
         ORDER BY e.version LIMIT 1),
       ${bind("lastVersion", "int")}
ON CONFLICT (aggregate_id, aggregate_type) DO UPDATE
   SET version = greatest(s.version, EXCLUDED.version), updated_at = now()`
  }
})()

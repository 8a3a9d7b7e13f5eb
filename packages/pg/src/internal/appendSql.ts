/**
 * The statements of an append: one INSERT per append, whatever the batch size, and
 * lookups that explain an append that did not go in.
 *
 * Optimistic concurrency is the unique constraint on (aggregate_id, aggregate_type,
 * version), as in plain SQL. Versions are numbered from the expected one, and what
 * the constraint cannot see, a gap, is ruled out before the insert:
 *
 * - `exact(n)`, base "expected": the statement reads the stream's last version (one
 *   backward probe of that index) and inserts only if it is n, so no gap is possible
 *   and a writer that read an older version inserts nothing, without an error;
 * - `exact(n)` when version n is known to be stored, and `noStream` (n = 0), base
 *   "known" (or "contended"): no probe. Events are never removed from a stream, so
 *   a version once seen committed stays; the store keeps the last one it saw of
 *   recent streams (internal/knownVersions.ts). Whether n + 1 is free is the
 *   constraint's;
 * - `any` and `streamExists`, base "head": the probe gives the version to number from.
 *
 * Nothing else serializes writers: an append costs what a plain INSERT of the same
 * rows costs, plus that probe when the expected version is not known. Two writers
 * that read the same version meet at the constraint. Measured with pgbench, 16
 * clients appending single events to streams of 10, against the plain INSERT: 0.85x
 * with the probe and `ON CONFLICT DO NOTHING`, 0.95x with neither.
 *
 * So a single event of base "known", the common case, is a plain INSERT: a lost race
 * is a unique violation. Where races are lost, a single event is inserted `ON
 * CONFLICT (aggregate_id, aggregate_type, version) DO NOTHING`, so the loser inserts
 * nothing and raises nothing either: behind the probe (its cost is paid already, and
 * a stale writer inserts nothing), and on a stream where an append lost a race
 * before (base "contended"). A unique violation costs the server a heap insert
 * rolled back, and the client an Error (11-30 us); 8 writers racing on one stream
 * (W6) do it on four appends of five. Any other unique violation (a duplicate event
 * id, an index of the application's) raises. A batch cannot skip conflicts (some
 * rows could go in and others not): it fails whole. In a caller's transaction the
 * statement runs under a savepoint, so that no failure aborts it.
 *
 * A single event that did not go in, or met the version constraint, is looked up
 * with {@link headStatement}: the stream's version and whether the event's id is
 * stored, two index probes planned once. Only a stored id, a batch, or another
 * unique violation needs {@link explainStatement}, whose array of ids makes
 * PostgreSQL plan it on every run (0.15-0.4 ms of planning: a conflict cost 410 us
 * of server CPU with it, against 230 us for raw SQL's failed INSERT and lookup;
 * about 150 us with the head lookup).
 *
 * The INSERT could return the version itself when it inserts nothing (a CTE and a
 * UNION ALL), but that made every successful append about 10% slower.
 *
 * The texts are constants, run as named prepared statements (parsed once per
 * connection); every lookup in them is an equality on a unique index or on the
 * leading columns of the version index, so the generic plan PostgreSQL settles on
 * after five executions is the right one even when it was made while the table was
 * empty (test/PgEventStore.test.ts).
 */

/**
 * What the expectation is checked against: the stream's last version read by the
 * statement ("expected"), nothing since the expected version is known to be stored
 * ("known", and "contended" for a stream where races are lost, whose single events
 * skip a taken version), or whether the stream exists ("head").
 */
export type Base = "expected" | "known" | "contended" | "head"

/** One event (scalar parameters) or a batch (one JSON document). */
export type Shape = "single" | "batch"

/**
 * Parameters, in order, of {@link appendStatement}: the stream and its expectation,
 * then the event's fields (single) or the batch as one JSON array of
 * {event_id, event_type, timestamp, payload} (batch).
 */
export type AppendParameters = readonly [
  aggregateId: string,
  aggregateType: string,
  tenantId: string | null,
  actorId: string | null,
  /** base "head": whether the stream must exist; any other: the expected version (0: no stream). */
  expected: number | boolean,
  ...event: [eventId: string, eventType: string, timestamp: string, payload: string] | [events: string]
]

const COLUMNS = "event_id, aggregate_id, aggregate_type, event_type, tenant_id, actor_id, version, timestamp, payload"

/** The stream ($1, $2)'s last version, 0 when it has none: a backward probe of the version index. */
const LAST_VERSION = `coalesce((SELECT e.version FROM events e
                     WHERE e.aggregate_id = $1::uuid AND e.aggregate_type = $2::varchar
                     ORDER BY e.version DESC LIMIT 1), 0)`

const HEAD = `(SELECT ${LAST_VERSION} AS version) AS h`

/**
 * The append. Returns one row for a single event, none when it did not go in; one
 * row for a batch, with `inserted` 0 when it did not go in. Columns: `inserted`,
 * `version` (the stream's version after it), `first_position` and `last_position`.
 * With `outbox`, it also writes one `event_outbox` entry per event and notifies
 * `eventfold_outbox` (delivered at commit).
 *
 * A single event, the common case, is a plain INSERT ... SELECT of its parameters:
 * no document to build or take apart.
 */
export const appendStatement = (
  base: Base,
  shape: Shape,
  outbox: boolean
): { readonly name: string; readonly text: string } => {
  // With an expected version the versions are numbered from it (the guard makes it the
  // stream's, or it is known to be stored and the constraint decides the rest).
  const from = base === "head" ? "h.version" : "$5::int"
  const fields =
    shape === "single"
      ? `$6::uuid, $1::uuid, $2::varchar, $7::varchar, $3::uuid, $4::varchar, ${from} + 1, $8::timestamptz, $9::jsonb`
      : `(i.d->>'event_id')::uuid, $1::uuid, $2::varchar, i.d->>'event_type', $3::uuid, $4::varchar, ${from} + i.n::int,
         (i.d->>'timestamp')::timestamptz, i.d->'payload'`
  const probe = base === "expected" || base === "head"
  const sources = [
    ...(probe ? [HEAD] : []),
    ...(shape === "batch" ? ["jsonb_array_elements($6::jsonb) WITH ORDINALITY AS i(d, n)"] : [])
  ]
  const guard =
    base === "expected" ? "h.version = $5::int" : base === "head" ? "NOT $5::boolean OR h.version > 0" : undefined
  const insert = [
    `INSERT INTO events (${COLUMNS})`,
    `  SELECT ${fields}`,
    ...(sources.length === 0 ? [] : [`    FROM ${sources.join(",\n         ")}`]),
    ...(guard === undefined ? [] : [`   WHERE ${guard}`]),
    ...(shape === "batch"
      ? ["   ORDER BY i.n"]
      : base === "known"
        ? []
        : ["  ON CONFLICT (aggregate_id, aggregate_type, version) DO NOTHING"])
  ].join("\n")
  const name = `eventfold_append_${base}_${shape}${outbox ? "_outbox" : ""}`
  if (shape === "single" && !outbox) {
    return {
      name,
      text: `${insert}
  RETURNING 1 AS inserted, version, global_position AS first_position, global_position AS last_position`
    }
  }
  const returning = outbox
    ? "RETURNING global_position, event_id, event_type, version, timestamp, payload"
    : "RETURNING global_position, version"
  const outboxed = outbox
    ? `, outboxed AS (
  INSERT INTO event_outbox (event_id, event_type, aggregate_id, aggregate_type, tenant_id, actor_id, event_data,
                            global_position, version, occurred_at)
  SELECT inserted.event_id, inserted.event_type, $1::uuid, $2::varchar, $3::uuid, $4::varchar, inserted.payload,
         inserted.global_position, inserted.version, inserted.timestamp
    FROM inserted
)`
    : ""
  return {
    name,
    text: `WITH inserted AS (
  ${insert}
  ${returning}
)${outboxed}
SELECT count(*)::int AS inserted, max(inserted.version) AS version,
       min(inserted.global_position) AS first_position, max(inserted.global_position) AS last_position
  FROM inserted${outbox ? ", (SELECT pg_notify('eventfold_outbox', 'append')) AS notified" : ""}`
  }
}

/**
 * Why an append did not go in, read after it failed: the stream's version now, and
 * which of the batch's ids are stored already (with where they are, to tell an
 * idempotent replay from a duplicate). Parameters: aggregate id, aggregate type,
 * the batch's event ids in order.
 */
export const explainStatement = {
  name: "eventfold_append_explain",
  // One probe of events_event_id_key per id (a lateral equality, kept apart by its LIMIT):
  // `event_id = ANY($3)` gets a sequential scan as its generic plan when the table was
  // small at planning, and keeps it as the table grows.
  text: `SELECT ${LAST_VERSION} AS current_version,
       count(e.event_id)::int AS found,
       coalesce(bool_and(e.aggregate_id = $1::uuid AND e.aggregate_type = $2::varchar), false) AS same_stream,
       min(e.version - ids.n::int) AS base_min,
       max(e.version - ids.n::int) AS base_max,
       max(e.version) AS last_version,
       min(e.global_position) AS first_position,
       max(e.global_position) AS last_position,
       (array_agg(e.event_id::text ORDER BY ids.n) FILTER (WHERE e.event_id IS NOT NULL))[1] AS duplicate_event_id
  FROM unnest($3::uuid[]) WITH ORDINALITY AS ids(event_id, n)
  LEFT JOIN LATERAL (SELECT x.event_id, x.aggregate_id, x.aggregate_type, x.version, x.global_position
                       FROM events x WHERE x.event_id = ids.event_id LIMIT 1) AS e ON true`
} as const

/**
 * Why a single event did not go in, read after it: the stream's version now, and
 * whether the event's id is stored already (then {@link explainStatement} tells a
 * replay from a duplicate). Parameters: aggregate id, aggregate type, event id.
 */
export const headStatement = {
  name: "eventfold_append_head",
  text: `SELECT ${LAST_VERSION} AS current_version,
       EXISTS (SELECT 1 FROM events x WHERE x.event_id = $3::uuid) AS known`
} as const

/**
 * The SQL functions of the schema, each defined once, here. Migrations change
 * tables; functions are re-applied (CREATE OR REPLACE, in one transaction under the
 * migration lock) by every `PgMigrations.run`, after the migrations, so that a
 * function's current body is its only definition instead of a copy in every
 * migration that changed it. `drops` removes signatures a later version replaced.
 */

export interface SqlFunction {
  readonly name: string
  /** Signatures this definition replaces, dropped before it is created. */
  readonly drops: ReadonlyArray<string>
  readonly sql: string
}

/**
 * One round trip per append, whatever the batch size. Writers of one stream are
 * serialized by a transaction-scoped advisory lock, so the version read after taking
 * it is the committed one and the expectation is checked exactly: a conflict is a
 * result row, not an exception, and never aborts a caller's transaction. The unique
 * constraint on (aggregate_id, aggregate_type, version) stays the last line of
 * defence against writers that bypass this function.
 *
 * Every lookup is written to use its index whatever the planner knew when the
 * session cached its plan: the event ids as `= ANY(array)` on events_event_id_key,
 * planned afresh on every call (a generic plan made while the table was new is a
 * sequential scan, so each append became O(table)), and the stream's version as a
 * backward scan, LIMIT 1, of the (aggregate_id, aggregate_type, version) index.
 *
 * With p_outbox it writes one event_outbox entry per inserted event (none for an
 * idempotent replay), and a notification on eventfold_outbox, delivered at commit.
 */
const append: SqlFunction = {
  name: "eventfold_append",
  drops: ["eventfold_append(UUID, VARCHAR, TEXT, INTEGER, UUID, VARCHAR, JSONB)"],
  sql: `
CREATE OR REPLACE FUNCTION eventfold_append(
  p_aggregate_id UUID,
  p_aggregate_type VARCHAR,
  p_expected TEXT,
  p_expected_version INTEGER,
  p_tenant_id UUID,
  p_actor_id VARCHAR,
  p_events JSONB,
  p_outbox BOOLEAN DEFAULT FALSE
) RETURNS TABLE (
  status TEXT,
  stream_version INTEGER,
  first_position BIGINT,
  last_position BIGINT,
  duplicate_event_id UUID
) LANGUAGE plpgsql AS $fn$
DECLARE
  v_count INTEGER := jsonb_array_length(p_events);
  v_ids UUID[];
  v_current INTEGER;
  v_found INTEGER;
  v_same_stream BOOLEAN;
  v_base_min INTEGER;
  v_base_max INTEGER;
  v_first BIGINT;
  v_last BIGINT;
  v_last_version INTEGER;
  v_duplicate UUID;
  v_inserted INTEGER;
  v_positions BIGINT[];
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended(p_aggregate_type || '/' || p_aggregate_id::text, 0));

  -- EXECUTE (here and for the ids below): planned for these values and the table as it is
  -- now. A cached generic plan made while the table was new is a sequential scan, kept as
  -- the table grows.
  EXECUTE 'SELECT e.version FROM events e
            WHERE e.aggregate_id = $1 AND e.aggregate_type = $2
            ORDER BY e.version DESC
            LIMIT 1'
    INTO v_current
    USING p_aggregate_id, p_aggregate_type;
  v_current := coalesce(v_current, 0);

  IF NOT ((p_expected = 'no_stream' AND v_current <> 0)
       OR (p_expected = 'stream_exists' AND v_current = 0)
       OR (p_expected = 'exact' AND v_current <> p_expected_version)) THEN
    -- The common case: insert, letting the event_id index report ids already stored.
    WITH inserted AS (
      INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, actor_id, version, timestamp, payload)
      SELECT (i.doc->>'event_id')::UUID, p_aggregate_id, p_aggregate_type, i.doc->>'event_type', p_tenant_id, p_actor_id,
             v_current + i.n::INTEGER, (i.doc->>'timestamp')::TIMESTAMPTZ, i.doc->'payload'
        FROM jsonb_array_elements(p_events) WITH ORDINALITY AS i(doc, n)
       ORDER BY i.n
      ON CONFLICT (event_id) DO NOTHING
      RETURNING events.global_position, events.event_id, events.event_type, events.version, events.timestamp, events.payload
    ), outboxed AS (
      -- The outbox entries, in the same transaction as the events.
      INSERT INTO event_outbox (event_id, event_type, aggregate_id, aggregate_type, tenant_id, actor_id, event_data,
                                global_position, version, occurred_at)
      SELECT inserted.event_id, inserted.event_type, p_aggregate_id, p_aggregate_type, p_tenant_id, p_actor_id,
             inserted.payload, inserted.global_position, inserted.version, inserted.timestamp
        FROM inserted
       WHERE p_outbox
    )
    SELECT count(*)::INTEGER, min(inserted.global_position), max(inserted.global_position),
           array_agg(inserted.global_position)
      INTO v_inserted, v_first, v_last, v_positions
      FROM inserted;

    IF v_inserted = v_count THEN
      IF p_outbox THEN
        -- Delivered at commit, so relays never wake for entries they cannot see yet.
        PERFORM pg_notify('eventfold_outbox', 'append');
      END IF;
      RETURN QUERY SELECT 'appended'::TEXT, v_current + v_count, v_first, v_last, NULL::UUID;
      RETURN;
    END IF;

    -- Some ids were stored already: take back this call's rows, then tell a replay from a duplicate.
    DELETE FROM event_outbox o WHERE p_outbox AND o.global_position = ANY (v_positions);
    DELETE FROM events e WHERE e.global_position = ANY (v_positions);
  END IF;

  -- Ids already stored: the same events at the same positions are a replay, anything else a duplicate.
  v_ids := ARRAY(SELECT (doc->>'event_id')::UUID FROM jsonb_array_elements(p_events) AS doc);
  EXECUTE 'SELECT count(*)::INTEGER,
                  bool_and(e.aggregate_id = $2 AND e.aggregate_type = $3),
                  min(e.version - array_position($1, e.event_id)), max(e.version - array_position($1, e.event_id)),
                  min(e.global_position), max(e.global_position), max(e.version),
                  (array_agg(e.event_id ORDER BY array_position($1, e.event_id)))[1]
             FROM events e
            WHERE e.event_id = ANY ($1)'
    INTO v_found, v_same_stream, v_base_min, v_base_max, v_first, v_last, v_last_version, v_duplicate
    USING v_ids, p_aggregate_id, p_aggregate_type;

  IF v_found > 0 THEN
    IF v_found = v_count AND v_same_stream AND v_base_min = v_base_max AND (
         p_expected = 'any'
      OR (p_expected = 'no_stream' AND v_base_min = 0)
      OR (p_expected = 'stream_exists' AND v_base_min > 0)
      OR (p_expected = 'exact' AND v_base_min = p_expected_version)
    ) THEN
      RETURN QUERY SELECT 'replayed'::TEXT, v_last_version, v_first, v_last, NULL::UUID;
    ELSE
      RETURN QUERY SELECT 'duplicate'::TEXT, NULL::INTEGER, NULL::BIGINT, NULL::BIGINT, v_duplicate;
    END IF;
    RETURN;
  END IF;

  RETURN QUERY SELECT 'conflict'::TEXT, v_current, NULL::BIGINT, NULL::BIGINT, NULL::UUID;
END
$fn$;
`
}

export const functions: ReadonlyArray<SqlFunction> = [append]

/** The statements that bring every function to its current definition. */
export const functionsSql = (): string =>
  functions
    .map((f) => [...f.drops.map((signature) => `DROP FUNCTION IF EXISTS ${signature};`), f.sql.trim()].join("\n"))
    .join("\n\n")

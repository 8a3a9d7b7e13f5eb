/**
 * The schema, as ordered migrations. This is the single source: the Migrator runs
 * these, and `sql/schema.sql` (for `psql -f`) is generated from them by
 * `npm run schema`; a test proves both give the same catalog.
 *
 * Every statement is idempotent (IF NOT EXISTS, OR REPLACE), so a database whose
 * `events` table was made with the spec's own DDL is adopted: what is missing is
 * added, the rows are kept.
 */

export interface Migration {
  readonly id: number
  readonly name: string
  readonly sql: string
}

/** The table where @effect/sql's Migrator records applied migrations. */
export const migrationsTable = "eventfold_migrations"

export const migrations: ReadonlyArray<Migration> = [
  {
    id: 1,
    name: "events",
    sql: `
CREATE TABLE IF NOT EXISTS events (
  global_position BIGSERIAL PRIMARY KEY,
  event_id UUID NOT NULL UNIQUE,
  aggregate_id UUID NOT NULL,
  aggregate_type VARCHAR(255) NOT NULL,
  event_type VARCHAR(255) NOT NULL,
  tenant_id UUID,
  actor_id VARCHAR(255),
  version INTEGER NOT NULL,
  timestamp TIMESTAMP WITH TIME ZONE NOT NULL,
  payload JSONB NOT NULL,
  created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  CONSTRAINT uq_events_aggregate_version UNIQUE (aggregate_id, aggregate_type, version)
);
CREATE INDEX IF NOT EXISTS idx_events_aggregate_id ON events (aggregate_id);
CREATE INDEX IF NOT EXISTS idx_events_aggregate_type ON events (aggregate_type);
CREATE INDEX IF NOT EXISTS idx_events_event_type ON events (event_type);
CREATE INDEX IF NOT EXISTS idx_events_timestamp ON events (timestamp);
CREATE INDEX IF NOT EXISTS idx_events_tenant_id ON events (tenant_id) WHERE tenant_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_events_type_tenant_timestamp ON events (aggregate_type, tenant_id, timestamp);
CREATE INDEX IF NOT EXISTS idx_events_aggregate_version ON events (aggregate_id, aggregate_type, version);
`
  },
  {
    id: 2,
    name: "event_outbox",
    sql: `
CREATE TABLE IF NOT EXISTS event_outbox (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  event_id UUID NOT NULL,
  event_type VARCHAR(255) NOT NULL,
  aggregate_id UUID NOT NULL,
  aggregate_type VARCHAR(255) NOT NULL,
  tenant_id UUID,
  event_data JSONB NOT NULL,
  created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  published_at TIMESTAMP WITH TIME ZONE,
  retry_count INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  status VARCHAR(20) NOT NULL DEFAULT 'pending',
  CONSTRAINT chk_outbox_status CHECK (status IN ('pending', 'published', 'failed'))
);
CREATE INDEX IF NOT EXISTS idx_outbox_pending ON event_outbox (created_at) WHERE status = 'pending';
`
  },
  {
    id: 3,
    name: "projection_checkpoints",
    sql: `
CREATE TABLE IF NOT EXISTS projection_checkpoints (
  projection_name VARCHAR(255) PRIMARY KEY,
  last_event_id UUID,
  last_event_type VARCHAR(255),
  last_processed_at TIMESTAMP WITH TIME ZONE,
  global_position BIGINT NOT NULL DEFAULT 0,
  events_processed BIGINT NOT NULL DEFAULT 0,
  created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
`
  },
  {
    id: 4,
    name: "dead_letter_queue",
    sql: `
CREATE TABLE IF NOT EXISTS dead_letter_queue (
  id BIGSERIAL PRIMARY KEY,
  event_id UUID NOT NULL,
  projection_name VARCHAR(255) NOT NULL,
  event_type VARCHAR(255) NOT NULL,
  event_data JSONB NOT NULL,
  error_message TEXT NOT NULL,
  error_stacktrace TEXT,
  retry_count INTEGER NOT NULL DEFAULT 0,
  first_failed_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  last_failed_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  status VARCHAR(20) NOT NULL DEFAULT 'failed',
  resolved_at TIMESTAMP WITH TIME ZONE,
  resolved_by VARCHAR(255),
  CONSTRAINT uq_dlq_event_projection UNIQUE (event_id, projection_name),
  CONSTRAINT chk_dlq_status CHECK (status IN ('failed', 'retrying', 'resolved'))
);
CREATE INDEX IF NOT EXISTS idx_dlq_status ON dead_letter_queue (status);
CREATE INDEX IF NOT EXISTS idx_dlq_projection_name ON dead_letter_queue (projection_name);
`
  },
  {
    id: 5,
    name: "snapshots",
    sql: `
CREATE TABLE IF NOT EXISTS snapshots (
  id BIGSERIAL PRIMARY KEY,
  aggregate_id UUID NOT NULL,
  aggregate_type VARCHAR(255) NOT NULL,
  version INTEGER NOT NULL,
  schema_version INTEGER NOT NULL DEFAULT 1,
  state JSONB NOT NULL,
  created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  CONSTRAINT uq_snapshots_aggregate UNIQUE (aggregate_id, aggregate_type)
);
CREATE INDEX IF NOT EXISTS idx_snapshots_aggregate_type ON snapshots (aggregate_type);
`
  },
  {
    id: 6,
    name: "eventfold_append",
    // One round trip per append, whatever the batch size. Writers of one stream are
    // serialized by a transaction-scoped advisory lock, so the version read after
    // taking it is the committed one and the expectation is checked exactly: a
    // conflict is a result row, not an exception, and never aborts a caller's
    // transaction. The unique constraint on (aggregate_id, aggregate_type, version)
    // stays the last line of defence against writers that bypass this function.
    sql: `
CREATE OR REPLACE FUNCTION eventfold_append(
  p_aggregate_id UUID,
  p_aggregate_type VARCHAR,
  p_expected TEXT,
  p_expected_version INTEGER,
  p_tenant_id UUID,
  p_actor_id VARCHAR,
  p_events JSONB
) RETURNS TABLE (
  status TEXT,
  stream_version INTEGER,
  first_position BIGINT,
  last_position BIGINT,
  duplicate_event_id UUID
) LANGUAGE plpgsql AS $fn$
DECLARE
  v_count INTEGER := jsonb_array_length(p_events);
  v_current INTEGER;
  v_found INTEGER;
  v_same_stream BOOLEAN;
  v_base_min INTEGER;
  v_base_max INTEGER;
  v_first BIGINT;
  v_last BIGINT;
  v_last_version INTEGER;
  v_duplicate UUID;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended(p_aggregate_type || '/' || p_aggregate_id::text, 0));

  -- Ids already stored: the same events at the same positions are a replay, anything else a duplicate.
  SELECT count(*)::INTEGER,
         bool_and(e.aggregate_id = p_aggregate_id AND e.aggregate_type = p_aggregate_type),
         min(e.version - i.n::INTEGER), max(e.version - i.n::INTEGER),
         min(e.global_position), max(e.global_position), max(e.version),
         (array_agg(e.event_id ORDER BY i.n))[1]
    INTO v_found, v_same_stream, v_base_min, v_base_max, v_first, v_last, v_last_version, v_duplicate
    FROM jsonb_array_elements(p_events) WITH ORDINALITY AS i(doc, n)
    JOIN events e ON e.event_id = (i.doc->>'event_id')::UUID;

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

  SELECT coalesce(max(e.version), 0) INTO v_current
    FROM events e
   WHERE e.aggregate_id = p_aggregate_id AND e.aggregate_type = p_aggregate_type;

  IF (p_expected = 'no_stream' AND v_current <> 0)
  OR (p_expected = 'stream_exists' AND v_current = 0)
  OR (p_expected = 'exact' AND v_current <> p_expected_version) THEN
    RETURN QUERY SELECT 'conflict'::TEXT, v_current, NULL::BIGINT, NULL::BIGINT, NULL::UUID;
    RETURN;
  END IF;

  RETURN QUERY
  WITH inserted AS (
    INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, actor_id, version, timestamp, payload)
    SELECT (i.doc->>'event_id')::UUID, p_aggregate_id, p_aggregate_type, i.doc->>'event_type', p_tenant_id, p_actor_id,
           v_current + i.n::INTEGER, (i.doc->>'timestamp')::TIMESTAMPTZ, i.doc->'payload'
      FROM jsonb_array_elements(p_events) WITH ORDINALITY AS i(doc, n)
     ORDER BY i.n
    RETURNING events.global_position
  )
  SELECT 'appended'::TEXT, v_current + v_count, min(inserted.global_position), max(inserted.global_position), NULL::UUID
    FROM inserted;
END
$fn$;
`
  }
]

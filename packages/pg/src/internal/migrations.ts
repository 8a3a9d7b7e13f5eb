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
/** The store's tables, in the order the schema makes them. */
export const storeTables = [
  "events",
  "event_streams",
  "event_outbox",
  "projection_checkpoints",
  "dead_letter_queue",
  "snapshots"
] as const

/** The tables whose rows row-level security keeps to their tenant (migration 12): every one of the store's. */
export const tenantTables = storeTables

/** One policy per tenant table: a row is visible and writable when its tenant is the one set. */
const tenantPolicies = tenantTables
  .map(
    (table) => `ALTER TABLE ${table} ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS eventfold_tenant_isolation ON ${table};
CREATE POLICY eventfold_tenant_isolation ON ${table}
  USING (tenant_id = (SELECT nullif(current_setting('eventfold.tenant_id', true), '')::uuid))
  WITH CHECK (tenant_id = (SELECT nullif(current_setting('eventfold.tenant_id', true), '')::uuid));
`
  )
  .join("")

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
    // Before the first release this migration created the append function, later
    // re-applied on every run and dropped by migration 9; the id stays so the sequence
    // is unbroken.
    sql: "SELECT 1;"
  },
  {
    id: 7,
    name: "outbox_relay",
    // What the outbox relay needs (see @eventfold/core/Outbox and OutboxRelay): the
    // event's position and version for per-aggregate order, a lease (claimed_by,
    // lease_until) so that no lock is held while publishing, and next_attempt_at for
    // retry backoff. Entries written before this migration get position and version
    // from their events. (The append writes the entries: internal/appendSql.ts.)
    sql: `
ALTER TABLE event_outbox
  ADD COLUMN IF NOT EXISTS global_position BIGINT,
  ADD COLUMN IF NOT EXISTS version INTEGER,
  ADD COLUMN IF NOT EXISTS actor_id VARCHAR(255),
  ADD COLUMN IF NOT EXISTS occurred_at TIMESTAMP WITH TIME ZONE,
  ADD COLUMN IF NOT EXISTS claimed_by VARCHAR(255),
  ADD COLUMN IF NOT EXISTS lease_until TIMESTAMP WITH TIME ZONE,
  ADD COLUMN IF NOT EXISTS next_attempt_at TIMESTAMP WITH TIME ZONE;
UPDATE event_outbox o
   SET global_position = e.global_position, version = e.version, actor_id = e.actor_id, occurred_at = e.timestamp
  FROM events e
 WHERE e.event_id = o.event_id AND o.global_position IS NULL;
-- Entries whose event is gone: first in line, outside any ordering.
UPDATE event_outbox SET global_position = 0, version = 0 WHERE global_position IS NULL;
CREATE INDEX IF NOT EXISTS idx_outbox_claim ON event_outbox (global_position) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS idx_outbox_aggregate_unpublished ON event_outbox (aggregate_id, aggregate_type, version)
  WHERE status <> 'published';
CREATE INDEX IF NOT EXISTS idx_outbox_published_at ON event_outbox (published_at) WHERE status = 'published';
`
  },
  {
    id: 8,
    name: "subscriptions",
    // What gap-free subscriptions need (see PgEventStore: "Subscriptions"). Readers
    // only pass positions below which every transaction that wrote to the log has
    // ended: eventfold_log_horizon() returns the last position taken and then the
    // transactions still holding a write lock on events (in that order: a writer
    // that took a position up to the first is sure to be in the second). Appends
    // wake subscribers through a statement trigger whose notification is delivered
    // at commit only, and only while a subscriber waits for one (a row of
    // eventfold_listeners): NOTIFY serializes the commits of the transactions that
    // send it, so busy subscribers, which poll anyway, switch it off. Transactions
    // above READ COMMITTED always notify (their snapshot may predate the flag).
    // eventfold_log_writers shows who holds readers back. dead_letter_queue gains
    // the event's global position.
    sql: `
CREATE OR REPLACE FUNCTION eventfold_log_horizon()
RETURNS TABLE (last_position BIGINT, writers TEXT[], writer_pids INTEGER[])
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  v_last BIGINT;
BEGIN
  v_last := coalesce(pg_sequence_last_value(pg_get_serial_sequence('events', 'global_position')::regclass), 0);
  RETURN QUERY
  SELECT v_last,
         coalesce(array_agg(l.virtualtransaction ORDER BY l.virtualtransaction), '{}'::TEXT[]),
         coalesce(array_agg(coalesce(l.pid, 0) ORDER BY l.virtualtransaction), '{}'::INTEGER[])
    FROM pg_locks l
   WHERE l.locktype = 'relation'
     AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
     AND l.relation IN (SELECT 'events'::regclass UNION ALL SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = 'events'::regclass)
     AND l.mode = 'RowExclusiveLock'
     AND l.granted;
END
$fn$;
CREATE OR REPLACE VIEW eventfold_log_writers AS
SELECT l.pid, l.virtualtransaction, a.xact_start, now() - a.xact_start AS xact_age, a.state, a.state_change,
       a.query, a.application_name, a.usename, a.client_addr, a.wait_event_type, a.wait_event
  FROM pg_locks l
  LEFT JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'relation'
   AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
   AND l.relation = 'events'::regclass
   AND l.mode = 'RowExclusiveLock'
   AND l.granted;
CREATE UNLOGGED TABLE IF NOT EXISTS eventfold_listeners (
  listener_id UUID PRIMARY KEY,
  pid INTEGER NOT NULL,
  waiting BOOLEAN NOT NULL,
  updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
);
CREATE OR REPLACE FUNCTION eventfold_notify_events() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed'
     OR EXISTS (SELECT 1 FROM eventfold_listeners WHERE waiting) THEN
    PERFORM pg_notify('eventfold_events', 'append');
  END IF;
  RETURN NULL;
END
$fn$;
DROP TRIGGER IF EXISTS eventfold_events_notify ON events;
CREATE TRIGGER eventfold_events_notify AFTER INSERT ON events
  FOR EACH STATEMENT EXECUTE FUNCTION eventfold_notify_events();
ALTER TABLE dead_letter_queue ADD COLUMN IF NOT EXISTS global_position BIGINT;
CREATE INDEX IF NOT EXISTS idx_dlq_projection_status ON dead_letter_queue (projection_name, status, id);
`
  },
  {
    id: 9,
    name: "append_statement",
    // Appends are one INSERT statement (internal/appendSql.ts) that the unique
    // constraint on versions guards, as in plain SQL: the plpgsql function that
    // serialized writers with an advisory lock cost a third of an append.
    sql: `
DROP FUNCTION IF EXISTS eventfold_append(UUID, VARCHAR, TEXT, INTEGER, UUID, VARCHAR, JSONB, BOOLEAN);
DROP FUNCTION IF EXISTS eventfold_append(UUID, VARCHAR, TEXT, INTEGER, UUID, VARCHAR, JSONB);
`
  },
  {
    id: 10,
    name: "stream_heads",
    // Every stream's head: its last version, moved by the append statement in the same
    // statement as its events (internal/appendSql.ts). The head's row lock serializes a
    // stream's writers, so that `any` and `streamExists` appends always land at the next
    // version and a version is never handed out twice, even once the stream's old events
    // are archived or deleted. fillfactor leaves room for HOT updates (only `version` and
    // `updated_at` change, neither indexed). Streams stored before this migration get
    // their heads from their events.
    sql: `
CREATE TABLE IF NOT EXISTS event_streams (
  aggregate_id UUID NOT NULL,
  aggregate_type VARCHAR(255) NOT NULL,
  tenant_id UUID,
  version INTEGER NOT NULL,
  created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  CONSTRAINT pk_event_streams PRIMARY KEY (aggregate_id, aggregate_type),
  CONSTRAINT chk_event_streams_version CHECK (version > 0)
) WITH (fillfactor = 80);
INSERT INTO event_streams (aggregate_id, aggregate_type, tenant_id, version, created_at, updated_at)
SELECT aggregate_id, aggregate_type, (array_agg(tenant_id ORDER BY version))[1], max(version),
       min(created_at), max(created_at)
  FROM events
 GROUP BY aggregate_id, aggregate_type
ON CONFLICT (aggregate_id, aggregate_type) DO UPDATE
   SET version = greatest(event_streams.version, EXCLUDED.version);
`
  },
  {
    id: 11,
    name: "outbox_parking",
    // An operator may park a failed entry (see @eventfold/core/Outbox): set aside for
    // good, with who, when and why, so that the later entries of its aggregate flow on.
    // A parked entry no longer holds its aggregate: the index of entries that take part
    // in per-aggregate order covers pending and failed ones only.
    sql: `
ALTER TABLE event_outbox DROP CONSTRAINT IF EXISTS chk_outbox_status;
ALTER TABLE event_outbox
  ADD CONSTRAINT chk_outbox_status CHECK (status IN ('pending', 'published', 'failed', 'parked'));
ALTER TABLE event_outbox
  ADD COLUMN IF NOT EXISTS parked_at TIMESTAMP WITH TIME ZONE,
  ADD COLUMN IF NOT EXISTS parked_by VARCHAR(255),
  ADD COLUMN IF NOT EXISTS parked_reason TEXT;
DROP INDEX IF EXISTS idx_outbox_aggregate_unpublished;
CREATE INDEX IF NOT EXISTS idx_outbox_aggregate_unpublished ON event_outbox (aggregate_id, aggregate_type, version)
  WHERE status IN ('pending', 'failed');
`
  },
  {
    id: 12,
    name: "tenant_isolation",
    // Row-level security keyed by the transaction's \`eventfold.tenant_id\` setting, which
    // the store sets in a tenant scope (\`EventStore.forTenant\`; internal/pgDriver.ts). A
    // role the policies bind (neither superuser nor BYPASSRLS, nor the tables' owner unless
    // the owner FORCEs row-level security) sees and writes only the rows of the tenant
    // set, and with none set no rows at all: rows without a tenant are never visible to
    // it. The tables that had no tenant_id get a nullable one (dead letters take their
    // event's, stored in event_data, for the rows written before). The subquery makes the
    // setting one InitPlan per statement, not a call per row.
    // eventfold_stream_tenant_differs and eventfold_event_of_another_tenant let an append
    // explain why it did not go in (another tenant's stream, an id another tenant stored)
    // past the policies: SECURITY DEFINER, they run as their owner (the migrating role,
    // which the policies do not bind) and answer with a boolean, or an id the caller sent,
    // about the caller's own tenant setting only.
    sql: `
ALTER TABLE projection_checkpoints ADD COLUMN IF NOT EXISTS tenant_id UUID;
ALTER TABLE dead_letter_queue ADD COLUMN IF NOT EXISTS tenant_id UUID;
ALTER TABLE snapshots ADD COLUMN IF NOT EXISTS tenant_id UUID;
-- A dead letter is its event's tenant's (PgDeadLetterQueue writes it from now on).
UPDATE dead_letter_queue SET tenant_id = (event_data->>'tenant_id')::uuid
 WHERE tenant_id IS NULL AND event_data->>'tenant_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
${tenantPolicies}-- Both functions compare with the caller's tenant setting, never a tenant the caller
-- names: they say whether a stream is another tenant's than the caller's, or which of
-- the ids the caller sent another tenant stored (ids are unique across tenants, so an
-- insert would tell as much). Only the roles given EXECUTE (PgMigrations.tenantRoleGrants)
-- may call them, and their search_path is this schema, then pg_temp, last.
DROP FUNCTION IF EXISTS eventfold_stream_tenant_differs(UUID, VARCHAR, UUID);
DROP FUNCTION IF EXISTS eventfold_event_of_another_tenant(UUID[], UUID);
DO $do$
BEGIN
  EXECUTE format($sql$
CREATE OR REPLACE FUNCTION eventfold_stream_tenant_differs(p_aggregate_id UUID, p_aggregate_type VARCHAR)
RETURNS BOOLEAN LANGUAGE sql STABLE SECURITY DEFINER SET search_path = %1$I, pg_temp AS $fn$
  SELECT coalesce((SELECT s.tenant_id IS DISTINCT FROM nullif(current_setting('eventfold.tenant_id', true), '')::uuid
                     FROM event_streams s
                    WHERE s.aggregate_id = p_aggregate_id AND s.aggregate_type = p_aggregate_type), false)
$fn$;
CREATE OR REPLACE FUNCTION eventfold_event_of_another_tenant(p_event_ids UUID[])
RETURNS UUID LANGUAGE sql STABLE SECURITY DEFINER SET search_path = %1$I, pg_temp AS $fn$
  SELECT x.event_id
    FROM unnest(p_event_ids) WITH ORDINALITY AS i(event_id, n)
    JOIN LATERAL (SELECT e.event_id, e.tenant_id FROM events e WHERE e.event_id = i.event_id LIMIT 1) AS x ON true
   WHERE x.tenant_id IS DISTINCT FROM nullif(current_setting('eventfold.tenant_id', true), '')::uuid
   ORDER BY i.n
   LIMIT 1
$fn$;
$sql$, current_schema());
END
$do$;
REVOKE EXECUTE ON FUNCTION eventfold_stream_tenant_differs(UUID, VARCHAR) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION eventfold_event_of_another_tenant(UUID[]) FROM PUBLIC;
`
  },
  {
    id: 13,
    name: "event_metadata",
    // What travels with an event besides its payload (see @eventfold/core/EventMetadata):
    // the W3C trace context of the append, and the correlation and causation ids, as one
    // JSON document with snake-case keys (correlation_id, causation_id, traceparent).
    // NULL when an event has none, so an untraced append stores nothing more. The outbox
    // entry carries its event's, for the relay's message headers. Adding a nullable
    // column without a default rewrites nothing: instant on a table of any size.
    sql: `
ALTER TABLE events ADD COLUMN IF NOT EXISTS metadata JSONB;
ALTER TABLE event_outbox ADD COLUMN IF NOT EXISTS metadata JSONB;
`
  },
  {
    id: 14,
    name: "notifications_by_schema",
    // Stores in different schemas of one database (PgPool's `schema` option) share the
    // NOTIFY channels, which are the database's: each notification names its schema in
    // its payload, so that a subscriber wakes only for appends to its own store (the
    // append statement does the same for the outbox channel). The listener rows the
    // trigger consults are named with their schema, fixed here (as migration 12 fixes the
    // functions' search_path): the trigger looks in its own schema whatever the
    // inserting session's search_path.
    sql: `
DO $do$
BEGIN
  EXECUTE format($sql$
CREATE OR REPLACE FUNCTION eventfold_notify_events() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed'
     OR EXISTS (SELECT 1 FROM %1$I.eventfold_listeners WHERE waiting) THEN
    PERFORM pg_notify('eventfold_events', TG_TABLE_SCHEMA);
  END IF;
  RETURN NULL;
END
$fn$;
$sql$, current_schema());
END
$do$;
`
  }
]

/**
 * The schema of DESIGN §4, applied through @effect/sql's Migrator: versioned,
 * recorded in `eventfold_migrations`, run in one transaction under a table lock so
 * that concurrent starts apply each migration once.
 *
 * @since 0.1.0
 */
import * as Migrator from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import { Spans } from "@eventfold/core/Telemetry"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { quoteIdentifier } from "./internal/connection.js"
import { migrations, migrationsTable } from "./internal/migrations.js"
import * as PgPool from "./PgPool.js"

/**
 * Migrating failed; the database is left as it was before (one transaction).
 *
 * @since 0.1.0
 * @category errors
 */
export class MigrationError extends Schema.TaggedError<MigrationError>()("MigrationError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

const loader = Migrator.fromRecord(
  Object.fromEntries(
    migrations.map((m) => [`${m.id}_${m.name}`, Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe(m.sql))])
  )
)

const runMigrator = Migrator.make({})

/** Serializes the steps the Migrator's own table lock does not cover. */
const lockSchema = (sql: SqlClient.SqlClient) =>
  sql`SELECT pg_advisory_xact_lock(hashtextextended(${migrationsTable}, 0))`

/**
 * The schema of the pool's `schema` option, created when it does not exist yet (looked up
 * first: `CREATE SCHEMA IF NOT EXISTS` needs the CREATE privilege on the database even
 * when the schema is there). Every other statement names no schema: the pool's
 * connections have this one as their `search_path`, so the tables, the functions and the
 * Migrator's record are made there.
 */
const ensureSchema = (sql: SqlClient.SqlClient) =>
  Effect.flatMap(Effect.serviceOption(PgPool.PgPool), (pool) => {
    const schema = Option.getOrUndefined(pool)?.options.schema
    if (schema === undefined) return Effect.void
    return sql<{ readonly found: number }>`SELECT 1 AS found FROM pg_namespace WHERE nspname = ${schema}`.pipe(
      Effect.flatMap((rows) => (rows.length > 0 ? Effect.void : sql.unsafe(`CREATE SCHEMA ${quoteIdentifier(schema)}`)))
    )
  })

/**
 * The Migrator creates its table outside its locked transaction, so two processes
 * starting at once on a new database both try to create it and one fails. Creating
 * it first under the lock makes that step serial (and the schema's creation with it).
 */
const ensureMigrationsTable = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql.withTransaction(
    lockSchema(sql).pipe(
      Effect.zipRight(ensureSchema(sql)),
      Effect.zipRight(
        sql.unsafe(`CREATE TABLE IF NOT EXISTS ${migrationsTable} (
  migration_id integer primary key,
  created_at timestamp with time zone not null default now(),
  name text not null
)`)
      )
    )
  )
)

/**
 * Applies the pending migrations and returns those it applied. With a `PgPool` whose
 * `schema` option names a schema, in that schema (created when missing), with their
 * record there too: each schema of a database is migrated, and recorded, apart.
 *
 * @since 0.1.0
 * @category constructors
 */
export const run: Effect.Effect<
  ReadonlyArray<readonly [id: number, name: string]>,
  MigrationError,
  SqlClient.SqlClient
> = ensureMigrationsTable.pipe(
  Effect.zipRight(runMigrator({ loader, table: migrationsTable })),
  // The Migrator reports a failing migration as a defect: users get a typed error.
  Effect.catchAllDefect((defect) =>
    Effect.fail(
      new MigrationError({
        message: defect instanceof Migrator.MigrationError ? defect.message : "migration failed",
        cause: defect instanceof Migrator.MigrationError && defect.cause !== undefined ? defect.cause : defect
      })
    )
  ),
  Effect.catchTags({
    MigrationError: (error) => Effect.fail(new MigrationError({ message: error.message, cause: error })),
    SqlError: (error) =>
      Effect.fail(new MigrationError({ message: `migration failed: ${error.message}`, cause: error }))
  }),
  Effect.withSpan(Spans.migrate)
)

/**
 * Runs the migrations when the layer is built.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<never, MigrationError, SqlClient.SqlClient> = Layer.effectDiscard(run)

/**
 * The privileges of an application role that row-level security binds (migration 12):
 * GRANT statements to run as the migrating role, for a role that is neither superuser
 * nor `BYPASSRLS` and does not own the tables. It may append (events, their outbox
 * entries, stream heads), read, subscribe (the log's horizon, the listener rows) and use
 * snapshots; its rows are those of the tenant its transaction sets, and none without one.
 * The relay, projection runners, migrations and monitoring need every tenant: give them
 * a role the policies do not bind (see the README, "Tenant isolation"). With `schema`
 * (the pool's `schema` option), the names are qualified with it and the role may use it.
 *
 * @since 0.1.0
 * @category utils
 */
export const tenantRoleGrants = (role: string, options?: { readonly schema?: string | undefined }): string => {
  const r = quoteIdentifier(role)
  const schema = options?.schema
  // With a schema (the pool's `schema` option), every name is qualified, and the role may use the schema.
  const s = schema === undefined ? "" : `${quoteIdentifier(schema)}.`
  return `${schema === undefined ? "" : `GRANT USAGE ON SCHEMA ${quoteIdentifier(schema)} TO ${r};\n`}GRANT SELECT, INSERT ON ${s}events, ${s}event_outbox TO ${r};
GRANT SELECT, INSERT, UPDATE ON ${s}event_streams, ${s}snapshots TO ${r};
GRANT USAGE, SELECT ON SEQUENCE ${s}events_global_position_seq, ${s}snapshots_id_seq TO ${r};
GRANT SELECT, INSERT, UPDATE, DELETE ON ${s}eventfold_listeners TO ${r};
GRANT SELECT ON ${s}eventfold_log_writers TO ${r};
GRANT EXECUTE ON FUNCTION ${s}eventfold_stream_tenant_differs(UUID, VARCHAR), ${s}eventfold_event_of_another_tenant(UUID[]) TO ${r};
`
}

/**
 * The whole schema as one SQL script for `psql -f`: the same statements the
 * migrations run, and the Migrator's record of the migrations; with `schema`, in that
 * PostgreSQL schema (created when missing), for a pool with the same `schema` option.
 *
 * @since 0.1.0
 * @category utils
 */
export const schemaSql = (options?: { readonly schema?: string | undefined }): string =>
  [
    "-- Eventfold schema for PostgreSQL 12+ (generated by `npm run schema` from packages/pg/src/internal/migrations.ts).",
    "-- Apply with: psql -v ON_ERROR_STOP=1 -d yourdb -f schema.sql",
    "-- Idempotent; a database set up with it can later be migrated with PgMigrations.run.",
    "BEGIN;",
    ...(options?.schema === undefined
      ? []
      : [
          `CREATE SCHEMA IF NOT EXISTS ${quoteIdentifier(options.schema)};`,
          `SET LOCAL search_path = ${quoteIdentifier(options.schema)};`
        ]),
    ...migrations.map((m) => `\n-- ${m.id}_${m.name}${m.sql}`),
    `-- The Migrator's record, so PgMigrations.run knows these are applied.
CREATE TABLE IF NOT EXISTS ${migrationsTable} (
  migration_id integer primary key,
  created_at timestamp with time zone not null default now(),
  name text not null
);
INSERT INTO ${migrationsTable} (migration_id, name) VALUES
${migrations.map((m) => `  (${m.id}, '${m.name}')`).join(",\n")}
ON CONFLICT (migration_id) DO NOTHING;`,
    "COMMIT;",
    ""
  ].join("\n")

/**
 * The one module that owns the connections Eventfold uses, and the only one that
 * talks to the driver (`pg`, directly or through @effect/sql-pg). A port to another
 * driver (or to Effect 4's SQL packages) swaps this module.
 *
 * - **Statements** run through an {@link Executor}: on a connection of the pool, or
 *   on the caller's transaction's connection when there is one. Two executors, chosen
 *   by the application: `sql` (every statement through @effect/sql's `SqlClient`) and
 *   `prepared` (outside transactions, named prepared statements on connections checked
 *   out of a pg pool made by `PgPool`, see `leanQuery.ts`).
 * - **A checked-out connection** has an `'error'` listener for as long as it is out
 *   (pg emits `'error'` on a client whose socket dies, a tick before the statement's own
 *   error: without a listener that kills the process), is released on every exit path,
 *   and is destroyed rather than returned when it broke.
 * - **Transactions** ({@link Executor.transaction}) report BEGIN, COMMIT and ROLLBACK
 *   failures as typed errors (@effect/sql's `withTransaction` turns them into defects),
 *   nest as savepoints, and join a transaction the caller opened with
 *   `sql.withTransaction`.
 * - **Sessions** ({@link reserve}) and **LISTEN** ({@link listen}) hold a connection
 *   for longer (a projection's lock, notifications) and fail as soon as it is lost.
 * - **Tenant scopes** ({@link Executor.forTenant}): every statement runs in a transaction
 *   whose `eventfold.tenant_id` setting names the tenant (`set_config(..., true)`, which
 *   ends with the transaction), so that row-level security binds it. Outside a
 *   transaction the `prepared` executor sends the setting and the statement in one
 *   pipeline before one Sync (one implicit transaction, one round trip); the `sql`
 *   executor opens a transaction of its own. Inside one, the setting is made before each
 *   statement, and stays for the rest of the caller's transaction.
 * - **Echo** (the pool's `echo` setting): every statement's text (never its values) and
 *   duration is logged at Debug. A statement of the lean path is logged where its client
 *   span is made ({@link traced}), in the caller's fiber; every other statement on the
 *   pool's connections (@effect/sql's, Eventfold's and the application's alike) by the
 *   connection that runs it, through the logger of the program that made the pool.
 * - **Pool metrics** (when `Telemetry.metricsEnabled` is on where the pool is made): its
 *   connections by state, sampled every second, and the time each checkout took.
 * - **Failures** are one typed error, {@link DriverError}, whose `reason` says what
 *   went wrong (no connection, connection lost, timeout, conflict, the statement), so
 *   that each service maps it to its own error and retries what is worth retrying.
 *
 * @internal
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { Connection } from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import type * as PgClient from "@effect/sql-pg/PgClient"
import { describeCause } from "@eventfold/core/Errors"
import { redactCredentials } from "@eventfold/core/Settings"
import { Attributes, metricsEnabled, poolMetrics, withHotSpan } from "@eventfold/core/Telemetry"
import * as Cause from "effect/Cause"
import type * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberRef from "effect/FiberRef"
import * as MetricLabel from "effect/MetricLabel"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Pg from "pg"
import type * as Target from "./connection.js"
import type { Connections } from "./connections.js"
import * as LeanQuery from "./leanQuery.js"

// ---------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------

/**
 * What went wrong, as far as the caller's next step is concerned:
 *
 * - `Unavailable`: no connection could be had (refused, the pool's acquire timeout,
 *   too many connections). Nothing was sent.
 * - `Connection`: the connection was lost while in use (reset, terminated by an
 *   administrator, the server shut down). A statement in flight may or may not have
 *   taken effect.
 * - `Timeout`: waited too long: for a connection (the pool's acquire timeout: the
 *   pool is exhausted, and waiting again would only double the wait the application
 *   chose), or on the server, which cancelled the statement (`statement_timeout`,
 *   `lock_timeout`).
 * - `Conflict`: a serialization failure or a deadlock; the transaction rolled back.
 * - `Statement`: the server refused the statement (a constraint, a type); see `code`.
 * - `Row`: a row the reader did not expect.
 */
export type Reason = "Unavailable" | "Connection" | "Timeout" | "Conflict" | "Statement" | "Row"

/** A failure of the database or of the connection to it. */
export class DriverError extends Data.TaggedError("PgDriverError")<{
  readonly reason: Reason
  readonly message: string
  /** The SQLSTATE of a server error. */
  readonly code: string | undefined
  /** The constraint a server error names. */
  readonly constraint: string | undefined
  readonly cause: unknown
}> {}

/** Whether a failure is a {@link DriverError} (matched by tag, whatever else an effect may fail with). */
export const isDriverError = (error: unknown): error is DriverError => Predicate.isTagged(error, "PgDriverError")

/** Worth trying again on another connection (outside a transaction). */
export const isTransient = (error: DriverError): boolean =>
  error.reason === "Unavailable" || error.reason === "Connection" || error.reason === "Conflict"

/** SQLSTATE classes and codes, by reason. */
const reasonOfCode = (code: string, acquiring: boolean): Reason => {
  if (code.startsWith("08")) return acquiring ? "Unavailable" : "Connection"
  switch (code) {
    case "53300": // too_many_connections
    case "57P03": // cannot_connect_now (starting up, shutting down)
      return "Unavailable"
    case "57P01": // admin_shutdown (pg_terminate_backend, a fast shutdown)
    case "57P02": // crash_shutdown
    case "25P03": // idle_in_transaction_session_timeout: the session is ended
      return acquiring ? "Unavailable" : "Connection"
    case "57014": // query_canceled (statement_timeout, a cancel)
    case "55P03": // lock_not_available (lock_timeout)
      return "Timeout"
    case "40001": // serialization_failure
    case "40P01": // deadlock_detected
      return "Conflict"
    default:
      return "Statement"
  }
}

/** pg-pool's error when no connection came free within `connectionTimeoutMillis`. */
const POOL_TIMEOUT = "timeout exceeded when trying to connect"

/**
 * Classifies a failure of the driver: pg's DatabaseError (the server's), a socket or
 * client error, @effect/sql's SqlError around either, or a row the reader rejected.
 * `acquiring`: the failure came before a statement was sent.
 */
export const classify = (cause: unknown, acquiring = false): DriverError => {
  if (isDriverError(cause)) return cause
  const failure = classifyUnredacted(cause, acquiring)
  // pg's own messages name no credentials (its URL parser hides the URL it rejects); a
  // message that quotes a URL from elsewhere is redacted all the same, here at the driver.
  const message = redactCredentials(failure.message)
  if (message === failure.message) return failure
  // The original error holds the same text, and printing a cause chain (Cause.pretty,
  // util.inspect, a logger) would show it: it is replaced by a redacted copy.
  const original = failure.cause
  const redacted = new Error(message)
  redacted.name = original instanceof Error ? original.name : "Error"
  // The code says what failed (a TLS code, say), and holds no text of the message.
  const code = original instanceof Error ? (original as NodeJS.ErrnoException).code : undefined
  if (code !== undefined) Object.assign(redacted, { code })
  if (original instanceof Error && typeof original.stack === "string")
    redacted.stack = redactCredentials(original.stack)
  return new DriverError({
    reason: failure.reason,
    message,
    code: failure.code,
    constraint: failure.constraint,
    cause: redacted
  })
}

const classifyUnredacted = (cause: unknown, acquiring: boolean): DriverError => {
  const inner = cause instanceof SqlError ? cause.cause : cause
  const acquire = acquiring || (cause instanceof SqlError && cause.message.startsWith("Failed to acquire"))
  if (inner instanceof Pg.DatabaseError) {
    return new DriverError({
      reason: reasonOfCode(inner.code ?? "", acquire),
      message: describeCause(inner),
      code: inner.code,
      constraint: inner.constraint,
      cause
    })
  }
  if (inner instanceof LeanQuery.RowError) {
    return new DriverError({ reason: "Row", message: inner.message, code: undefined, constraint: undefined, cause })
  }
  if (inner instanceof Error && inner.message === POOL_TIMEOUT) {
    return new DriverError({
      reason: "Timeout",
      message: `no connection free within the pool's acquire timeout (${inner.message})`,
      code: undefined,
      constraint: undefined,
      cause
    })
  }
  return new DriverError({
    reason: acquire ? "Unavailable" : "Connection",
    message: acquire ? `cannot get a connection: ${describeCause(cause)}` : describeCause(cause),
    code: undefined,
    constraint: undefined,
    cause
  })
}

// ---------------------------------------------------------------------------
// Statements
// ---------------------------------------------------------------------------

/** A statement: named (prepared once per connection on the `prepared` executor) or unnamed (""). */
export type Statement = LeanQuery.Statement

/**
 * A row as an array of its columns in the statement's order: text (or null) from the
 * `prepared` executor, values parsed by pg from the `sql` executor. Readers take both.
 */
export type Row = ReadonlyArray<unknown>

/**
 * Runs statements; see the module's overview.
 */
export interface Executor {
  /** Runs a statement, in the caller's transaction when there is one; each row through `parseRow`. */
  readonly run: <A>(
    statement: Statement,
    values: ReadonlyArray<unknown>,
    parseRow: (row: Row) => A
  ) => Effect.Effect<ReadonlyArray<A>, DriverError>
  /**
   * Runs `effect` in a transaction: a new one on a connection of its own, or a savepoint
   * of the transaction already open (the caller's, or an outer call's). Statements of
   * the application's `SqlClient` inside `effect` join it.
   */
  readonly transaction: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | DriverError, R>
  /** Whether a transaction is open in the current fiber. */
  readonly inTransaction: Effect.Effect<boolean>
  /** The application's `SqlClient`, without its name transforms (our statements name their columns exactly). */
  readonly sql: SqlClient.SqlClient
  /** The tenant whose setting every statement runs with (a lower-case UUID), or null. */
  readonly tenantId: string | null
  /** This executor with every statement in the scope of `tenantId` (see the module's overview). */
  readonly forTenant: (tenantId: string) => Executor
}

/** The setting row-level security policies read (migration 12). */
export const TENANT_SETTING = "eventfold.tenant_id"

/** Sets the tenant for the rest of the current transaction. */
export const setTenantStatement: Statement = {
  name: "eventfold_set_tenant",
  text: `SELECT set_config('${TENANT_SETTING}', $1::text, true)`
}

/**
 * `base` in the scope of `tenantId`: in a transaction, the setting, then the statement;
 * outside one, `outside` (which must make both one transaction).
 */
const scoped = (
  base: Executor,
  tenantId: string,
  outside: <A>(
    statement: Statement,
    values: ReadonlyArray<unknown>,
    parseRow: (row: Row) => A
  ) => Effect.Effect<ReadonlyArray<A>, DriverError>
): Executor => {
  const setTenant = base.run(setTenantStatement, [tenantId], () => undefined)
  return {
    ...base,
    tenantId,
    run: (statement, values, parseRow) =>
      Effect.contextWithEffect((context) =>
        hasTransaction(context)
          ? Effect.zipRight(setTenant, base.run(statement, values, parseRow))
          : outside(statement, values, parseRow)
      )
  }
}

const execute = (connection: Connection, text: string) =>
  Effect.mapError(connection.executeUnprepared(text, [], undefined), (error) => classify(error))

/**
 * Ends a transaction (or savepoint) as its body ended: `commit` after a success,
 * `rollback` after a failure, which fails as the body did (a rollback that fails too is
 * added to the cause). A COMMIT that fails on a lost connection leaves the outcome
 * unknown: the caller learns it as a Connection failure.
 *
 * At the top level (`top`), a COMMIT or ROLLBACK that failed on a live connection (a
 * cancel that reached it, say) may leave the session in a transaction; @effect/sql-pg
 * destroys a connection on release only when its socket failed, so one more ROLLBACK
 * (a warning, not an error, when no transaction is open) hands it back to the pool clean.
 */
const settle = <A, E>(
  connection: Connection,
  exit: Exit.Exit<A, E>,
  commit: string | undefined,
  rollback: string,
  top: boolean
): Effect.Effect<A, E | DriverError> => {
  const end = (text: string) =>
    top
      ? Effect.tapError(execute(connection, text), () => Effect.ignore(execute(connection, "ROLLBACK")))
      : execute(connection, text)
  if (Exit.isSuccess(exit)) return commit === undefined ? exit : Effect.zipRight(end(commit), exit)
  return Effect.flatMap(
    Effect.exit(end(rollback)),
    (rolledBack): Effect.Effect<A, E | DriverError> =>
      Exit.isFailure(rolledBack) ? Effect.failCause(Cause.sequential(exit.cause, rolledBack.cause)) : exit
  )
}

/**
 * Transactions on @effect/sql's connections, with typed failures: BEGIN, COMMIT and
 * ROLLBACK (to a savepoint) fail with a DriverError instead of a defect. Nested calls,
 * and calls inside a caller's `sql.withTransaction`, run under savepoints whose ids
 * continue @effect/sql's counter, so that both kinds nest in each other. The connection
 * is held in a scope of the transaction's own, closed when it ends; the body keeps the
 * caller's context, its `Scope` included (a resource it acquires lives as long as the
 * caller's scope, not the transaction).
 */
const makeTransaction =
  (sql: SqlClient.SqlClient) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | DriverError, R> =>
    Effect.uninterruptibleMask((restore) => {
      const run = (connection: Connection, depth: number): Effect.Effect<Exit.Exit<A, E>, never, R> =>
        Effect.exit(Effect.provideService(restore(effect), SqlClient.TransactionConnection, [connection, depth]))
      const nested = ([connection, outer]: readonly [Connection, number]): Effect.Effect<A, E | DriverError, R> => {
        const savepoint = `eventfold_${outer + 1}`
        return Effect.flatMap(
          Effect.zipRight(execute(connection, `SAVEPOINT ${savepoint}`), run(connection, outer + 1)),
          (exit) => settle(connection, exit, undefined, `ROLLBACK TO SAVEPOINT ${savepoint}`, false)
        )
      }
      const top: Effect.Effect<A, E | DriverError, R> = Effect.acquireUseRelease(
        Scope.make(),
        (scope) =>
          Effect.flatMap(
            Effect.mapError(Scope.extend(sql.reserve, scope), (error) => classify(error, true)),
            (connection): Effect.Effect<A, E | DriverError, R> =>
              Effect.flatMap(Effect.zipRight(execute(connection, "BEGIN"), run(connection, 0)), (exit) =>
                settle(connection, exit, "COMMIT", "ROLLBACK", true)
              )
          ),
        (scope, exit) => Scope.close(scope, exit)
      )
      return Effect.flatMap(
        Effect.serviceOption(SqlClient.TransactionConnection),
        (current): Effect.Effect<A, E | DriverError, R> => (Option.isSome(current) ? nested(current.value) : top)
      )
    })

/** Whether `context` holds a transaction's connection (read from the context: this runs on every statement). */
const hasTransaction = (context: Context.Context<never>): boolean =>
  Option.isSome(Context.getOption(context, SqlClient.TransactionConnection))

/**
 * The `sql` executor: every statement through the application's `SqlClient` (any
 * PgClient layer, with or without name transforms).
 */
export const sqlExecutor = (client: SqlClient.SqlClient): Executor => {
  const sql = client.withoutTransforms()
  const base: Executor = {
    run: (statement, values, parseRow) =>
      sql.unsafe(statement.text, values).values.pipe(
        Effect.mapError((error) => classify(error)),
        Effect.flatMap((rows) =>
          Effect.try({
            try: () => rows.map(parseRow),
            catch: (cause) => classify(new LeanQuery.RowError(cause))
          })
        )
      ),
    transaction: makeTransaction(sql),
    inTransaction: Effect.contextWith(hasTransaction),
    sql,
    tenantId: null,
    forTenant: (tenantId) =>
      // @effect/sql sends one statement per round trip: a transaction of our own holds the setting.
      scoped(base, tenantId, (statement, values, parseRow) =>
        base.transaction(
          Effect.zipRight(
            base.run(setTenantStatement, [tenantId], () => undefined),
            base.run(statement, values, parseRow)
          )
        )
      )
  }
  return base
}

/**
 * The `prepared` executor: outside transactions, named prepared statements on
 * connections of the pool that `PgPool` made (see `leanQuery.ts`); inside one, the
 * transaction's connection through @effect/sql.
 */
export const preparedExecutor = (client: SqlClient.SqlClient, connections: Connections): Executor => {
  const base = sqlExecutor(client)
  const { echo, pool } = poolOf(connections)
  const executor: Executor = {
    ...base,
    run: (statement, values, parseRow) =>
      Effect.contextWithEffect((context) =>
        hasTransaction(context)
          ? base.run(statement, values, parseRow)
          : traced(statement, echo, () => runPrepared(pool, statement, values, parseRow))
      ),
    forTenant: (tenantId) => {
      const setup: LeanQuery.Setup = { statement: setTenantStatement, values: [tenantId] }
      return scoped(executor, tenantId, (statement, values, parseRow) =>
        traced(statement, echo, () => runPrepared(pool, statement, values, parseRow, setup))
      )
    }
  }
  return executor
}

// ---------------------------------------------------------------------------
// Statement spans of the lean path
// ---------------------------------------------------------------------------

/** What a statement does, as OpenTelemetry's database conventions name it. */
interface Summary {
  readonly operation: string
  readonly collection: string | undefined
  /** `db.query.summary`, also the span's name: "INSERT events". */
  readonly text: string
}

const summaries = new WeakMap<Statement, Summary>()

/**
 * The statement's main operation and table, read off its text: its first write (an
 * append's is its INSERT into events, though it moves the stream's head first), else
 * what its SELECT reads, the log first when it reads it.
 */
const summarize = (statement: Statement): Summary => {
  const known = summaries.get(statement)
  if (known !== undefined) return known
  const text = statement.text
  const write =
    /\bINSERT\s+INTO\s+(events)\b/i.exec(text) ??
    /\bINSERT\s+INTO\s+([A-Za-z_][\w.]*)/i.exec(text) ??
    /\bUPDATE\s+([A-Za-z_][\w.]*)\s+SET\b/i.exec(text) ??
    /\bDELETE\s+FROM\s+([A-Za-z_][\w.]*)/i.exec(text)
  // A table, not `extract(epoch FROM timestamp)`: a FROM whose name a parenthesis does not close.
  const read = /\bFROM\s+(events)\b(?!\s*\))/i.exec(text) ?? /\bFROM\s+([A-Za-z_][\w.]*)\b(?!\s*\))/i.exec(text)
  const operation = (write?.[0] ?? /^\s*(\w+)/.exec(text)?.[1] ?? "QUERY").split(/\s/)[0]!.toUpperCase()
  const collection = write?.[1] ?? read?.[1]
  const summary = { operation, collection, text: collection === undefined ? operation : `${operation} ${collection}` }
  summaries.set(statement, summary)
  return summary
}

/**
 * The client span of a statement on the lean path, as @effect/sql makes one per
 * statement on its own: named after its summary, with the statement's text (its
 * parameters are placeholders: no value is ever in it). Made only under a tracer an
 * application installed, as the append's own span is. With `echo`, the statement is
 * also logged ({@link echoed}), inside its span.
 */
const traced = <A>(
  statement: Statement,
  echo: boolean,
  run: () => Effect.Effect<A, DriverError>
): Effect.Effect<A, DriverError> => {
  const summary = summarize(statement)
  return withHotSpan(echo ? () => echoed(statement.text, run()) : run, summary.text, () => ({
    kind: "client",
    captureStackTrace: false,
    attributes: {
      [Attributes.dbSystem]: "postgresql",
      [Attributes.dbOperation]: summary.operation,
      ...(summary.collection === undefined ? {} : { [Attributes.dbCollection]: summary.collection }),
      [Attributes.dbQuerySummary]: summary.text,
      [Attributes.dbQueryText]: statement.text,
      ...(statement.name === "" ? {} : { [Attributes.dbStatementName]: statement.name })
    }
  }))
}

// ---------------------------------------------------------------------------
// SQL echo
// ---------------------------------------------------------------------------

/** The echo's line: the duration first (the text may run over many lines), never a value. */
const echoLine = (text: string, nanos: bigint, failed: boolean): string =>
  `SQL (${(Number(nanos) / 1e6).toFixed(3)} ms${failed ? ", failed" : ""}) ${text.trim()}`

/** Logs `text` and how long `self` took, at Debug, in the caller's fiber (its spans and annotations). */
const echoed = <A, E>(text: string, self: Effect.Effect<A, E>): Effect.Effect<A, E> =>
  Effect.flatMap(Effect.clock, (clock) => {
    const start = clock.unsafeCurrentTimeNanos()
    return Effect.onExit(self, (exit) =>
      Effect.logDebug(echoLine(text, clock.unsafeCurrentTimeNanos() - start, Exit.isFailure(exit)))
    )
  })

/** What pg hands a client to run: a text, a config with one, or a submittable (pg-cursor, a lean run). */
interface QueryArgument {
  readonly text?: unknown
  readonly submit?: unknown
  handleReadyForQuery?: (...args: Array<unknown>) => unknown
  handleError?: (...args: Array<unknown>) => unknown
}

/**
 * A pg client class that reports each statement it runs to `report` (its text, when it
 * started, whether it failed): the echo of every statement that is not the lean path's,
 * whoever sends it (@effect/sql's, pg-cursor's, the pool's own check and pings). The
 * lean path's runs are left to {@link traced}, which logs them in the caller's fiber.
 */
const echoingClient = (
  now: () => bigint,
  report: (text: string, start: bigint, failed: boolean) => void
): typeof Pg.Client =>
  class EchoingClient extends Pg.Client {
    // biome-ignore lint/suspicious/noExplicitAny: pg's query has a dozen overloads; this forwards every one of them
    override query(...args: Array<any>): any {
      const query = Pg.Client.prototype.query as (...args: Array<unknown>) => unknown
      const first: QueryArgument | string | undefined = args[0]
      const start = now()
      if (typeof first === "object" && first !== null && typeof first.submit === "function") {
        if (!LeanQuery.isLeanQuery(first)) {
          // pg-cursor: it is done when pg hands it ReadyForQuery (after its last row, or when closed) or an error.
          // After an error pg still hands it ReadyForQuery: it is reported once, at the first.
          const text = String(first.text)
          let reported = false
          const once = (failed: boolean) => {
            if (!reported) report(text, start, failed)
            reported = true
          }
          const ready = first.handleReadyForQuery
          const error = first.handleError
          first.handleReadyForQuery = function (this: unknown, ...rest: Array<unknown>) {
            once(false)
            return ready?.apply(this, rest)
          }
          first.handleError = function (this: unknown, ...rest: Array<unknown>) {
            once(true)
            return error?.apply(this, rest)
          }
        }
        return query.apply(this, args)
      }
      const text = typeof first === "string" ? first : String(first?.text)
      const last = args.length - 1
      const callback: unknown = args[last]
      if (last > 0 && typeof callback === "function") {
        args[last] = (error: unknown, result: unknown) => {
          report(text, start, error !== null && error !== undefined)
          callback(error, result)
        }
        return query.apply(this, args)
      }
      const result = query.apply(this, args)
      if (result instanceof Promise) {
        result.then(
          () => report(text, start, false),
          () => report(text, start, true)
        )
      }
      return result
    }
  }

/** What a client's own `'error'` listener saw: the error that broke it, if any. */
interface Watch {
  broken: Error | undefined
}

const watches = new WeakMap<Pg.ClientBase, Watch>()

/**
 * Attaches to `client`, once, a listener of its own that keeps the error that broke it.
 * It stays for the client's whole life, checked out or idle: pg emits `'error'` on a
 * client whose socket dies (once for the socket, once more when it closes), and an
 * `'error'` with no listener kills the process. A broken client is destroyed on release
 * and never handed out again, so what the listener keeps is never stale.
 */
const watch = (client: Pg.ClientBase): Watch => {
  let seen = watches.get(client)
  if (seen === undefined) {
    const state: Watch = { broken: undefined }
    client.on("error", (error) => {
      state.broken ??= error
    })
    watches.set(client, state)
    seen = state
  }
  return seen
}

/**
 * Whether a connection that failed a statement with `error` can go back to the pool: a
 * server error or a rejected row leaves it usable, except an error that ends the
 * session (severity FATAL or PANIC: the server is shutting down or terminated it) and
 * "current transaction is aborted" (25P02: it was handed out inside a transaction, which
 * a statement of ours outside one can never clear). Anything else (a lost socket) does not.
 */
const usableAfter = (error: Error | undefined): boolean =>
  error === undefined ||
  error instanceof LeanQuery.RowError ||
  (error instanceof Pg.DatabaseError &&
    error.severity !== "FATAL" &&
    error.severity !== "PANIC" &&
    error.code !== "25P02")

/**
 * Checks a connection out of the pool, runs the statement, and releases the
 * connection: destroyed when it broke, returned otherwise. An interrupted caller stops
 * waiting at once. A statement not sent yet (the caller was waiting for a connection)
 * is never sent; one sent already runs to its end (an append's outcome is then the
 * store's to find out, as for any statement whose answer is lost) and the connection is
 * released as usual.
 *
 * Only a caller that may wait gets a canceler: with a connection idle, the pool hands
 * it out at once (after a ping, when it sat idle long), and a canceler (Effect wraps
 * the wait in an interruption handler) cost an append about 25 us of client CPU, a
 * sixth of it (W1).
 */
const runPrepared = <A>(
  pool: Pg.Pool,
  statement: Statement,
  values: ReadonlyArray<unknown>,
  parseRow: (row: Row) => A,
  setup?: LeanQuery.Setup
): Effect.Effect<ReadonlyArray<A>, DriverError> =>
  Effect.async<ReadonlyArray<A>, DriverError>((resume) => {
    const waiting = pool.idleCount > 0 ? undefined : { interrupted: false }
    pool.connect((connectError, client, release) => {
      if (connectError !== undefined || client === undefined) {
        resume(Effect.fail(classify(connectError ?? new Error("the pool handed out no connection"), true)))
        return
      }
      const seen = watch(client)
      if (waiting?.interrupted === true) {
        release(seen.broken)
        return
      }
      LeanQuery.run(
        client,
        statement,
        values,
        parseRow,
        (error, rows) => {
          release(seen.broken === undefined && usableAfter(error) ? undefined : (seen.broken ?? error))
          resume(error === undefined ? Effect.succeed(rows) : Effect.fail(classify(error)))
        },
        setup
      )
    })
    // No canceler returned, no interruption handler: Effect wraps the wait only for a caller that may wait.
    return waiting === undefined
      ? undefined
      : Effect.sync(() => {
          waiting.interrupted = true
        })
  })

// ---------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------

/** A connection held for as long as the scope lasts (a session-level lock lives on it). */
export interface Session {
  readonly run: (text: string, values: ReadonlyArray<unknown>) => Effect.Effect<ReadonlyArray<Row>, DriverError>
}

/**
 * Reserves a connection of the `SqlClient`'s pool until the scope closes. @effect/sql-pg
 * keeps an `'error'` listener on it and destroys it on release when it broke.
 */
export const reserve = (client: SqlClient.SqlClient): Effect.Effect<Session, DriverError, Scope.Scope> =>
  Effect.map(
    Effect.mapError(client.reserve, (error) => classify(error, true)),
    (connection): Session => ({
      run: (text, values) => Effect.mapError(connection.executeValues(text, values), (error) => classify(error))
    })
  )

// ---------------------------------------------------------------------------
// LISTEN
// ---------------------------------------------------------------------------

/** pg's settings for a connection of its own, from the application's PgClient. */
const clientConfig = (config: PgClient.PgClientConfig, applicationName: string): Pg.ClientConfig => ({
  ...(config.url === undefined ? {} : { connectionString: Redacted.value(config.url) }),
  ...(config.host === undefined ? {} : { host: config.host }),
  ...(config.port === undefined ? {} : { port: config.port }),
  ...(config.database === undefined ? {} : { database: config.database }),
  ...(config.username === undefined ? {} : { user: config.username }),
  ...(config.password === undefined ? {} : { password: Redacted.value(config.password) }),
  ...(config.ssl === undefined ? {} : { ssl: config.ssl }),
  // A LISTEN connection is idle for long stretches: keepalives find a dead peer.
  keepAlive: true,
  application_name: applicationName
})

/** The payloads of notifications sent before they named their schema (migration 14): they wake every store. */
const unscopedPayloads: ReadonlySet<string> = new Set(["append", "retry"])

/**
 * Whether a notification is for the store whose tables are in `schema`: Eventfold's
 * notifications name the schema of the tables they are about in their payload, since
 * channels are the database's and stores in other schemas share them. With `schema`
 * unknown, every notification is.
 */
export const notifies = (payload: string, schema: string | undefined): boolean =>
  schema === undefined || payload === schema || unscopedPayloads.has(payload)

/**
 * LISTENs on `channel` on a connection of its own (LISTEN must hold its session,
 * outside the pool), opened from the application's PgClient settings. Emits each
 * notification's payload; `connected` runs once listening, with the session's pid
 * (notifications sent before it were missed). Fails as soon as the connection is lost:
 * the caller decides when to listen again.
 */
export const listen = (
  config: PgClient.PgClientConfig,
  channel: string,
  connected: (pid: number) => Effect.Effect<void> = () => Effect.void
): Stream.Stream<string, DriverError> =>
  Stream.asyncScoped<string, DriverError>((emit) =>
    Effect.gen(function* () {
      const runFork = Runtime.runFork(yield* Effect.runtime<never>())
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => {
          const client = new Pg.Client(clientConfig(config, `${config.applicationName ?? "eventfold"} (listen)`))
          // From before connecting to after the end: an error without a listener kills the process.
          client.on("error", (error) => {
            void emit.fail(classify(error))
          })
          client.on("end", () => {
            void emit.fail(classify(new Error("the LISTEN connection ended")))
          })
          client.on("notification", (message) => {
            if (message.channel === channel) void emit.single(message.payload ?? "")
          })
          return client
        }),
        (client) =>
          Effect.promise(() => client.end().catch(() => undefined)).pipe(Effect.timeout("1 second"), Effect.ignore)
      )
      const pid = yield* Effect.tryPromise({
        try: async () => {
          await client.connect()
          const { rows } = await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")
          // Last, so that pg_stat_activity shows the session as the LISTEN it is.
          await client.query(`LISTEN ${Pg.escapeIdentifier(channel)}`)
          return rows[0]?.pid ?? 0
        },
        catch: (cause) => classify(cause, true)
      })
      runFork(connected(pid))
    })
  )

// ---------------------------------------------------------------------------
// Pools
// ---------------------------------------------------------------------------

/** A pool, and whether its statements are echoed. */
interface PoolEntry {
  readonly pool: Pg.Pool
  readonly echo: boolean
}

const pools = new WeakMap<Connections, PoolEntry>()

const poolOf = (connections: Connections): PoolEntry => {
  const entry = pools.get(connections)
  if (entry === undefined) throw new Error("Connections not made by pgDriver.makePool")
  return entry
}

/** A pool's settings, resolved. */
export interface PoolConfig {
  readonly host: string
  readonly port: number
  readonly user: string | undefined
  readonly password: Redacted.Redacted<string> | undefined
  readonly database: string | undefined
  /** The startup `options` of every connection (the schema's `search_path`, ...). */
  readonly startupOptions: string | undefined
  /** TLS, and when to connect the other way (libpq's `allow` and `prefer`). */
  readonly tls: Target.TlsPlan
  readonly min: number
  readonly max: number
  readonly acquireTimeoutMillis: number
  readonly idleTimeoutMillis: number
  readonly maxLifetimeSeconds: number | undefined
  readonly applicationName: string
  /** With a value, a connection idle for longer than this is checked (`SELECT 1`) before it is handed out. */
  readonly prePingAfterMillis: number | undefined
  /** Session settings of every connection (`statement_timeout`, ...), in milliseconds; 0 turns one off. */
  readonly statementTimeoutMillis: number | undefined
  readonly lockTimeoutMillis: number | undefined
  readonly idleInTransactionTimeoutMillis: number | undefined
  /** Log every statement's text and duration at Debug (see the module's overview). */
  readonly echo: boolean
}

/** The pool's figures at one moment (pg-pool's public counters). */
export interface PoolCounts {
  readonly open: number
  readonly idle: number
  readonly waiting: number
}

type ConnectCallback = (
  err: Error | undefined,
  client: Pg.PoolClient | undefined,
  done: (release?: unknown) => void
) => void

/**
 * A pg pool that does what pg-pool does not, each only when asked (a plain `Pg.Pool`
 * does the rest):
 *
 * - `pingAfterMillis`: validates a connection on checkout when it has been idle for
 *   longer. pg-pool only verifies new connections; a connection that sat idle while the
 *   server or the network dropped it would fail the caller's first query.
 * - `checkedOut`: called when a checkout starts, it returns what to call when it ends
 *   (with a connection or not): the pool metrics' acquire time, validation included.
 */
class EventfoldPool extends Pg.Pool {
  private readonly releasedAt = new WeakMap<Pg.PoolClient, number>()
  constructor(
    config: Pg.PoolConfig,
    private readonly pingAfterMillis: number | undefined,
    private readonly checkedOut: (() => () => void) | undefined
  ) {
    super(config)
    if (pingAfterMillis !== undefined) this.on("release", (_error, client) => this.releasedAt.set(client, Date.now()))
  }

  override connect(): Promise<Pg.PoolClient>
  override connect(callback: ConnectCallback): void
  override connect(callback?: ConnectCallback): Promise<Pg.PoolClient> | undefined {
    if (callback === undefined) {
      return new Promise((resolve, reject) =>
        this.connect((err, client) => (err || !client ? reject(err) : resolve(client)))
      )
    }
    if (this.checkedOut === undefined) {
      this.checkout(callback)
    } else {
      const ended = this.checkedOut()
      this.checkout((err, client, done) => {
        ended()
        callback(err, client, done)
      })
    }
    return undefined
  }

  private checkout(callback: ConnectCallback): void {
    const pingAfterMillis = this.pingAfterMillis
    if (pingAfterMillis === undefined) {
      super.connect(callback)
      return
    }
    super.connect((err, client, done) => {
      if (err || client === undefined) return callback(err, client, done)
      const releasedAt = this.releasedAt.get(client)
      if (releasedAt === undefined || Date.now() - releasedAt < pingAfterMillis) {
        return callback(undefined, client, done)
      }
      // The ping runs on a connection that is out of the pool: it needs a listener too. The
      // ping's own callback gets the same error and acts on it.
      const onError = () => {}
      client.on("error", onError)
      client.query("SELECT 1", (pingError) => {
        client.off("error", onError)
        if (!pingError) return callback(undefined, client, done)
        // The connection is dead: destroy it, and check the next one as well (each failure
        // destroys one, so this ends, at the latest with a new connection, which is not pinged).
        done(pingError)
        this.checkout(callback)
      })
    })
  }
}

/** How often the pool's connection counts are sampled for `eventfold.pool.connections`. */
const poolSampleInterval = Duration.seconds(1)

/** The tags of the pool metrics: the pool's name, then the state. */
const poolTags = (name: string, state?: string): Array<MetricLabel.MetricLabel> =>
  state === undefined
    ? [MetricLabel.make(Attributes.poolName, name)]
    : [MetricLabel.make(Attributes.poolName, name), MetricLabel.make(Attributes.poolState, state)]

/** The checkout timer `EventfoldPool` calls: `eventfold.pool.acquire.duration`, in milliseconds. */
const checkoutTimer = (clock: Clock.Clock, name: string): (() => () => void) => {
  const tags = poolTags(name)
  return () => {
    const start = clock.unsafeCurrentTimeNanos()
    return () => poolMetrics.acquireDuration.unsafeUpdate(Number(clock.unsafeCurrentTimeNanos() - start) / 1e6, tags)
  }
}

/**
 * `eventfold.pool.connections` of `pool`: its counts by state sampled now, then every
 * second by a fiber of the scope, and once more when the scope closes (before the pool
 * ends, when added after the pool's own finalizer).
 */
const samplePool = (pool: Pg.Pool, name: string): Effect.Effect<void, never, Scope.Scope> => {
  const idle = poolTags(name, "idle")
  const used = poolTags(name, "used")
  const waiting = poolTags(name, "waiting")
  const sample = Effect.sync(() => {
    poolMetrics.connections.unsafeUpdate(pool.idleCount, idle)
    poolMetrics.connections.unsafeUpdate(pool.totalCount - pool.idleCount, used)
    poolMetrics.connections.unsafeUpdate(pool.waitingCount, waiting)
  })
  return Effect.zipRight(
    Effect.addFinalizer(() => sample),
    Effect.asVoid(Effect.forkScoped(Effect.repeat(sample, Schedule.spaced(poolSampleInterval))))
  )
}

/**
 * Opens a pool and checks one connection, retrying by `retry` while the server cannot
 * be reached (each failure logged with host and port, never the password); the pool
 * ends when the scope closes.
 */
export const makePool = (
  config: PoolConfig
): Effect.Effect<
  {
    readonly connections: Connections
    readonly counts: Effect.Effect<PoolCounts>
    readonly check: Effect.Effect<void, DriverError>
  },
  never,
  Scope.Scope
> =>
  Effect.gen(function* () {
    // Every field pg would otherwise take from its own parsing of a URL or from PGSSLMODE is
    // given: TLS above all is what the options say, never what the environment says.
    const settings: Pg.PoolConfig = {
      host: config.host,
      port: config.port,
      ...(config.user === undefined ? {} : { user: config.user }),
      ...(config.password === undefined ? {} : { password: Redacted.value(config.password) }),
      ...(config.database === undefined ? {} : { database: config.database }),
      ...(config.startupOptions === undefined ? {} : { options: config.startupOptions }),
      ssl: config.tls.ssl,
      min: config.min,
      max: config.max,
      connectionTimeoutMillis: config.acquireTimeoutMillis,
      idleTimeoutMillis: config.idleTimeoutMillis,
      ...(config.maxLifetimeSeconds === undefined ? {} : { maxLifetimeSeconds: config.maxLifetimeSeconds }),
      ...(config.statementTimeoutMillis === undefined ? {} : { statement_timeout: config.statementTimeoutMillis }),
      ...(config.lockTimeoutMillis === undefined ? {} : { lock_timeout: config.lockTimeoutMillis }),
      ...(config.idleInTransactionTimeoutMillis === undefined
        ? {}
        : { idle_in_transaction_session_timeout: config.idleInTransactionTimeoutMillis }),
      keepAlive: true,
      application_name: config.applicationName
    }
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const clock = yield* Effect.clock
    if (config.echo) {
      settings.Client = echoingClient(
        () => clock.unsafeCurrentTimeNanos(),
        (text, start, failed) =>
          runFork(Effect.logDebug(echoLine(text, clock.unsafeCurrentTimeNanos() - start, failed)))
      )
    }
    // Decided once, where the pool is made: with metrics off, nothing of them is on the checkout path.
    const measured = yield* FiberRef.get(metricsEnabled)
    const checkedOut = measured ? checkoutTimer(clock, config.applicationName) : undefined
    const pool =
      config.prePingAfterMillis === undefined && checkedOut === undefined
        ? new Pg.Pool(settings)
        : new EventfoldPool(settings, config.prePingAfterMillis, checkedOut)
    // An idle connection the server closed: pg-pool already removes it; we report it.
    pool.on("error", (error) => runFork(Effect.logWarning(`PostgreSQL pool: idle connection lost: ${error.message}`)))
    yield* Effect.addFinalizer(() =>
      Effect.promise(() => pool.end().catch(() => undefined)).pipe(Effect.timeout("5 seconds"), Effect.ignore)
    )
    if (measured) yield* samplePool(pool, config.applicationName)
    const connections: Connections = { _tag: "Connections" }
    pools.set(connections, { pool, echo: config.echo })
    // libpq's `allow` and `prefer` connect the other way when the first is refused for want
    // (or excess) of TLS. pg cannot do that per connection: the first check that meets the
    // refusal switches the pool, whose later connections (and LISTEN connections, made from
    // its options) then all connect the other way.
    let fallback = config.tls.fallback
    const query = Effect.tryPromise({ try: () => pool.query("SELECT 1"), catch: (cause) => cause })
    const check = query.pipe(
      Effect.catchAll((cause) => {
        if (fallback === undefined || !refusedFor(fallback.when, cause)) return Effect.fail(cause)
        ;(pool.options as Pg.PoolConfig).ssl = fallback.ssl
        fallback = undefined
        return query
      }),
      Effect.mapError((cause) => classify(cause, true)),
      Effect.asVoid
    )
    const counts = Effect.sync(
      (): PoolCounts => ({ open: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount })
    )
    return { connections, counts, check }
  })

/** Whether a connection was refused for the reason `allow` or `prefer` connects the other way on. */
const refusedFor = (when: NonNullable<Target.TlsPlan["fallback"]>["when"], cause: unknown): boolean =>
  when === "server has no TLS"
    ? cause instanceof Error && cause.message === PG_NO_TLS
    : cause instanceof Pg.DatabaseError &&
      cause.code === "28000" &&
      // The pg_hba.conf line that would match asks for TLS: "no encryption" (PostgreSQL 14+), "SSL off" before.
      /no encryption|SSL off/.test(cause.message)

/** pg's errors when TLS cannot be set up with the server. */
const PG_NO_TLS = "The server does not support SSL connections"
const PG_TLS_FAILED = "There was an error establishing an SSL connection"

/** Node's (OpenSSL's) codes of a TLS handshake or certificate failure. */
const tlsErrorCode =
  /^(ERR_TLS_|ERR_SSL_|ERR_OSSL_|CERT_|UNABLE_TO_|DEPTH_ZERO_SELF_SIGNED_CERT$|SELF_SIGNED_CERT_IN_CHAIN$|HOSTNAME_MISMATCH$|EPROTO$)/

/**
 * A failure to connect that trying again with the same settings does not mend: TLS that
 * cannot be set up or a server certificate that does not verify, or the server refusing
 * the login (SQLSTATE class 28: no pg_hba.conf entry, a wrong password, a missing client
 * certificate).
 */
export const isSettingsFailure = (error: DriverError): boolean => {
  if (error.code?.startsWith("28") === true) return true
  const cause = error.cause instanceof SqlError ? error.cause.cause : error.cause
  if (!(cause instanceof Error)) return false
  const code = (cause as NodeJS.ErrnoException).code
  return (
    (typeof code === "string" && tlsErrorCode.test(code)) ||
    cause.message === PG_NO_TLS ||
    cause.message === PG_TLS_FAILED
  )
}

/** The pg pool behind `connections`, for @effect/sql-pg's `PgClient.layerFromPool`. */
export const pgPool = (connections: Connections): Pg.Pool => poolOf(connections).pool

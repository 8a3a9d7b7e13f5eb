/**
 * A named prepared statement run on a pg connection with only what the extended
 * protocol needs: Parse (once per connection), Bind, Execute, Sync. pg's own Query
 * also sends Describe on every run and builds a result object per run from the
 * RowDescription (its parsers, a row prototype, objects keyed by column name); on an
 * append that was about a third of the client's CPU, for one row whose columns the
 * statement fixes anyway. Rows come as arrays of text (or null), in the statement's
 * column order, each handed to `parseRow` as it arrives, so that a long read is
 * decoded while the server is still sending it.
 *
 * It plugs into pg as a "submittable", the interface pg documents for custom queries
 * and uses for pg-cursor and pg-query-stream: pg queues it, hands it the connection
 * when it is its turn, and reports the server's messages and connection errors to
 * it. Which statements a connection has prepared is this module's own record (one
 * per client, forgotten with the client), never pg's.
 *
 * A run may send a `setup` statement first (the tenant setting of a tenant scope): both
 * go in one pipeline before a single Sync, so that they run in one implicit transaction
 * (a setting made with `set_config(..., true)` lasts exactly as long as the statement
 * after it) at the cost of one round trip. Only the statement's rows are kept.
 *
 * Only `pgDriver.ts` uses this module.
 */
import type * as Pg from "pg"

/** A row: the columns' text, in the statement's order. */
export type Row = ReadonlyArray<string | null>

/** The statement's name (parsed once per connection under it; "" for a statement planned on every run) and text. */
export interface Statement {
  readonly name: string
  readonly text: string
}

/** What of pg's Connection a submittable uses (pg-cursor uses the same calls). */
interface Connection {
  readonly stream: { cork?: () => void; uncork?: () => void }
  parse(query: { readonly text: string; readonly name: string }): void
  bind(config: {
    readonly portal: string
    readonly statement: string
    readonly values: ReadonlyArray<unknown>
    readonly binary: boolean
    readonly valueMapper: (value: unknown) => string | null
  }): void
  execute(config: { readonly portal: string }): void
  close(config: { readonly type: "S"; readonly name: string }): void
  sync(): void
  sendCopyFail(message: string): void
}

/** `parseRow` threw: the statement ran and the connection is fine; the row was not what the reader expects. */
export class RowError extends Error {
  constructor(override readonly cause: unknown) {
    super(`a row could not be read: ${cause instanceof Error ? cause.message : String(cause)}`)
    this.name = "RowError"
  }
}

/**
 * What a connection holds of a named statement: parsed, or perhaps parsed (its Parse
 * was sent, and the run failed before we could tell whether the server kept it).
 */
type Prepared = "parsed" | "uncertain"

/** Per client, the named statements it holds; a new client (a reconnect) starts empty. */
const preparedBy = new WeakMap<Pg.ClientBase, Map<string, Prepared>>()

const preparedOn = (client: Pg.ClientBase): Map<string, Prepared> => {
  let prepared = preparedBy.get(client)
  if (prepared === undefined) {
    prepared = new Map()
    preparedBy.set(client, prepared)
  }
  return prepared
}

/**
 * Parameters are text: strings as they are; numbers, bigints and booleans as PostgreSQL
 * reads them. Callers pass only these (dates as ISO strings, arrays as array literals).
 */
const toText = (value: unknown): string | null =>
  value === null || value === undefined ? null : typeof value === "string" ? value : String(value)

/** A statement sent before the one whose rows a run returns, in the same implicit transaction. */
export interface Setup {
  readonly statement: Statement
  readonly values: ReadonlyArray<unknown>
}

class LeanQuery<A> {
  // pg reads `name` and `text` (and records the statement in its own bookkeeping, which we never read).
  readonly name: string
  readonly text: string
  private readonly rows: Array<A> = []
  private failure: Error | undefined
  /** Named statements this run parses. */
  private readonly parsing: Array<string> = []
  /** Statements not completed yet before the one whose rows count (the setup's). */
  private skipping: number
  private done = false

  constructor(
    statement: Statement,
    private readonly prepared: Map<string, Prepared>,
    private readonly values: ReadonlyArray<unknown>,
    private readonly parseRow: (row: Row) => A,
    private readonly callback: (error: Error | undefined, rows: ReadonlyArray<A>) => void,
    private readonly setup: Setup | undefined
  ) {
    this.name = statement.name
    this.text = statement.text
    this.skipping = setup === undefined ? 0 : 1
  }

  private send(connection: Connection, statement: Statement, values: ReadonlyArray<unknown>): void {
    if (statement.name === "") {
      // Unnamed: parsed, and planned, on every run.
      connection.parse({ text: statement.text, name: "" })
    } else {
      const state = this.prepared.get(statement.name)
      if (state !== "parsed") {
        // Closing a statement that does not exist is not an error: after an uncertain
        // run the statement is made again from scratch.
        if (state === "uncertain") connection.close({ type: "S", name: statement.name })
        connection.parse({ text: statement.text, name: statement.name })
        this.parsing.push(statement.name)
      }
    }
    connection.bind({ portal: "", statement: statement.name, values, binary: false, valueMapper: toText })
    connection.execute({ portal: "" })
  }

  submit(connection: Connection): null {
    connection.stream.cork?.()
    try {
      if (this.setup !== undefined) this.send(connection, this.setup.statement, this.setup.values)
      this.send(connection, this, this.values)
      connection.sync()
    } finally {
      connection.stream.uncork?.()
    }
    return null
  }

  handleDataRow(message: { readonly fields: Row }): void {
    if (this.failure !== undefined || this.skipping > 0) return
    try {
      this.rows.push(this.parseRow(message.fields))
    } catch (error) {
      // Reported once the server is done with the statement, as pg does.
      this.failure = new RowError(error)
    }
  }

  // An ErrorResponse (then pg forgets this query), or a dead connection.
  handleError(error: Error): void {
    this.finish(error)
  }

  handleReadyForQuery(): void {
    this.finish(this.failure)
  }

  handleCopyInResponse(connection: Connection): void {
    connection.sendCopyFail("eventfold: a prepared statement does not copy")
  }

  handleRowDescription(): void {}
  handleCommandComplete(): void {
    if (this.skipping > 0) this.skipping--
  }
  handleEmptyQuery(): void {}
  handlePortalSuspended(): void {}
  handleCopyData(): void {}

  private finish(error: Error | undefined): void {
    if (this.done) return
    this.done = true
    for (const name of this.parsing) {
      // A run that got as far as its rows had its statements parsed; after a server error
      // we cannot tell whether a Parse or a later step failed.
      this.prepared.set(name, error === undefined || error instanceof RowError ? "parsed" : "uncertain")
    }
    this.callback(error, this.rows)
  }
}

/** Whether pg was handed a run of this module (the SQL echo of `pgDriver` reports those in the caller's fiber). */
export const isLeanQuery = (u: unknown): boolean => u instanceof LeanQuery

/**
 * Runs `statement` on `client`. The callback gets pg's error (a DatabaseError for the
 * server's), a {@link RowError} for what `parseRow` threw, or the parsed rows.
 */
export const run = <A>(
  client: Pg.ClientBase,
  statement: Statement,
  values: ReadonlyArray<unknown>,
  parseRow: (row: Row) => A,
  callback: (error: Error | undefined, rows: ReadonlyArray<A>) => void,
  setup?: Setup
): void => {
  // pg accepts any object with `submit` (its typings only know its own submittables).
  client.query(
    new LeanQuery(statement, preparedOn(client), values, parseRow, callback, setup) as unknown as Pg.QueryConfig
  )
}

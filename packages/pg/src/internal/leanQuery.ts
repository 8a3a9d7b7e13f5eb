/**
 * A named prepared statement run on a pg connection with only what the extended
 * protocol needs: Parse (once per connection), Bind, Execute, Sync. pg's own Query
 * also sends Describe on every run and builds a result object per run from the
 * RowDescription (its parsers, a row prototype, objects keyed by column name); on an
 * append that was about a third of the client's CPU, for one row of four columns
 * whose order the statement fixes anyway. Rows come as arrays of text (or null), in
 * the statement's column order, each handed to `parseRow` as it arrives, so that a
 * long read is decoded while the server is still sending it.
 *
 * It plugs into pg as a "submittable" (the interface pg-cursor and pg-query-stream
 * use), so the client's queueing, connection state and error handling are pg's own.
 */
import type * as Pg from "pg"

/** A row: the columns' text, in the statement's order. */
export type Row = ReadonlyArray<string | null>

/** The statement's name (parsed once per connection under it; "" for a statement planned on every run) and text. */
export interface Statement {
  readonly name: string
  readonly text: string
}

/** What of pg's Connection a submittable uses (pg-cursor uses the same). */
interface Connection {
  readonly stream: { cork?: () => void; uncork?: () => void }
  readonly parsedStatements: Record<string, string | undefined>
  readonly submittedNamedStatements: Record<string, string | undefined>
  parse(query: { readonly text: string; readonly name: string }): void
  bind(config: {
    readonly portal: string
    readonly statement: string
    readonly values: ReadonlyArray<unknown>
    readonly binary: boolean
    readonly valueMapper: (value: unknown) => string | null
  }): void
  execute(config: { readonly portal: string }): void
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
 * Parameters are text: strings as they are; numbers, bigints and booleans as PostgreSQL
 * reads them. Callers pass only these (dates as ISO strings, arrays as array literals).
 */
const toText = (value: unknown): string | null =>
  value === null || value === undefined ? null : typeof value === "string" ? value : String(value)

class LeanQuery<A> {
  // pg reads these: `name` and `text` to record the statement as parsed on the connection.
  readonly name: string
  readonly text: string
  private readonly rows: Array<A> = []
  private failure: Error | undefined
  private done = false

  constructor(
    statement: Statement,
    private readonly values: ReadonlyArray<unknown>,
    private readonly parseRow: (row: Row) => A,
    private readonly callback: (error: Error | undefined, rows: ReadonlyArray<A>) => void
  ) {
    this.name = statement.name
    this.text = statement.text
  }

  submit(connection: Connection): null {
    connection.stream.cork?.()
    try {
      // Named: parsed once per connection. Unnamed (""): parsed, and planned, on every run.
      if (this.name === "") connection.parse({ text: this.text, name: "" })
      else if (
        connection.parsedStatements[this.name] === undefined &&
        connection.submittedNamedStatements[this.name] === undefined
      ) {
        connection.parse({ text: this.text, name: this.name })
        connection.submittedNamedStatements[this.name] = this.text
      }
      connection.bind({ portal: "", statement: this.name, values: this.values, binary: false, valueMapper: toText })
      connection.execute({ portal: "" })
      connection.sync()
    } finally {
      connection.stream.uncork?.()
    }
    return null
  }

  handleDataRow(message: { readonly fields: Row }): void {
    if (this.failure !== undefined) return
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
  handleCommandComplete(): void {}
  handleEmptyQuery(): void {}
  handlePortalSuspended(): void {}
  handleCopyData(): void {}

  private finish(error: Error | undefined): void {
    if (this.done) return
    this.done = true
    this.callback(error, this.rows)
  }
}

/**
 * Runs `statement` on `client`. The callback gets pg's error (a DatabaseError for the
 * server's), what `parseRow` threw, or the parsed rows.
 */
export const run = <A>(
  client: Pg.ClientBase,
  statement: Statement,
  values: ReadonlyArray<unknown>,
  parseRow: (row: Row) => A,
  callback: (error: Error | undefined, rows: ReadonlyArray<A>) => void
): void => {
  // pg accepts any object with `submit` (its typings only know its own submittables).
  client.query(new LeanQuery(statement, values, parseRow, callback) as unknown as Pg.QueryConfig)
}

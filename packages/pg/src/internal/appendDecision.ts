/**
 * What an append's outcome means, as pure functions from the named result columns
 * of its statements (`appendSql.ts`) to a tagged {@link Decision}. The interpreter in
 * `pgAppend.ts` runs the statement a decision asks for and hands its row to the next
 * function here; nothing here touches a database, so every rule is tested alone
 * (test/appendDecision.test.ts).
 *
 * The path of an append:
 *
 * 1. {@link afterAppend}: it went in (`Appended`), or it did not (a single event:
 *    `LookUpHead`, a batch: `Explain`), or it met a unique constraint of ours (an id
 *    stored already, or a version taken by events written around the store: `Explain`).
 * 2. {@link afterHead}: the event's id is stored (`Explain`), or the head is behind the
 *    stream's events (`RepairHead`), or the head says why the expectation failed
 *    (`Conflict`), or the expectation holds now (`Retry`: the head moved in between,
 *    e.g. a stream `streamExists` waited for was created).
 * 3. {@link afterExplain}: the ids are this append's own, stored at consecutive
 *    versions from a version the expectation accepts (an idempotent replay: `Appended`
 *    with the original result); or stored elsewhere (`Duplicate`); or none is stored and
 *    the head is behind the stream's events (`RepairHead`), or the expectation failed
 *    (`Conflict`) or holds now (`Retry`).
 *
 * Before any of that, a stream of another tenant ends the append (`ForeignTenant`): a
 * stream never holds two tenants' events. The append statement moves only a head of its
 * own tenant, so such an append comes here as "did not go in"; under row-level security
 * an `any` append meets the other tenant's head and fails the policy (`CheckTenant`:
 * explain, then {@link afterTenantCheck}).
 */
import type { AppendResult } from "@eventfold/core/EventStore"
import * as ExpectedVersion from "@eventfold/core/ExpectedVersion"
import * as Data from "effect/Data"
import * as EventRows from "./eventRows.js"

/** What of an append the decisions need. */
export interface Input {
  readonly expectedVersion: ExpectedVersion.ExpectedVersion
  /** How many events the append has. */
  readonly count: number
}

/** The append statement's result columns. */
export const appendedColumns = EventRows.columns({ version: "int4", first_position: "int8", last_position: "int8" })

/** The head lookup's result columns. */
export const headColumns = EventRows.columns({
  head_version: "int4",
  last_version: "int4",
  stored: "bool",
  foreign_tenant: "bool"
})

/** The explanation's result columns. */
export const explainColumns = EventRows.columns({
  head_version: "int4",
  last_version: "int4",
  found: "int4",
  same_stream: "bool",
  base_min: "int4",
  base_max: "int4",
  replay_version: "int4",
  first_position: "int8",
  last_position: "int8",
  duplicate_event_id: "text",
  foreign_tenant: "bool",
  foreign_event_id: "text"
})

export type AppendedRow = ReturnType<typeof appendedColumns>
export type HeadRow = ReturnType<typeof headColumns>
export type ExplainRow = ReturnType<typeof explainColumns>

/** The constraints whose violation an explanation can account for. */
export const VERSION_CONSTRAINT = "uq_events_aggregate_version"
export const EVENT_ID_CONSTRAINT = "events_event_id_key"

/** How the append statement ended. */
export type Outcome =
  | { readonly _tag: "Rows"; readonly rows: ReadonlyArray<AppendedRow> }
  /** A unique violation (SQLSTATE 23505) of `constraint`; `cause` is the database's error. */
  | { readonly _tag: "UniqueViolation"; readonly constraint: string | undefined; readonly cause: unknown }
  /** A row-level security policy refused a row (SQLSTATE 42501); `cause` is the database's error. */
  | { readonly _tag: "PolicyViolation"; readonly cause: unknown }

/**
 * The next step of an append.
 */
export type Decision = Data.TaggedEnum<{
  /** Done: the events are stored at these versions (now, or by the append this one replays). */
  Appended: { readonly result: AppendResult }
  /** A single event did not go in: run the head lookup, then {@link afterHead}. */
  LookUpHead: {}
  /** Run the explanation, then {@link afterExplain}. */
  Explain: {}
  /** A policy refused the append: run the explanation, then {@link afterTenantCheck}. */
  CheckTenant: { readonly cause: unknown }
  /** The stream belongs to another tenant than the append's. */
  ForeignTenant: {}
  /** The stream's events reach `lastVersion`, past its head: raise the head, then append again. */
  RepairHead: { readonly lastVersion: number }
  /** The expectation holds at `actualVersion` after all: append again. */
  Retry: { readonly actualVersion: number }
  /** The stream is at `actualVersion`, which the expectation does not accept. */
  Conflict: { readonly actualVersion: number }
  /** `eventId` is stored elsewhere than this append would put it. */
  Duplicate: { readonly eventId: string }
  /** The database refused the append for a reason of its own (another unique index, say). */
  Refused: { readonly cause: unknown }
  /** A result no rule accounts for. */
  Unexpected: { readonly message: string }
}>

export const Decision = Data.taggedEnum<Decision>()

/** Step 1: the append statement's outcome. */
export const afterAppend = (input: Input, outcome: Outcome): Decision => {
  if (outcome._tag === "PolicyViolation") return Decision.CheckTenant({ cause: outcome.cause })
  if (outcome._tag === "UniqueViolation") {
    return outcome.constraint === VERSION_CONSTRAINT || outcome.constraint === EVENT_ID_CONSTRAINT
      ? Decision.Explain()
      : Decision.Refused({ cause: outcome.cause })
  }
  const row = outcome.rows[0]
  if (row === undefined || row.version === null) {
    // Nothing went in: the head did not accept the expectation (or the events met a constraint).
    return input.count === 1 ? Decision.LookUpHead() : Decision.Explain()
  }
  if (row.first_position === null || row.last_position === null) {
    return Decision.Unexpected({
      message: `an append returned a version without positions: ${JSON.stringify(row, bigints)}`
    })
  }
  return Decision.Appended({
    result: { version: row.version, firstPosition: row.first_position, lastPosition: row.last_position }
  })
}

/** Step 2 (a single event that did not go in): the head lookup's row. */
export const afterHead = (input: Input, row: HeadRow): Decision => {
  const { head_version: head, last_version: last } = row
  if (head === null || last === null || row.stored === null || row.foreign_tenant === null) {
    return Decision.Unexpected({ message: `a head lookup returned ${JSON.stringify(row)}` })
  }
  if (row.foreign_tenant) return Decision.ForeignTenant()
  if (row.stored) return Decision.Explain()
  return afterStream(input, head, last)
}

/** No id of the append is stored: the head decides, once it has caught up with the stream's events. */
const afterStream = (input: Input, head: number, last: number): Decision => {
  if (last > head) return Decision.RepairHead({ lastVersion: last })
  return ExpectedVersion.isSatisfiedBy(input.expectedVersion, head)
    ? Decision.Retry({ actualVersion: head })
    : Decision.Conflict({ actualVersion: head })
}

/** Step 3: the explanation's row. */
export const afterExplain = (input: Input, row: ExplainRow): Decision => {
  const { found, head_version: head, last_version: last } = row
  if (head === null || last === null || found === null || row.foreign_tenant === null) {
    return Decision.Unexpected({ message: `an explanation returned ${JSON.stringify(row, bigints)}` })
  }
  if (row.foreign_tenant) return Decision.ForeignTenant()
  if (found === 0) {
    // Ids another tenant stored are taken, though row-level security hides them.
    return row.foreign_event_id === null
      ? afterStream(input, head, last)
      : Decision.Duplicate({ eventId: row.foreign_event_id })
  }
  // A replay: every id is stored, in this stream, at consecutive versions in the batch's
  // order, from a version the expectation accepts.
  const base = row.base_min
  if (
    found === input.count &&
    row.same_stream === true &&
    base !== null &&
    base === row.base_max &&
    ExpectedVersion.isSatisfiedBy(input.expectedVersion, base) &&
    row.replay_version !== null &&
    row.first_position !== null &&
    row.last_position !== null
  ) {
    return Decision.Appended({
      result: { version: row.replay_version, firstPosition: row.first_position, lastPosition: row.last_position }
    })
  }
  return Decision.Duplicate({ eventId: row.duplicate_event_id ?? "" })
}

/**
 * After a policy refused the append: the explanation's row. Another tenant's stream is
 * the append's own mistake; anything else (the session's tenant setting differs from
 * the append's tenant, or is missing) is the database's refusal.
 */
export const afterTenantCheck = (row: ExplainRow, cause: unknown): Decision =>
  row.foreign_tenant === true ? Decision.ForeignTenant() : Decision.Refused({ cause })

/** JSON.stringify's replacer for rows holding bigints. */
const bigints = (_key: string, value: unknown) => (typeof value === "bigint" ? String(value) : value)

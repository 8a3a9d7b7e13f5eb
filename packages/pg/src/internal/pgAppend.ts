/**
 * Runs appends: the statement of `appendSql.ts` for the expectation and the batch,
 * and then whatever the decisions of `appendDecision.ts` ask for, until one of them
 * ends the append.
 *
 * Retries are one `Schedule` (`retry`), applied to two things:
 *
 * - a transient failure outside a caller's transaction (no connection, a connection
 *   lost, a serialization failure). The append is sent again with the same event ids:
 *   if the first one committed before its answer was lost, the second is its
 *   idempotent replay and returns the same result;
 * - a `Retry` or `RepairHead` decision (the expectation holds after all).
 *
 * Inside a caller's transaction the statement runs under a savepoint, so that no
 * failure of ours aborts the caller's transaction, and only decisions are retried:
 * a lost connection or a serialization failure ends the caller's transaction anyway.
 */
import {
  type ConcurrencyError,
  concurrencyError,
  DuplicateEventError,
  type EventStoreError,
  TenantMismatchError
} from "@eventfold/core/Errors"
import * as EventMetadata from "@eventfold/core/EventMetadata"
import * as EventStore from "@eventfold/core/EventStore"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type * as Schedule from "effect/Schedule"
import * as Decision from "./appendDecision.js"
import * as AppendSql from "./appendSql.js"
import * as Driver from "./pgDriver.js"
import { retryFailures } from "./retry.js"

/** The append should run again: the stream is at `actualVersion`, which the expectation accepts. */
class AppendAgain extends Data.TaggedError("AppendAgain")<{ readonly actualVersion: number }> {}

type Failure = ConcurrencyError | DuplicateEventError | TenantMismatchError | EventStoreError

const storeError = EventStore.storeError("append")

type Statements = Record<AppendSql.Base, Record<AppendSql.Shape, AppendSql.Statement>>

const baseOf = (expected: EventStore.PreparedAppend["expectedVersion"]): AppendSql.Base => {
  switch (expected._tag) {
    case "Any":
      return "any"
    case "NoStream":
      return "noStream"
    case "StreamExists":
      return "streamExists"
    case "Exact":
      return expected.version === 0 ? "noStream" : "exact"
  }
}

/** The batch as one JSON document; payloads are embedded as the JSON text core produced. */
const eventsDocument = (events: EventStore.PreparedAppend["events"]) => {
  let document = "["
  // Events of one append usually share one timestamp (the clock's, when none is given).
  let timestamp: Date | undefined
  let iso = ""
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!
    if (e.timestamp !== timestamp) {
      timestamp = e.timestamp
      iso = timestamp.toISOString()
    }
    document += `${i === 0 ? "" : ","}{"event_id":"${e.eventId}","event_type":${JSON.stringify(e.eventType)},"timestamp":"${iso}","payload":${e.payloadJson}}`
  }
  return `${document}]`
}

/** The append statements, with and without the outbox: made once (an append is made per tenant scope). */
const statementsFor = (() => {
  const made = new Map<boolean, Statements>()
  return (outbox: boolean): Statements => {
    let statements = made.get(outbox)
    if (statements === undefined) {
      const shapes = (base: AppendSql.Base) => ({
        single: AppendSql.appendStatement(base, "single", outbox),
        batch: AppendSql.appendStatement(base, "batch", outbox)
      })
      statements = {
        exact: shapes("exact"),
        noStream: shapes("noStream"),
        any: shapes("any"),
        streamExists: shapes("streamExists")
      }
      made.set(outbox, statements)
    }
    return statements
  }
})()

/**
 * The backend's `append` over an executor.
 */
export const make = (
  executor: Driver.Executor,
  options: { readonly outbox: boolean; readonly retry: Schedule.Schedule<unknown, unknown> }
): EventStore.Backend["append"] => {
  const statements = statementsFor(options.outbox)

  /** One attempt: the statement, then the decisions, to a result or a failure. */
  const attempt = (
    input: EventStore.PreparedAppend,
    transaction: boolean
  ): Effect.Effect<EventStore.AppendResult, Failure | AppendAgain | Driver.DriverError> => {
    const { aggregateId, aggregateType } = input.stream
    const decisionInput: Decision.Input = { expectedVersion: input.expectedVersion, count: input.events.length }
    const single = input.events.length === 1 ? input.events[0]! : undefined
    const statement = statements[baseOf(input.expectedVersion)][single === undefined ? "batch" : "single"]
    const parameters: Partial<AppendSql.Parameters> = {
      aggregateId,
      aggregateType,
      tenantId: input.tenantId,
      actorId: input.actorId,
      metadata: EventMetadata.toJson(input.metadata),
      expected: input.expectedVersion._tag === "Exact" ? input.expectedVersion.version : 0,
      count: input.events.length,
      ...(single === undefined
        ? { events: eventsDocument(input.events) }
        : {
            eventId: single.eventId,
            eventType: single.eventType,
            timestamp: single.timestamp.toISOString(),
            payload: single.payloadJson
          })
    }

    const run = <A>(lookup: AppendSql.Statement, values: Partial<AppendSql.Parameters>, read: (row: Driver.Row) => A) =>
      Effect.flatMap(executor.run(lookup, AppendSql.values(lookup, values), read), (rows) =>
        rows[0] === undefined
          ? Effect.fail(storeError(new Error(`${lookup.name} returned no row`)))
          : Effect.succeed(rows[0])
      )

    const explain = Effect.suspend(() =>
      run(
        AppendSql.explainStatement,
        // A uuid[] literal (the ids are checked lower-case UUIDs).
        {
          aggregateId,
          aggregateType,
          tenantId: input.tenantId,
          eventIds: `{${input.events.map((e) => e.eventId).join(",")}}`
        },
        Decision.explainColumns
      )
    )

    /** Runs what a decision asks for, until one ends the append (a switch: this runs on every append). */
    const step = (
      decision: Decision.Decision
    ): Effect.Effect<EventStore.AppendResult, Failure | AppendAgain | Driver.DriverError> => {
      switch (decision._tag) {
        case "Appended":
          return Effect.succeed(decision.result)
        case "LookUpHead":
          return Effect.flatMap(
            run(
              AppendSql.headStatement,
              { aggregateId, aggregateType, tenantId: input.tenantId, eventId: single?.eventId ?? "" },
              Decision.headColumns
            ),
            (row) => step(Decision.afterHead(decisionInput, row))
          )
        case "Explain":
          return Effect.flatMap(explain, (row) => step(Decision.afterExplain(decisionInput, row)))
        case "CheckTenant":
          return Effect.flatMap(explain, (row) => step(Decision.afterTenantCheck(row, decision.cause)))
        case "ForeignTenant":
          return Effect.fail(
            new TenantMismatchError(
              { aggregateId, aggregateType, tenantId: input.tenantId, reason: "StreamOfAnotherTenant" },
              true
            )
          )
        case "RepairHead":
          return executor
            .run(
              AppendSql.repairStatement,
              AppendSql.values(AppendSql.repairStatement, {
                aggregateId,
                aggregateType,
                lastVersion: decision.lastVersion
              }),
              (row) => row
            )
            .pipe(Effect.zipRight(Effect.fail(new AppendAgain({ actualVersion: decision.lastVersion }))))
        case "Retry":
          return Effect.fail(new AppendAgain({ actualVersion: decision.actualVersion }))
        case "Conflict":
          return Effect.fail(
            concurrencyError({
              aggregateId,
              aggregateType,
              expectedVersion: input.expectedVersion,
              actualVersion: decision.actualVersion
            })
          )
        case "Duplicate":
          return Effect.fail(new DuplicateEventError({ eventId: decision.eventId, aggregateId, aggregateType }, true))
        case "Refused":
          return Effect.fail(storeError(decision.cause))
        case "Unexpected":
          return Effect.fail(storeError(new Error(decision.message)))
      }
    }

    const statementRun = executor.run(statement, AppendSql.values(statement, parameters), Decision.appendedColumns)
    // In a caller's transaction, under a savepoint: a failed statement must not abort it.
    return Effect.matchEffect(transaction ? executor.transaction(statementRun) : statementRun, {
      onSuccess: (rows) => step(Decision.afterAppend(decisionInput, { _tag: "Rows", rows })),
      onFailure: (error) =>
        error.reason === "Statement" && error.code === "23505"
          ? step(
              Decision.afterAppend(decisionInput, {
                _tag: "UniqueViolation",
                constraint: error.constraint,
                cause: error
              })
            )
          : error.reason === "Statement" && error.code === "42501"
            ? step(Decision.afterAppend(decisionInput, { _tag: "PolicyViolation", cause: error }))
            : Effect.fail(error)
    })
  }

  return (input) =>
    Effect.flatMap(executor.inTransaction, (transaction) =>
      retryFailures(
        attempt(input, transaction),
        options.retry,
        (error) =>
          error._tag === "AppendAgain" || (!transaction && error._tag === "PgDriverError" && Driver.isTransient(error))
      ).pipe(
        Effect.catchAll((error) =>
          Effect.fail(
            error._tag === "AppendAgain"
              ? concurrencyError({
                  aggregateId: input.stream.aggregateId,
                  aggregateType: input.stream.aggregateType,
                  expectedVersion: input.expectedVersion,
                  actualVersion: error.actualVersion
                })
              : error._tag === "PgDriverError"
                ? storeError(error)
                : error
          )
        )
      )
    )
}

/**
 * The typed failures of the event store. Each carries the domain facts a caller
 * needs to recover (`Effect.catchTag`), and infrastructure failures keep their cause.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"
import { ExpectedVersion } from "./ExpectedVersion.js"

/**
 * The stream was not at the expected version: another writer got there first.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConcurrencyError extends Schema.TaggedError<ConcurrencyError>()("ConcurrencyError", {
  aggregateId: Schema.String,
  aggregateType: Schema.String,
  expectedVersion: ExpectedVersion,
  actualVersion: Schema.Number
}) {
  override get message(): string {
    return `${this.aggregateType} ${this.aggregateId}: expected ${formatExpected(
      this.expectedVersion
    )}, but the stream is at version ${this.actualVersion}`
  }
}

/**
 * A {@link ConcurrencyError} as a store reports a lost race: its fields come from the
 * store, already checked, and it carries no stack trace (one would show the store's
 * internals, and capturing it cost more than the rest of a conflict).
 *
 * @since 0.1.0
 * @category constructors
 */
export const concurrencyError = (fields: {
  readonly aggregateId: string
  readonly aggregateType: string
  readonly expectedVersion: ExpectedVersion
  readonly actualVersion: number
}): ConcurrencyError => {
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  try {
    return new ConcurrencyError(fields, true)
  } finally {
    Error.stackTraceLimit = limit
  }
}

const formatExpected = (expected: ExpectedVersion): string => {
  switch (expected._tag) {
    case "Any":
      return "any version"
    case "NoStream":
      return "no stream"
    case "StreamExists":
      return "an existing stream"
    case "Exact":
      return `version ${expected.version}`
  }
}

/**
 * An event id is already stored at another place in the log.
 *
 * @since 0.1.0
 * @category errors
 */
export class DuplicateEventError extends Schema.TaggedError<DuplicateEventError>()("DuplicateEventError", {
  eventId: Schema.String,
  aggregateId: Schema.String,
  aggregateType: Schema.String
}) {
  override get message(): string {
    return `event ${this.eventId} is already stored elsewhere than ${this.aggregateType} ${this.aggregateId} at these versions`
  }
}

/**
 * An append would put one tenant's events in another tenant's stream, or outside the
 * tenant scope it runs in. Nothing was written. `reason`:
 *
 * - `StreamOfAnotherTenant`: the stream belongs to another tenant (a stream's tenant is
 *   fixed by its first append; a stream never holds two tenants' events). The other
 *   tenant is not named.
 * - `OutsideScope`: the append names a tenant other than its store's tenant scope
 *   (`EventStore.forTenant`).
 *
 * @since 0.1.0
 * @category errors
 */
export class TenantMismatchError extends Schema.TaggedError<TenantMismatchError>()("TenantMismatchError", {
  aggregateId: Schema.String,
  aggregateType: Schema.String,
  /** The tenant the append is for (null: no tenant). */
  tenantId: Schema.NullOr(Schema.String),
  reason: Schema.Literal("StreamOfAnotherTenant", "OutsideScope")
}) {
  override get message(): string {
    const tenant = this.tenantId === null ? "no tenant" : `tenant ${this.tenantId}`
    return this.reason === "StreamOfAnotherTenant"
      ? `${this.aggregateType} ${this.aggregateId} belongs to another tenant than ${tenant}`
      : `an append for ${tenant} to ${this.aggregateType} ${this.aggregateId} is outside its store's tenant scope`
  }
}

/**
 * A stored or appended `event_type` has no schema in the registry.
 *
 * @since 0.1.0
 * @category errors
 */
export class UnknownEventTypeError extends Schema.TaggedError<UnknownEventTypeError>()("UnknownEventTypeError", {
  eventType: Schema.String,
  eventId: Schema.optional(Schema.String),
  globalPosition: Schema.optional(Schema.BigIntFromSelf)
}) {
  override get message(): string {
    return this.eventId === undefined
      ? `unknown event type "${this.eventType}": register it in the EventRegistry`
      : `event ${this.eventId} at position ${this.globalPosition} has unknown type "${this.eventType}"`
  }
}

/**
 * A stored payload does not decode with its event type's schema.
 *
 * @since 0.1.0
 * @category errors
 */
export class EventDecodeError extends Schema.TaggedError<EventDecodeError>()("EventDecodeError", {
  eventId: Schema.String,
  eventType: Schema.String,
  globalPosition: Schema.BigIntFromSelf,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * The input of an append is not valid: an empty batch, a malformed id, an event
 * that does not match its schema. Nothing was written.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidEventError extends Schema.TaggedError<InvalidEventError>()("InvalidEventError", {
  reason: Schema.String,
  eventType: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect)
}) {
  override get message(): string {
    return this.reason
  }
}

/**
 * The store itself failed (connection lost, SQL error). The cause is kept.
 *
 * @since 0.1.0
 * @category errors
 */
export class EventStoreError extends Schema.TaggedError<EventStoreError>()("EventStoreError", {
  method: Schema.String,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * A stream that must exist has no events.
 *
 * @since 0.1.0
 * @category errors
 */
export class StreamNotFoundError extends Schema.TaggedError<StreamNotFoundError>()("StreamNotFoundError", {
  aggregateId: Schema.String,
  aggregateType: Schema.String
}) {
  override get message(): string {
    return `${this.aggregateType} ${this.aggregateId} has no events`
  }
}

/**
 * Everything an append can fail with.
 *
 * @since 0.1.0
 * @category errors
 */
export type AppendError =
  | ConcurrencyError
  | DuplicateEventError
  | TenantMismatchError
  | UnknownEventTypeError
  | InvalidEventError
  | EventStoreError

/**
 * Everything a read can fail with.
 *
 * @since 0.1.0
 * @category errors
 */
export type ReadError = UnknownEventTypeError | EventDecodeError | InvalidEventError | EventStoreError

/**
 * The messages along a cause chain, each once, joined with ": " ("Failed to execute
 * statement: Connection terminated unexpectedly"): the one way Eventfold words a
 * failure whose reason sits in its causes.
 *
 * @since 0.1.0
 * @category utils
 */
export const describeCause = (cause: unknown): string => {
  const messages: Array<string> = []
  let current: unknown = cause
  for (let depth = 0; depth < 4 && current !== undefined && current !== null; depth++) {
    const message = messageOf(current)
    if (message !== "" && !messages.includes(message)) messages.push(message)
    current = typeof current === "object" && "cause" in current ? current.cause : undefined
  }
  return messages.length === 0 ? String(cause) : messages.join(": ")
}

/**
 * A failure's own message. Reading it may throw: Schema's ParseError formats the value
 * that failed, and one nested thousands deep overflows the stack.
 */
const messageOf = (failure: unknown): string => {
  try {
    if (typeof failure !== "object" || failure === null) return String(failure)
    return "message" in failure && typeof failure.message === "string" ? failure.message : ""
  } catch (error) {
    return `(its message cannot be formatted: ${error instanceof Error ? error.message : "unknown reason"})`
  }
}

/**
 * The transactional outbox: with the outbox enabled on the event store, every
 * appended event also gets an outbox entry, written in the append's transaction.
 * `Outbox` is the storage side the {@link OutboxRelay} works on: it hands out
 * entries under a lease, records what became of them, and answers the operator's
 * questions. One contract, a memory layer here, a PostgreSQL layer in
 * `@eventfold/pg` (`PgOutbox`); the conformance suite holds both to it.
 *
 * **Order.** An entry is claimable only at the head of its aggregate: every earlier
 * entry of the same aggregate that is not published must be claimed by the same
 * claim. So entries that are failed, leased to a relay, or waiting for their
 * retry hold back the later entries of their aggregate, and two relays never hold
 * entries of one aggregate at the same time (until a lease expires). A claim
 * contains, per aggregate, a run of consecutive entries in version order.
 *
 * **Failed entries hold their aggregate.** An entry that spent its retry budget
 * is `failed`, and the later entries of its aggregate stay `pending` but are not
 * handed out (counted in `Stats.held`) until the failed entry is retried with
 * `retryFailed`: publishing them would deliver version n+1 without version n.
 * Other aggregates are not affected.
 *
 * **Parking is the way past a poison entry.** An operator who decides that a failed
 * entry will never be published parks it (`park`, with who and why, which are kept):
 * it is set aside as `parked`, and the later entries of its aggregate flow on, so
 * consumers see version n+1 without version n. Per-aggregate order is the default;
 * giving it up for one entry is this explicit, recorded decision. A parked entry can
 * still be published later by naming it to `retryFailed`.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import type * as Stream from "effect/Stream"
import type { EventRegistry } from "./EventRegistry.js"
import * as EventStore from "./EventStore.js"
import * as MemoryOutbox from "./internal/memoryOutbox.js"
import * as Validate from "./internal/validate.js"
import type { Message } from "./Publisher.js"

/**
 * The spec's status values, and `parked`: a failed entry an operator set aside (see the
 * module docs).
 *
 * @since 0.1.0
 * @category models
 */
export type Status = "pending" | "published" | "failed" | "parked"

/**
 * An entry handed to a relay by {@link Service.claim}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Entry {
  /** The outbox row's id. */
  readonly id: string
  /** Failed attempts so far. */
  readonly retryCount: number
  readonly message: Message
}

/**
 * An entry as stored, for inspection.
 *
 * @since 0.1.0
 * @category models
 */
export interface Row extends Entry {
  readonly status: Status
  readonly lastError: string | null
  readonly createdAt: Date
  readonly publishedAt: Date | null
  /** The relay holding the entry, while its lease runs. */
  readonly claimedBy: string | null
  readonly leaseUntil: Date | null
  /** Not handed out before this time (a retry's backoff). */
  readonly nextAttemptAt: Date | null
  /** Who parked the entry, when, and why; null unless parked. */
  readonly parked: { readonly at: Date; readonly by: string; readonly reason: string } | null
}

/**
 * @since 0.1.0
 * @category models
 */
export interface ParkOptions {
  /** The failed entries to set aside, by event id. */
  readonly eventIds: ReadonlyArray<string>
  /** Who decides (an operator, a tool): kept with the entry. */
  readonly by: string
  /** Why: kept with the entry. */
  readonly reason: string
}

/**
 * @since 0.1.0
 * @category models
 */
export interface ClaimOptions {
  /** Who claims: the relay's unique id. */
  readonly owner: string
  /** At most this many entries. */
  readonly limit: number
  /** How long the entries are reserved for the owner. Another relay may take them after. */
  readonly lease: Duration.Duration
}

/**
 * What became of claimed entries. Only the owner's entries are changed, except
 * `published`: an acknowledged message is published whoever holds its entry now.
 *
 * @since 0.1.0
 * @category models
 */
export interface Settlement {
  readonly owner: string
  /** Acknowledged by the broker: marked `published`, with `published_at`. */
  readonly published: ReadonlyArray<string>
  /**
   * Attempts that failed: `retry_count` + 1 and `last_error`; the entry is tried
   * again after `retryAfter`, or is marked `failed` when `retryAfter` is null
   * (its budget is spent).
   */
  readonly failed: ReadonlyArray<{
    readonly id: string
    readonly error: string
    readonly retryAfter: Duration.Duration | null
  }>
  /** Handed back without spending an attempt (not tried, or the broker was unreachable); `error` is noted. */
  readonly released: ReadonlyArray<{ readonly id: string; readonly error?: string }>
}

/**
 * The outbox's figures at one moment.
 *
 * @since 0.1.0
 * @category models
 */
export interface Stats {
  readonly pending: number
  readonly published: number
  readonly failed: number
  /** Pending entries held back behind a failed entry of their aggregate (see the module docs). */
  readonly held: number
  /** Entries an operator set aside (see the module docs). */
  readonly parked: number
  /** Pending entries leased to a relay right now. */
  readonly inFlight: number
  /** Creation time of the oldest pending entry. */
  readonly oldestPendingAt: Option.Option<Date>
  /** Age of the oldest pending entry: how far publishing lags behind. */
  readonly oldestPendingAge: Option.Option<Duration.Duration>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface ListOptions {
  readonly status?: Status
  readonly aggregateId?: string
  /** Default 1,000. */
  readonly limit?: number
}

/**
 * The outbox storage failed (connection lost, SQL error). The cause is kept.
 *
 * @since 0.1.0
 * @category errors
 */
export class OutboxError extends Schema.TaggedError<OutboxError>()("OutboxError", {
  method: Schema.String,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * Wraps an infrastructure failure of `method`, keeping its cause.
 *
 * @since 0.1.0
 * @category errors
 */
export const outboxError =
  (method: string) =>
  (cause: unknown): OutboxError =>
    new OutboxError({
      method,
      message: `Outbox.${method} failed: ${cause instanceof Error ? cause.message : String(cause)}`,
      cause
    })

/**
 * Why the input of an operator's call cannot be taken (event ids that are not UUIDs,
 * a `by` or `reason` the columns could not store), or undefined: every backend checks
 * it first, so that memory and PostgreSQL refuse the same calls alike.
 *
 * @since 0.1.0
 * @category utils
 */
export const inputError = (
  method: string,
  input: { readonly eventIds?: ReadonlyArray<string> | undefined; readonly by?: string; readonly reason?: string }
): OutboxError | undefined => {
  const invalid =
    input.eventIds?.map((id) => Validate.uuidError("eventIds", id)).find((e) => e !== undefined) ??
    (input.by === undefined ? undefined : Validate.textError("by", input.by)) ??
    (input.reason === undefined || input.reason === ""
      ? undefined
      : Validate.textError("reason", input.reason.slice(0, 255)))
  return invalid === undefined ? undefined : new OutboxError({ method, message: `Outbox.${method}: ${invalid.reason}` })
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Leases up to `limit` entries at the head of their aggregates, in global order. */
  readonly claim: (options: ClaimOptions) => Effect.Effect<ReadonlyArray<Entry>, OutboxError>
  /** Records the outcome of a claim, in one step, and ends its leases. */
  readonly settle: (settlement: Settlement) => Effect.Effect<void, OutboxError>
  /** Hands back the owner's leased entries (all, or those given) at once, e.g. when a relay stops. */
  readonly release: (owner: string, ids?: ReadonlyArray<string>) => Effect.Effect<number, OutboxError>
  readonly stats: Effect.Effect<Stats, OutboxError>
  /**
   * Puts failed entries (all, or those of the given event ids, parked ones included when
   * named) back to pending with a fresh budget. Returns how many.
   */
  readonly retryFailed: (options?: { readonly eventIds?: ReadonlyArray<string> }) => Effect.Effect<number, OutboxError>
  /**
   * Sets failed entries aside for good, recording who and why, so that the later
   * entries of their aggregates are published (see the module docs). Entries that are
   * not failed are left as they are. Returns how many were parked.
   */
  readonly park: (options: ParkOptions) => Effect.Effect<number, OutboxError>
  /** Deletes published entries published longer ago than `olderThan` (e.g. "7 days"). Returns how many. */
  readonly deletePublished: (olderThan: Duration.DurationInput) => Effect.Effect<number, OutboxError>
  /** Entries in global order, for inspection. */
  readonly list: (options?: ListOptions) => Effect.Effect<ReadonlyArray<Row>, OutboxError>
  /**
   * Signals that entries may have become claimable (an append committed, failed
   * entries were retried). A hint: relays also poll.
   */
  readonly wakeups: Stream.Stream<void, OutboxError>
}

/**
 * @since 0.1.0
 * @category models
 */
export class Outbox extends Context.Tag("@eventfold/core/Outbox")<Outbox, Service>() {}

/**
 * An outbox in memory, and a wrapper that makes a memory event-store backend
 * write to it: events appended through the wrapped backend get an entry each
 * (an idempotent replay adds none). Appends through the wrapper are serialized,
 * so that entries are recorded in append order.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<{
  readonly outbox: Service
  readonly withOutbox: (backend: EventStore.Backend) => EventStore.Backend
}> = MemoryOutbox.make

/**
 * A memory event store with the outbox enabled, and its `Outbox`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory = (options: {
  readonly registry: EventRegistry
}): Layer.Layer<EventStore.EventStore | Outbox> =>
  Layer.effectContext(
    Effect.map(
      makeMemory,
      ({ outbox, withOutbox }): Context.Context<EventStore.EventStore | Outbox> =>
        Context.make(Outbox, outbox).pipe(
          Context.add(
            EventStore.EventStore,
            EventStore.make(withOutbox(EventStore.makeMemoryBackend()), options.registry)
          )
        )
    )
  )

/**
 * The broker side of the outbox: a `Publisher` hands outbox messages to a message
 * broker and says, per message, whether the broker took it. One Layer per broker
 * (`@eventfold/nats` for NATS JetStream); a memory Layer here for tests.
 *
 * The contract every implementation keeps (the relay's ordering rests on it):
 * - messages of one aggregate are published in the order given, each one only after
 *   the broker acknowledged the one before;
 * - after a message of an aggregate fails, the later messages of that aggregate in
 *   the same batch are not published (`Skipped`);
 * - every message carries its event id, so that brokers and consumers drop duplicates.
 *
 * {@link make} implements the first two once, over a function that publishes one
 * message: aggregates are published concurrently (pipelined), each in order.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import * as EventMetadata from "./EventMetadata.js"
import { Attributes, Spans } from "./Telemetry.js"

/**
 * One event to publish: the stored payload, verbatim, and its envelope.
 *
 * @since 0.1.0
 * @category models
 */
export interface Message {
  readonly eventId: string
  readonly eventType: string
  readonly aggregateId: string
  readonly aggregateType: string
  /** The event's version in its aggregate's stream. */
  readonly version: number
  /** The event's position in the global log. */
  readonly globalPosition: bigint
  readonly tenantId: string | null
  readonly actorId: string | null
  /** When the event occurred in the domain. */
  readonly timestamp: Date
  /** The trace context, correlation and causation of the append (sent as headers: `traceparent`, ...). */
  readonly metadata: EventMetadata.EventMetadata
  /** The event's payload as stored, as JSON text. */
  readonly payloadJson: string
}

/**
 * Why a publish failed, which decides what the relay does next:
 * - `Unavailable`: the broker could not be reached or did not answer in time. Says
 *   nothing about the message: the relay hands the message back without spending its
 *   retry budget and backs off.
 * - `Rejected`: the broker answered and refused this message (too large, not
 *   accepted by the stream...). Spends one attempt of the message's retry budget.
 *
 * @since 0.1.0
 * @category errors
 */
export class PublishError extends Schema.TaggedError<PublishError>()("PublishError", {
  reason: Schema.Literal("Unavailable", "Rejected"),
  message: Schema.String,
  eventId: Schema.optional(Schema.String),
  /** Where the message was going (a subject, a topic). */
  destination: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * What became of one message of a batch.
 *
 * @since 0.1.0
 * @category models
 */
export type Outcome = Data.TaggedEnum<{
  /** The broker acknowledged the message; `duplicate` when it had it already (same event id). */
  Published: { readonly duplicate: boolean }
  Failed: { readonly error: PublishError }
  /** Not attempted, because an earlier message of its aggregate in the batch failed. */
  Skipped: {}
}>

/**
 * @since 0.1.0
 * @category constructors
 */
export const Outcome = Data.taggedEnum<Outcome>()

/**
 * The publisher's link to its broker. A broker that is down is a state, not a failure
 * of the application: the publisher keeps trying, and publishes fail as `Unavailable`
 * meanwhile.
 *
 * @since 0.1.0
 * @category models
 */
export type Status = Data.TaggedEnum<{
  /** Not connected yet: the first connection (or the broker's setup) is being tried, `attempts` times so far. */
  Connecting: { readonly since: Date; readonly attempts: number; readonly lastError: string | null }
  /** Connected and set up. `maxPayload`: the largest message the broker takes, in bytes, when it says. */
  Ready: { readonly since: Date; readonly maxPayload: number | null }
  /** Was ready, lost the connection, and is reconnecting. */
  Reconnecting: { readonly since: Date; readonly lastError: string | null }
}>

/**
 * @since 0.1.0
 * @category constructors
 */
export const Status = Data.taggedEnum<Status>()

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** The broker's name, as OpenTelemetry's `messaging.system` ("nats", ...). */
  readonly system: string
  /** Where the messages go, as OpenTelemetry's `messaging.destination.name`, when all go to one place. */
  readonly destination?: string | undefined
  /** The link to the broker now. */
  readonly status: Effect.Effect<Status>
  /** The link's states, the current one first, then each change. */
  readonly statusChanges: Stream.Stream<Status>
  /**
   * Publishes a batch and reports one outcome per message, in the batch's order.
   * Fails only when nothing of the batch could be attempted.
   */
  readonly publish: (messages: ReadonlyArray<Message>) => Effect.Effect<ReadonlyArray<Outcome>, PublishError>
}

/**
 * @since 0.1.0
 * @category models
 */
export class Publisher extends Context.Tag("@eventfold/core/Publisher")<Publisher, Service>() {}

/**
 * @since 0.1.0
 * @category models
 */
export interface MakeOptions {
  /** As OpenTelemetry's `messaging.system`. */
  readonly system: string
  /** Where the messages go, as OpenTelemetry's `messaging.destination.name` (a stream, a topic). */
  readonly destination?: string
  /** Publishes one message and waits for the broker's acknowledgement. */
  readonly publishOne: (message: Message) => Effect.Effect<{ readonly duplicate: boolean }, PublishError>
  /** How many aggregates are published at once (messages awaiting their acks). Default 128. */
  readonly concurrency?: number
  /** The link to the broker, for brokers that connect apart from publishing. Default: always ready. */
  readonly status?: SubscriptionRef.SubscriptionRef<Status>
}

/**
 * Waits until the publisher is ready (connected and set up).
 *
 * @since 0.1.0
 * @category combinators
 */
export const awaitReady = (publisher: Service): Effect.Effect<void> =>
  publisher.statusChanges.pipe(
    Stream.filter((status) => status._tag === "Ready"),
    Stream.runHead,
    Effect.asVoid
  )

const alwaysReady: { readonly status: Effect.Effect<Status>; readonly statusChanges: Stream.Stream<Status> } = (() => {
  const ready = Status.Ready({ since: new Date(0), maxPayload: null })
  return { status: Effect.succeed(ready), statusChanges: Stream.succeed(ready) }
})()

/**
 * A publisher over a one-message publish: the batch is split by aggregate; the
 * aggregates are published concurrently, each one's messages in order, one at a
 * time, stopping at its first failure.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: MakeOptions): Service => {
  const concurrency = options.concurrency ?? 128
  const publish = (messages: ReadonlyArray<Message>) =>
    Effect.gen(function* () {
      const outcomes: Array<Outcome> = messages.map(() => Outcome.Skipped())
      const groups = new Map<string, Array<number>>()
      messages.forEach((message, i) => {
        const key = `${message.aggregateType}\u0000${message.aggregateId}`
        const group = groups.get(key)
        if (group === undefined) groups.set(key, [i])
        else group.push(i)
      })
      yield* Effect.forEach(
        groups.values(),
        (indexes) =>
          Effect.gen(function* () {
            for (const i of indexes) {
              const outcome = yield* options.publishOne(messages[i]!).pipe(
                Effect.match({
                  onSuccess: ({ duplicate }) => Outcome.Published({ duplicate }),
                  onFailure: (error) => Outcome.Failed({ error })
                })
              )
              outcomes[i] = outcome
              if (outcome._tag === "Failed") return
            }
          }),
        { concurrency, discard: true }
      )
      return outcomes as ReadonlyArray<Outcome>
    }).pipe(
      Effect.withSpan(Spans.publish, {
        kind: "producer",
        // The publish carries on the traces of the appends that stored its messages.
        links: EventMetadata.spanLinks(messages),
        attributes: {
          [Attributes.messagingSystem]: options.system,
          [Attributes.messagingOperationName]: "publish",
          [Attributes.messagingOperationType]: "send",
          [Attributes.messageCount]: messages.length,
          ...(options.destination === undefined ? {} : { [Attributes.messagingDestination]: options.destination })
        }
      })
    )
  const link =
    options.status === undefined
      ? alwaysReady
      : { status: SubscriptionRef.get(options.status), statusChanges: options.status.changes }
  return { system: options.system, destination: options.destination, publish, ...link }
}

/**
 * Inspection of the memory publisher.
 *
 * @since 0.1.0
 * @category models
 */
export class Memory extends Context.Tag("@eventfold/core/Publisher/Memory")<
  Memory,
  {
    /** What the "broker" holds, in the order it took it, each event id once. */
    readonly messages: Effect.Effect<ReadonlyArray<Message>>
    /** Every publish attempt, duplicates and failures included. */
    readonly attempts: Effect.Effect<number>
  }
>() {}

/**
 * @since 0.1.0
 * @category models
 */
export interface MemoryOptions {
  /** Decides, at each attempt, whether the broker fails this message (to simulate outages and rejections). */
  readonly fail?: (message: Message) => PublishError | undefined
  /** Passed to {@link make}. */
  readonly concurrency?: number
}

/**
 * A broker in memory that, like JetStream, drops a message whose event id it holds
 * already.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory = (
  options: MemoryOptions = {}
): Effect.Effect<{ readonly publisher: Service; readonly memory: Context.Tag.Service<Memory> }> =>
  Effect.sync(() => {
    const stored: Array<Message> = []
    const seen = new Set<string>()
    let attempts = 0
    const publisher = make({
      system: "memory",
      ...(options.concurrency === undefined ? {} : { concurrency: options.concurrency }),
      publishOne: (message) =>
        Effect.suspend((): Effect.Effect<{ readonly duplicate: boolean }, PublishError> => {
          attempts++
          const error = options.fail?.(message)
          if (error !== undefined) return Effect.fail(error)
          if (seen.has(message.eventId)) return Effect.succeed({ duplicate: true })
          seen.add(message.eventId)
          stored.push(message)
          return Effect.succeed({ duplicate: false })
        })
    })
    return {
      publisher,
      memory: {
        messages: Effect.sync(() => stored.slice()),
        attempts: Effect.sync(() => attempts)
      }
    }
  })

/**
 * The memory publisher and its inspection.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory = (options: MemoryOptions = {}): Layer.Layer<Publisher | Memory> =>
  Layer.effectContext(
    Effect.map(makeMemory(options), ({ memory, publisher }) =>
      Context.make(Publisher, publisher).pipe(Context.add(Memory, memory))
    )
  )

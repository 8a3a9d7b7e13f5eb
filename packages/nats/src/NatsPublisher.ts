/**
 * The outbox `Publisher` for NATS JetStream.
 *
 * - Subject: `<subjectPrefix>.<aggregate type>.<event type>`, each name made a valid
 *   subject token (see {@link token}), e.g. `eventfold.Order.OrderPlaced`.
 * - Body: the event's payload as stored (JSON); the envelope travels in headers
 *   ({@link Headers}), and `Nats-Msg-Id` is the event id, so JetStream drops a
 *   message it already holds (within the stream's duplicate window).
 * - Every publish waits for the stream's acknowledgement. Messages of different
 *   aggregates are in flight together (up to `maxInFlight`); those of one aggregate
 *   go one after the other, so they are stored in version order.
 * - The stream is created at start when missing (subjects `<subjectPrefix>.>`), or
 *   checked to capture those subjects when it exists.
 * - The connection reconnects for as long as the layer lives; while it is down,
 *   publishes fail as `Unavailable` and the relay keeps the entries pending.
 *
 * @since 0.1.0
 */

import * as Publisher from "@eventfold/core/Publisher"
import * as Settings from "@eventfold/core/Settings"
import * as Jet from "@nats-io/jetstream"
import * as Nats from "@nats-io/transport-node"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Server URLs, e.g. "nats://127.0.0.1:4222". Default that one. */
  readonly servers?: string | ReadonlyArray<string>
  readonly token?: Redacted.Redacted<string>
  readonly user?: string
  readonly password?: Redacted.Redacted<string>
  /** First tokens of every subject. Default "eventfold". */
  readonly subjectPrefix?: string
  /** The JetStream stream the messages must land in. Default "EVENTFOLD". */
  readonly stream?: string
  /** Create the stream when it does not exist. Default true; with false a missing stream fails the layer. */
  readonly createStream?: boolean
  /** Duplicate window of a stream created here: how long JetStream remembers message ids. Default 2 minutes. */
  readonly duplicateWindow?: Duration.DurationInput
  /** How long a publish waits for the stream's acknowledgement. Default 5 seconds. */
  readonly ackTimeout?: Duration.DurationInput
  /** Aggregates published at once within a batch (messages awaiting their acks). Default 256. */
  readonly maxInFlight?: number
  /** Connection name shown by the server. Default "eventfold-outbox". */
  readonly name?: string
}

/**
 * Header names of the envelope. `Nats-Msg-Id` (JetStream's dedupe key) is the event id too.
 *
 * @since 0.1.0
 * @category models
 */
export const Headers = {
  eventId: "Eventfold-Event-Id",
  eventType: "Eventfold-Event-Type",
  aggregateId: "Eventfold-Aggregate-Id",
  aggregateType: "Eventfold-Aggregate-Type",
  version: "Eventfold-Version",
  globalPosition: "Eventfold-Global-Position",
  tenantId: "Eventfold-Tenant-Id",
  actorId: "Eventfold-Actor-Id",
  timestamp: "Eventfold-Timestamp",
  contentType: "Content-Type"
} as const

/**
 * The publisher could not be set up: the server is unreachable, the stream is
 * missing or does not capture the subjects, the options are invalid.
 *
 * @since 0.1.0
 * @category errors
 */
export class JetStreamSetupError extends Schema.TaggedError<JetStreamSetupError>()("JetStreamSetupError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * A name as one subject token: characters other than letters, digits, `_` and `-`
 * (dots, wildcards, whitespace...) become `_`; an empty name becomes `_`.
 *
 * @since 0.1.0
 * @category utils
 */
export const token = (name: string): string => (name === "" ? "_" : name.replace(/[^A-Za-z0-9_-]/g, "_"))

/**
 * The subject of a message: `<prefix>.<aggregate type>.<event type>`.
 *
 * @since 0.1.0
 * @category utils
 */
export const subject = (prefix: string, message: Pick<Publisher.Message, "aggregateType" | "eventType">): string =>
  `${prefix}.${token(message.aggregateType)}.${token(message.eventType)}`

const validPrefix = (prefix: string) => prefix.split(".").every((t) => t !== "" && /^[^\s*>]+$/.test(t))

/** Whether a stream subject (possibly with wildcards) captures every subject under `prefix.`. */
const captures = (pattern: string, prefix: string): boolean => {
  const want = [...prefix.split("."), ">"]
  const have = pattern.split(".")
  for (let i = 0; i < have.length; i++) {
    const h = have[i]!
    if (h === ">") return true
    if (i >= want.length - 1) return false
    if (h !== "*" && h !== want[i]) return false
  }
  return false
}

const encoder = new TextEncoder()

/** A failed publish: broker refusals are `Rejected`; anything about reaching it is `Unavailable`. */
const publishError = (cause: unknown, message: Publisher.Message, destination: string): Publisher.PublishError => {
  const text = cause instanceof Error ? cause.message : String(cause)
  const rejected =
    (cause instanceof Jet.JetStreamApiError && cause.status !== 503) ||
    cause instanceof Nats.InvalidSubjectError ||
    (cause instanceof Jet.JetStreamError && !(cause instanceof Jet.JetStreamApiError))
  return new Publisher.PublishError({
    reason: rejected ? "Rejected" : "Unavailable",
    message: `JetStream: ${text}`,
    eventId: message.eventId,
    destination,
    cause
  })
}

/**
 * The servers as a message may name them: host and port only, never a user or a
 * password that a URL carries (`nats://user:secret@host:4222`).
 */
const describeServers = (servers: ReadonlyArray<string>): string =>
  servers
    .map((server) => {
      try {
        const url = new URL(server.includes("://") ? server : `nats://${server}`)
        return url.host === "" ? "a server whose URL has no host" : url.host
      } catch {
        return "a server whose URL does not parse"
      }
    })
    .join(", ")

const setupError = (message: string) => (cause: unknown) =>
  new JetStreamSetupError({
    message: `${message}: ${cause instanceof Error ? cause.message : String(cause)}`,
    cause
  })

/**
 * Connects, checks or creates the stream, and returns the publisher. The
 * connection is closed when the scope closes.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Publisher.Service, JetStreamSetupError, Scope.Scope> =>
  Effect.gen(function* () {
    const prefix = options.subjectPrefix ?? "eventfold"
    const streamName = options.stream ?? "EVENTFOLD"
    const servers = options.servers ?? "nats://127.0.0.1:4222"
    const ackTimeout = Duration.toMillis(Duration.decode(options.ackTimeout ?? Duration.seconds(5)))
    if (!validPrefix(prefix)) {
      return yield* new JetStreamSetupError({ message: `invalid subject prefix "${prefix}"` })
    }

    const serverList = typeof servers === "string" ? servers.split(",").map((s) => s.trim()) : [...servers]
    const nc = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () =>
          Nats.connect({
            servers: serverList,
            name: options.name ?? "eventfold-outbox",
            // The relay outlives broker outages: never give up reconnecting.
            maxReconnectAttempts: -1,
            ...(options.token === undefined ? {} : { token: Redacted.value(options.token) }),
            ...(options.user === undefined ? {} : { user: options.user }),
            ...(options.password === undefined ? {} : { pass: Redacted.value(options.password) })
          }),
        catch: setupError(`cannot connect to NATS at ${describeServers(serverList)}`)
      }),
      (nc) =>
        Effect.tryPromise(() => nc.close()).pipe(
          Effect.timeout("5 seconds"),
          Effect.catchAll((error) => Effect.logWarning("NatsPublisher: closing the connection failed", error))
        )
    )
    // Connection changes are worth a line in the log; they are not errors of any publish. The
    // iterator ends when the connection closes (an Effect stream over it could not be interrupted
    // before that, and would keep the scope from closing).
    const runtime = yield* Effect.runtime<never>()
    const log = (effect: Effect.Effect<void>) => Runtime.runFork(runtime)(effect)
    void (async () => {
      for await (const status of nc.status()) {
        const data = "data" in status ? status.data : ""
        if (status.type === "disconnect" || status.type === "error" || status.type === "staleConnection") {
          log(Effect.logWarning(`NatsPublisher: connection ${status.type}`, data))
        } else if (status.type === "reconnect") {
          log(Effect.logInfo("NatsPublisher: reconnected", data))
        }
      }
    })().catch((error: unknown) => log(Effect.logWarning("NatsPublisher: connection status unavailable", error)))

    const jsm = yield* Effect.tryPromise({
      try: () => Jet.jetstreamManager(nc),
      catch: setupError("JetStream is not available on this server")
    })
    const info = yield* Effect.tryPromise({
      try: () =>
        jsm.streams.info(streamName).then(Option.some, (error: unknown) => {
          if (error instanceof Jet.JetStreamApiError && error.code === Jet.JetStreamApiCodes.StreamNotFound) {
            return Option.none()
          }
          throw error
        }),
      catch: setupError(`cannot read stream ${streamName}`)
    })
    const check = (existing: Jet.StreamInfo) => {
      const subjects = existing.config.subjects ?? []
      return subjects.some((pattern) => captures(pattern, prefix))
        ? Effect.void
        : new JetStreamSetupError({
            message: `stream ${streamName} exists but does not capture ${prefix}.> (its subjects: ${subjects.join(", ") || "none"})`
          })
    }
    if (Option.isSome(info)) {
      yield* check(info.value)
    } else if (options.createStream === false) {
      return yield* new JetStreamSetupError({ message: `stream ${streamName} does not exist` })
    } else {
      yield* Effect.tryPromise({
        try: () =>
          jsm.streams.add({
            name: streamName,
            subjects: [`${prefix}.>`],
            duplicate_window: Nats.nanos(Duration.toMillis(Duration.decode(options.duplicateWindow ?? "2 minutes")))
          }),
        catch: setupError(`cannot create stream ${streamName}`)
      }).pipe(
        // Another process may have created it meanwhile: then it must capture our subjects.
        Effect.catchAll((error) =>
          Effect.tryPromise({ try: () => jsm.streams.info(streamName), catch: () => error }).pipe(Effect.flatMap(check))
        )
      )
    }

    const js = Jet.jetstream(nc)
    return Publisher.make({
      system: "nats",
      destination: streamName,
      concurrency: options.maxInFlight ?? 256,
      publishOne: (message) => {
        const destination = subject(prefix, message)
        return Effect.tryPromise({
          try: () => {
            const h = Nats.headers()
            h.set(Headers.eventId, message.eventId)
            h.set(Headers.eventType, message.eventType)
            h.set(Headers.aggregateId, message.aggregateId)
            h.set(Headers.aggregateType, message.aggregateType)
            h.set(Headers.version, String(message.version))
            h.set(Headers.globalPosition, String(message.globalPosition))
            h.set(Headers.timestamp, message.timestamp.toISOString())
            if (message.tenantId !== null) h.set(Headers.tenantId, message.tenantId)
            if (message.actorId !== null) h.set(Headers.actorId, message.actorId)
            h.set(Headers.contentType, "application/json")
            return js.publish(destination, encoder.encode(message.payloadJson), {
              msgID: message.eventId,
              headers: h,
              timeout: ackTimeout,
              expect: { streamName }
            })
          },
          catch: (cause) => publishError(cause, message, destination)
        }).pipe(Effect.map((ack) => ({ duplicate: ack.duplicate })))
      }
    })
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<Publisher.Publisher, JetStreamSetupError> =>
  Layer.scoped(Publisher.Publisher, make(options))

/**
 * Settings from the environment: `NATS_URL` (comma-separated for several servers),
 * `NATS_SUBJECT_PREFIX`, `NATS_STREAM`, `NATS_TOKEN`, `NATS_USER`, `NATS_PASSWORD`.
 * Values in `defaults` apply where the environment says nothing.
 *
 * @since 0.1.0
 * @category constructors
 */
export const config = (defaults: Options = {}): Config.Config<Options> =>
  Settings.overDefaults(
    {
      servers: Config.string("NATS_URL"),
      subjectPrefix: Config.string("NATS_SUBJECT_PREFIX"),
      stream: Config.string("NATS_STREAM"),
      token: Config.redacted("NATS_TOKEN"),
      user: Config.string("NATS_USER"),
      password: Config.redacted("NATS_PASSWORD")
    },
    defaults
  )

/**
 * The publisher with settings from {@link config}.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  defaults: Options = {}
): Layer.Layer<Publisher.Publisher, JetStreamSetupError | ConfigError.ConfigError> =>
  Layer.unwrapEffect(Effect.map(config(defaults), layer))

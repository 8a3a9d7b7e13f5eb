/**
 * The outbox `Publisher` for NATS JetStream.
 *
 * - Subject: `<subjectPrefix>.<aggregate type>.<event type>`, each name made one subject
 *   token by percent-encoding (see {@link token}): `eventfold.Order.OrderPlaced`, and
 *   two names never share a subject (`Order.Created` is `Order%2ECreated`).
 * - Body: the event's payload as stored (JSON); the envelope travels in headers
 *   ({@link Headers}; names and the actor id percent-encoded, see {@link headerText}),
 *   and `Nats-Msg-Id` is the event id, so JetStream drops a message it already holds
 *   (within the stream's duplicate window).
 * - Every publish waits for the stream's acknowledgement. Messages of different
 *   aggregates are in flight together (up to `maxInFlight`); those of one aggregate
 *   go one after the other, so they are stored in version order.
 * - What the broker can never take (over the server's `max_payload`, a subject too
 *   long for its protocol line, a refusal by the stream or by permissions) fails as
 *   `Rejected`: the relay spends the entry's retry budget and marks it `failed`, and
 *   other aggregates go on. Everything about reaching the broker is `Unavailable`.
 * - The stream is created when missing (subjects `<subjectPrefix>.>`), or checked to
 *   capture those subjects when it exists.
 * - A broker that is down is a state, not a failure: the layer is built at once, the
 *   connection and the stream's setup are tried in the background by the `reconnect`
 *   schedule, `status` says where it stands, and publishes fail as `Unavailable` until
 *   it is ready. Once connected, it reconnects for as long as the layer lives.
 * - Credentials come from `user`/`password`/`token`, or from the server URLs
 *   (`nats://user:password@host`, `nats://token@host`); no message or log line
 *   shows them: servers are named by host and port.
 *
 * @since 0.1.0
 */

import * as Publisher from "@eventfold/core/Publisher"
import * as Settings from "@eventfold/core/Settings"
import * as Jet from "@nats-io/jetstream"
import * as Nats from "@nats-io/transport-node"
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Runtime from "effect/Runtime"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as SubscriptionRef from "effect/SubscriptionRef"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Server URLs, e.g. "nats://127.0.0.1:4222". Default that one. */
  readonly servers?: string | ReadonlyArray<string> | Redacted.Redacted<string>
  readonly token?: Redacted.Redacted<string>
  readonly user?: string
  readonly password?: Redacted.Redacted<string>
  /** First tokens of every subject. Default "eventfold". */
  readonly subjectPrefix?: string
  /** The JetStream stream the messages must land in. Default "EVENTFOLD". */
  readonly stream?: string
  /**
   * Create the stream when it does not exist. Default true; with false a missing stream
   * is a setup failure, retried by `reconnect` and shown in `status` until it exists.
   */
  readonly createStream?: boolean
  /** Duplicate window of a stream created here: how long JetStream remembers message ids. Default 2 minutes. */
  readonly duplicateWindow?: Duration.DurationInput
  /** How long a publish waits for the stream's acknowledgement. Default 5 seconds. */
  readonly ackTimeout?: Duration.DurationInput
  /** Aggregates published at once within a batch (messages awaiting their acks). Default 256. */
  readonly maxInFlight?: number
  /** Connection name shown by the server. Default "eventfold-outbox". */
  readonly name?: string
  /**
   * How the first connection and the stream's setup are tried again while the server is
   * down or refuses (after that, nats.js reconnects on its own, for as long as the layer
   * lives). Default: exponential from 200 ms, at most 10 seconds apart, jittered, forever.
   */
  readonly reconnect?: Schedule.Schedule<unknown, unknown>
  /** How long one connection attempt may take. Default 5 seconds. */
  readonly connectTimeout?: Duration.DurationInput
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
  /** The W3C trace context of the append that stored the event. */
  traceparent: "traceparent",
  correlationId: "Eventfold-Correlation-Id",
  causationId: "Eventfold-Causation-Id",
  contentType: "Content-Type"
} as const

/**
 * The publisher could not be set up. The layer fails with it only for options no
 * server could make right (a subject prefix that is not one, credentials that
 * disagree); a server that cannot be reached, or a stream that is missing or does not
 * capture the subjects, is retried in the background, and its message is the
 * `lastError` that `status` shows.
 *
 * @since 0.1.0
 * @category errors
 */
export class JetStreamSetupError extends Schema.TaggedError<JetStreamSetupError>()("JetStreamSetupError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * A name as one subject token, by percent-encoding (as `encodeURIComponent`, and
 * `.`, `!`, `~`, `*`, `'`, `(`, `)` too): letters, digits, `_` and `-` stay as they are,
 * every other character becomes `%XX` per UTF-8 byte. Two names never share a token
 * (`Order.Created` is `Order%2ECreated`, `Order_Created` stays), and
 * `decodeURIComponent` gives the name back.
 *
 * @since 0.1.0
 * @category utils
 */
export const token = (name: string): string =>
  PLAIN_TOKEN.test(name)
    ? name
    : name === ""
      ? "%00"
      : encodeURIComponent(name).replace(/[.!~*'()]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)

const PLAIN_TOKEN = /^[A-Za-z0-9_-]+$/

/**
 * The subject of a message: `<prefix>.<aggregate type>.<event type>`.
 *
 * @since 0.1.0
 * @category utils
 */
export const subject = (prefix: string, message: Pick<Publisher.Message, "aggregateType" | "eventType">): string =>
  `${prefix}.${token(message.aggregateType)}.${token(message.eventType)}`

/**
 * A text header value as sent: percent-encoded (`encodeURIComponent`) so that any
 * name or actor id the store accepts is a valid header value (NATS refuses CR and
 * LF); plain ASCII names are unchanged. Consumers decode with `decodeURIComponent`.
 *
 * @since 0.1.0
 * @category utils
 */
export const headerText = (value: string): string => (PLAIN_HEADER.test(value) ? value : encodeURIComponent(value))

const PLAIN_HEADER = /^[A-Za-z0-9_.!~*'()-]*$/

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

/**
 * The server closes a connection whose protocol line (`HPUB <subject> <reply> <sizes>`)
 * is longer than its `max_control_line` (4 KiB by default), which would fail every
 * message in flight: a longer subject is refused before it is sent.
 */
const MAX_SUBJECT_BYTES = 3_500

/**
 * A failed publish. What the broker can never take is `Rejected`: a refusal by the
 * stream, an invalid subject or header, a message over `max_payload`, a publish the
 * server's permissions forbid. Anything about reaching the broker is `Unavailable`.
 */
const publishError = (cause: unknown, message: Publisher.Message, destination: string): Publisher.PublishError => {
  const text = cause instanceof Error ? cause.message : String(cause)
  const rejected =
    (cause instanceof Jet.JetStreamApiError && cause.status !== 503) ||
    cause instanceof Nats.InvalidSubjectError ||
    cause instanceof Nats.InvalidArgumentError ||
    cause instanceof Nats.PermissionViolationError ||
    (cause instanceof Jet.JetStreamError && !(cause instanceof Jet.JetStreamApiError))
  return new Publisher.PublishError({
    reason: rejected ? "Rejected" : "Unavailable",
    message: `JetStream: ${text}`,
    eventId: message.eventId,
    destination,
    cause
  })
}

/** A message that cannot be sent as it is, found before the broker sees it. */
const refused = (reason: string, message: Publisher.Message, destination: string) =>
  new Publisher.PublishError({
    reason: "Rejected",
    message: `JetStream: ${reason}`,
    eventId: message.eventId,
    destination
  })

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

/** What nats.js is given: servers without credentials, and the credentials apart. */
interface Connection {
  readonly servers: ReadonlyArray<string>
  readonly user?: string
  readonly pass?: string
  readonly token?: string
}

/**
 * Credentials in the server URLs (`nats://user:password@host`, `nats://token@host`),
 * which nats.js would ignore, are taken out and used; they must agree with each other
 * and with the `user`, `password` and `token` options.
 */
const connection = (serverList: ReadonlyArray<string>, options: Options): Either.Either<Connection, string> => {
  const servers: Array<string> = []
  let fromUrl: { user?: string; pass?: string; token?: string } | undefined
  for (const server of serverList) {
    let url: URL
    try {
      url = new URL(server.includes("://") ? server : `nats://${server}`)
    } catch {
      return Either.left("a server URL does not parse")
    }
    if (url.host === "") return Either.left("a server URL has no host")
    servers.push(`${url.protocol}//${url.host}`)
    if (url.username === "" && url.password === "") continue
    let decoded: { user?: string; pass?: string; token?: string }
    try {
      decoded =
        url.password === ""
          ? { token: decodeURIComponent(url.username) }
          : { user: decodeURIComponent(url.username), pass: decodeURIComponent(url.password) }
    } catch {
      return Either.left(`the credentials in the URL of ${url.host} are not valid percent-encoding`)
    }
    if (
      fromUrl !== undefined &&
      (fromUrl.user !== decoded.user || fromUrl.pass !== decoded.pass || fromUrl.token !== decoded.token)
    ) {
      return Either.left("the server URLs carry different credentials; NATS takes one set per connection")
    }
    fromUrl = decoded
  }
  const given = {
    ...(options.user === undefined ? {} : { user: options.user }),
    ...(options.password === undefined ? {} : { pass: Redacted.value(options.password) }),
    ...(options.token === undefined ? {} : { token: Redacted.value(options.token) })
  }
  if (fromUrl === undefined) return Either.right({ servers, ...given })
  const conflict =
    (given.user !== undefined && given.user !== fromUrl.user) ||
    (given.pass !== undefined && given.pass !== fromUrl.pass) ||
    (given.token !== undefined && given.token !== fromUrl.token)
  return conflict
    ? Either.left("the server URL's credentials differ from the user, password or token given apart")
    : Either.right({ servers, ...fromUrl })
}

const setupError = (message: string) => (cause: unknown) =>
  new JetStreamSetupError({
    message: `${message}: ${cause instanceof Error ? cause.message : String(cause)}`,
    cause
  })

/** What publishing needs once the broker is reached and set up. */
interface Link {
  readonly js: Jet.JetStreamClient
  readonly maxPayload: number | null
}

/**
 * The defaults of {@link Options}.
 *
 * @since 0.1.0
 * @category models
 */
export const defaults = {
  reconnect: Schedule.exponential("200 millis", 2).pipe(
    Schedule.union(Schedule.spaced("10 seconds")),
    Schedule.jittered
  ) as Schedule.Schedule<unknown, unknown>,
  connectTimeout: Duration.seconds(5)
} as const

/**
 * Returns the publisher at once; connects, and checks or creates the stream, in the
 * background, again and again by the `reconnect` schedule while the server is down or
 * the stream's setup fails (each failure is logged and shown by `status`). Meanwhile
 * publishes fail as `Unavailable`, so a relay keeps its entries pending. Fails only
 * for options that no server could make right. The connection is closed when the
 * scope closes.
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
    const connectTimeout = Duration.toMillis(Duration.decode(options.connectTimeout ?? defaults.connectTimeout))
    if (!validPrefix(prefix)) {
      return yield* new JetStreamSetupError({ message: `invalid subject prefix "${prefix}"` })
    }
    // A URL may carry credentials: from the environment it comes Redacted, and is read here only.
    const serverList = Redacted.isRedacted(servers)
      ? Redacted.value(servers)
          .split(",")
          .map((s) => s.trim())
      : typeof servers === "string"
        ? servers.split(",").map((s) => s.trim())
        : [...servers]
    const where = describeServers(serverList)
    const target = connection(serverList, options)
    if (Either.isLeft(target)) {
      return yield* new JetStreamSetupError({ message: `NATS servers ${where}: ${target.left}` })
    }
    const { servers: plainServers, ...credentials } = target.right

    const scope = yield* Effect.scope
    const now = Effect.map(Clock.currentTimeMillis, (ms) => new Date(ms))
    const status = yield* SubscriptionRef.make<Publisher.Status>(
      Publisher.Status.Connecting({ since: yield* now, attempts: 0, lastError: null })
    )
    const link = yield* Ref.make(Option.none<Link>())

    /** Connects and sets the stream up, in a scope of its own that a failure closes. */
    const connectOnce = Effect.gen(function* () {
      const nc = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: () =>
            Nats.connect({
              servers: [...plainServers],
              name: options.name ?? "eventfold-outbox",
              timeout: connectTimeout,
              // Once connected, the relay outlives broker outages: never give up reconnecting.
              maxReconnectAttempts: -1,
              ...credentials
            }),
          catch: setupError(`cannot connect to NATS at ${where}`)
        }),
        (nc) =>
          Effect.tryPromise(() => nc.close()).pipe(
            Effect.timeout("5 seconds"),
            Effect.catchAll((error) => Effect.logWarning("NatsPublisher: closing the connection failed", error))
          )
      )
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
            Effect.tryPromise({ try: () => jsm.streams.info(streamName), catch: () => error }).pipe(
              Effect.flatMap(check)
            )
          )
        )
      }
      // Connection changes are worth a line in the log and show in `status`; they are not
      // errors of any publish. They are applied one at a time, in order. The loop ends when
      // the connection closes: an Effect stream over the iterator would call its return()
      // when interrupted, which waits for that close, and would keep the scope from closing.
      // An "error" (a permission refused, say) leaves the connection up: it is logged, and
      // the state stays as it is.
      const onChange = (change: Nats.Status): Effect.Effect<void> => {
        const data = "data" in change ? String(change.data) : ""
        switch (change.type) {
          case "disconnect":
          case "staleConnection":
            return Effect.zipRight(
              Effect.logWarning(`NatsPublisher: connection ${change.type}`, data),
              Effect.flatMap(now, (since) =>
                SubscriptionRef.update(status, (current) =>
                  current._tag === "Connecting"
                    ? current
                    : Publisher.Status.Reconnecting({ since, lastError: `${change.type} ${data}`.trim() })
                )
              )
            )
          case "reconnect":
            return Effect.zipRight(
              Effect.logInfo("NatsPublisher: reconnected", data),
              Effect.flatMap(now, (since) =>
                SubscriptionRef.set(status, Publisher.Status.Ready({ since, maxPayload: nc.info?.max_payload ?? null }))
              )
            )
          case "error":
            return Effect.logWarning("NatsPublisher: the server reported an error", data)
          default:
            return Effect.void
        }
      }
      const apply = Runtime.runPromise(yield* Effect.runtime<never>())
      void (async () => {
        for await (const change of nc.status()) await apply(onChange(change))
      })().catch((error: unknown) => apply(Effect.logWarning("NatsPublisher: connection status unavailable", error)))
      return { js: Jet.jetstream(nc), maxPayload: nc.info?.max_payload ?? null } satisfies Link
    })

    const attempt = Effect.gen(function* () {
      const own = yield* Scope.fork(scope, ExecutionStrategy.sequential)
      return yield* connectOnce.pipe(
        Scope.extend(own),
        Effect.onError((cause) => Scope.close(own, Exit.failCause(cause)))
      )
    })
    const connectLoop = attempt.pipe(
      Effect.tapError((error) =>
        Effect.zipRight(
          Effect.logWarning(`NatsPublisher: ${error.message}; trying again`),
          SubscriptionRef.update(status, (current) =>
            current._tag === "Connecting"
              ? Publisher.Status.Connecting({
                  since: current.since,
                  attempts: current.attempts + 1,
                  lastError: error.message
                })
              : current
          )
        )
      ),
      Effect.retry(options.reconnect ?? defaults.reconnect),
      Effect.flatMap((ready) =>
        Effect.all([
          Ref.set(link, Option.some(ready)),
          Effect.flatMap(now, (since) =>
            SubscriptionRef.set(status, Publisher.Status.Ready({ since, maxPayload: ready.maxPayload }))
          ),
          Effect.logInfo(`NatsPublisher: connected to ${where}, stream ${streamName} ready`)
        ])
      ),
      Effect.catchAll((error) =>
        Effect.logError(`NatsPublisher: gave up connecting (the reconnect schedule ended): ${error.message}`)
      )
    )
    yield* Effect.forkIn(connectLoop, scope)

    const notReady = (message: Publisher.Message, destination: string) =>
      Effect.flatMap(SubscriptionRef.get(status), (current) =>
        Effect.fail(
          new Publisher.PublishError({
            reason: "Unavailable",
            message: `JetStream: not connected to ${where}${"lastError" in current && current.lastError !== null ? ` (${current.lastError})` : ""}`,
            eventId: message.eventId,
            destination
          })
        )
      )

    return Publisher.make({
      system: "nats",
      destination: streamName,
      concurrency: options.maxInFlight ?? 256,
      status,
      publishOne: (message) => {
        let destination: string
        try {
          destination = subject(prefix, message)
        } catch (cause) {
          return Effect.fail(refused(`the subject cannot be encoded (${String(cause)})`, message, prefix))
        }
        return Effect.flatMap(Ref.get(link), (ready) => {
          if (Option.isNone(ready)) return notReady(message, destination)
          if (encoder.encode(destination).length > MAX_SUBJECT_BYTES) {
            return Effect.fail(refused(`subject longer than ${MAX_SUBJECT_BYTES} bytes`, message, destination))
          }
          return Effect.tryPromise({
            try: () => {
              const h = Nats.headers()
              h.set(Headers.eventId, message.eventId)
              h.set(Headers.eventType, headerText(message.eventType))
              h.set(Headers.aggregateId, message.aggregateId)
              h.set(Headers.aggregateType, headerText(message.aggregateType))
              h.set(Headers.version, String(message.version))
              h.set(Headers.globalPosition, String(message.globalPosition))
              h.set(Headers.timestamp, message.timestamp.toISOString())
              if (message.tenantId !== null) h.set(Headers.tenantId, message.tenantId)
              if (message.actorId !== null) h.set(Headers.actorId, headerText(message.actorId))
              const metadata = message.metadata
              if (metadata.traceparent !== null) h.set(Headers.traceparent, metadata.traceparent)
              if (metadata.correlationId !== null) h.set(Headers.correlationId, headerText(metadata.correlationId))
              if (metadata.causationId !== null) h.set(Headers.causationId, headerText(metadata.causationId))
              h.set(Headers.contentType, "application/json")
              return ready.value.js.publish(destination, encoder.encode(message.payloadJson), {
                msgID: message.eventId,
                headers: h,
                timeout: ackTimeout,
                expect: { streamName }
              })
            },
            catch: (cause) => publishError(cause, message, destination)
          }).pipe(Effect.map((ack) => ({ duplicate: ack.duplicate })))
        })
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
      servers: Config.redacted("NATS_URL"),
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

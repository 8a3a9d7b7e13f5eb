/**
 * Span names and attribute keys, in one place. Attribute keys follow OpenTelemetry
 * conventions where one exists; Eventfold's own live under `eventfold.`. Event
 * payloads never go into attributes.
 *
 * @since 0.1.0
 */
import type * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as Stream from "effect/Stream"
import * as Tracer from "effect/Tracer"

/**
 * @since 0.1.0
 * @category models
 */
export const Attributes = {
  dbSystem: "db.system.name",
  dbOperation: "db.operation.name",
  dbCollection: "db.collection.name",
  dbQuerySummary: "db.query.summary",
  dbQueryText: "db.query.text",
  /** The name of a prepared statement (PostgreSQL's). */
  dbStatementName: "eventfold.db.statement_name",
  aggregateId: "eventfold.aggregate.id",
  aggregateType: "eventfold.aggregate.type",
  expectedVersion: "eventfold.expected_version",
  eventCount: "eventfold.event.count",
  eventTypes: "eventfold.event.types",
  tenantId: "eventfold.tenant.id",
  direction: "eventfold.read.direction",
  fromVersion: "eventfold.read.from_version",
  fromPosition: "eventfold.read.after_position",
  streamVersion: "eventfold.stream.version",
  backend: "eventfold.backend",
  subscription: "eventfold.subscription.name",
  projection: "eventfold.projection.name",
  position: "eventfold.position",
  /** Where a checkpoint was when it was last read (`CheckpointStore.awaitPosition`). */
  checkpointPosition: "eventfold.checkpoint.position",
  deadLetterId: "eventfold.dead_letter.id",
  messagingSystem: "messaging.system",
  messagingDestination: "messaging.destination.name",
  messageCount: "messaging.batch.message_count",
  messagingOperationName: "messaging.operation.name",
  messagingOperationType: "messaging.operation.type",
  errorType: "error.type",
  /** The read method that read events (`readStream`, `readAll`, `subscribe`...). */
  readOperation: "eventfold.read.operation",
  outboxOwner: "eventfold.outbox.owner",
  outboxClaimed: "eventfold.outbox.claimed",
  outboxPublished: "eventfold.outbox.published",
  outboxFailed: "eventfold.outbox.failed",
  outboxReleased: "eventfold.outbox.released",
  /** Which pool a pool metric is about: its `applicationName` (OpenTelemetry's database client conventions). */
  poolName: "db.client.connection.pool.name",
  /** The state a pool's connection count is for: `idle`, `used`, or `waiting` (callers waiting for one). */
  poolState: "db.client.connection.state"
} as const

/**
 * Span names: `Service.method`.
 *
 * @since 0.1.0
 * @category models
 */
export const Spans = {
  append: "EventStore.append",
  readStream: "EventStore.readStream",
  readAll: "EventStore.readAll",
  /** A page a subscription reads, catching up or live: a root span linked to its events' appends. */
  subscribe: "EventStore.subscribe",
  repositoryLoad: "AggregateRepository.load",
  repositorySave: "AggregateRepository.save",
  migrate: "PgMigrations.run",
  checkpointSave: "CheckpointStore.save",
  checkpointGet: "CheckpointStore.get",
  checkpointLag: "CheckpointStore.lag",
  checkpointReset: "CheckpointStore.reset",
  checkpointList: "CheckpointStore.list",
  checkpointAwait: "CheckpointStore.awaitPosition",
  deadLetterAdd: "DeadLetterQueue.add",
  deadLetterList: "DeadLetterQueue.list",
  deadLetterGet: "DeadLetterQueue.get",
  deadLetterResolve: "DeadLetterQueue.resolve",
  deadLetterRetry: "DeadLetterQueue.retry",
  projectionBatch: "Projection.handleBatch",
  projectionRebuild: "Projection.rebuild",
  projectionReset: "Projection.reset",
  publish: "Publisher.publish",
  outboxClaim: "Outbox.claim",
  outboxSettle: "Outbox.settle",
  relayBatch: "OutboxRelay.runOnce"
} as const

/**
 * Span names made of a prefix and the method: `PgMonitor.overview`, `PgMonitor.horizon`,
 * ... (one span per query of the monitor).
 *
 * @since 0.1.0
 * @category models
 */
export const spanOf = {
  monitor: (method: string): string => `PgMonitor.${method}`
} as const

/**
 * Metric names. Appends (recorded while {@link metricsEnabled} is on): `appendEvents`
 * the events appended, `appendDuration` each append's time in milliseconds (a
 * histogram), `appendConflicts` the appends refused with a `ConcurrencyError`; each
 * tagged with the backend. Projections (likewise): `projectionEvents` handled and
 * `deadLetters`, tagged with the projection's name. Subscriptions (PostgreSQL): `horizonChecks` and
 * `horizonCheckDuration` are what the no-skip guarantee costs, `heldBack` how long
 * positions have been waiting for open transactions (milliseconds), `notifications`
 * the NOTIFY wake-ups received. Pools made by `PgPool` (likewise, when metrics are on where
 * the pool is made): `poolConnections` the connections by state (a gauge, sampled every
 * second), `poolAcquireDuration` the time to check a connection out in milliseconds (a
 * histogram); both tagged with the pool's name.
 *
 * Also recorded only while {@link metricsEnabled} is on (see {@link readMetrics},
 * {@link subscriptionMetrics}, {@link outboxMetrics}): `readEvents` the events read,
 * by backend and read method; `subscriptionLag` how many positions a named subscription
 * has delivered short of the log's head, `subscriptionLagTime` the age in seconds of
 * the event it delivered last (0 once caught up); the outbox relay's
 * `outboxPending` and `outboxOldestPendingAge` (seconds), sampled from `Outbox.stats`
 * at most once per poll interval, `messagesSent` (OpenTelemetry's count of messages
 * handed to the broker, with `error.type` when refused), `outboxFailed` the entries
 * that spent their retry budget, `publishDuration` (OpenTelemetry's, in seconds); and
 * `projectionLag`, the events a projection's checkpoint is behind.
 *
 * @since 0.1.0
 * @category models
 */
export const Metrics = {
  appendEvents: "eventfold.append.events",
  appendDuration: "eventfold.append.duration",
  appendConflicts: "eventfold.append.conflicts",
  horizonChecks: "eventfold.subscription.horizon_checks",
  horizonCheckDuration: "eventfold.subscription.horizon_check_duration",
  heldBack: "eventfold.subscription.held_back",
  notifications: "eventfold.subscription.notifications",
  projectionEvents: "eventfold.projection.events_handled",
  deadLetters: "eventfold.projection.dead_letters",
  readEvents: "eventfold.read.events",
  subscriptionLag: "eventfold.subscription.lag",
  subscriptionLagTime: "eventfold.subscription.lag_time",
  outboxPending: "eventfold.outbox.pending",
  outboxOldestPendingAge: "eventfold.outbox.oldest_pending_age",
  outboxFailed: "eventfold.outbox.failed",
  messagesSent: "messaging.client.sent.messages",
  publishDuration: "messaging.client.operation.duration",
  projectionLag: "eventfold.projection.lag",
  poolConnections: "eventfold.pool.connections",
  poolAcquireDuration: "eventfold.pool.acquire.duration"
} as const

/**
 * The Telemetry service: what exports the program's spans, metrics and log, and a way
 * to send what is buffered now. Its layers are the exporting ones
 * (`@eventfold/opentelemetry`) and {@link layerNone}; the span names, attribute keys and
 * metrics above are the contract every layer exports.
 *
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Where the telemetry goes: `none` when nothing exports it. */
  readonly exporter: "none" | "otlp" | "console"
  /**
   * Exports what is buffered now (spans, metrics as they are, log records), waiting at
   * most the layer's timeout; a collector that does not take it is a warning in the log,
   * never a failure. Closing the layer does the same.
   */
  readonly flush: Effect.Effect<void>
}

/**
 * @since 0.1.0
 * @category models
 */
export class Telemetry extends Context.Tag("@eventfold/core/Telemetry")<Telemetry, Service>() {}

/**
 * Telemetry that goes nowhere: no tracer installed, metrics off, nothing to flush.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerNone: Layer.Layer<Telemetry> = Layer.succeed(
  Telemetry,
  Telemetry.of({ exporter: "none", flush: Effect.void })
)

/**
 * Flushes the `Telemetry` in context, if any (before a short-lived program or a
 * serverless handler returns, say); nothing without one.
 *
 * @since 0.1.0
 * @category telemetry
 */
export const flush: Effect.Effect<void> = Effect.flatMap(Effect.serviceOption(Telemetry), (service) =>
  service._tag === "Some" ? service.value.flush : Effect.void
)

/** The tracer of a runtime nobody gave one: the spans it makes are collected by nobody. */
const defaultTracer = Effect.runSync(Effect.tracer)

/**
 * `Effect.withSpan` for the hottest calls (an append): the same span under any
 * tracer an application installs (OpenTelemetry, a test's), and none under the
 * default tracer, whose spans no one exports or reads. `self` also learns whether
 * metrics are on ({@link metricsEnabled}) and the span of the call: its own when it
 * is traced, else a span an upstream service propagated (an `ExternalSpan` parent),
 * or undefined; and its fiber, to read what else of the fiber's context it needs.
 * Measured on an append: the span cost about a third of its client CPU.
 * `options` is built only when traced.
 *
 * @since 0.1.0
 * @category tracing
 */
export const withHotSpan = <A, E, R>(
  self: (
    now: number,
    measured: boolean,
    span: Tracer.AnySpan | undefined,
    fiber: Fiber.RuntimeFiber<unknown, unknown>
  ) => Effect.Effect<A, E, R>,
  name: string,
  options: () => Tracer.SpanOptions
): Effect.Effect<A, E, R> =>
  // One step through the runtime for the tracer, the clock (the fiber's own, a TestClock
  // in tests) and whether metrics are on: reading them one by one took four.
  Effect.withFiberRuntime((fiber) => {
    const services = fiber.getFiberRef(DefaultServices.currentServices)
    const clock = Context.get(services, Clock.Clock)
    const measured = fiber.getFiberRef(metricsEnabled)
    if (Context.get(services, Tracer.Tracer) === defaultTracer) {
      const parent = Context.getOption(fiber.getFiberRef(FiberRef.currentContext), Tracer.ParentSpan)
      const external = parent._tag === "Some" && parent.value._tag === "ExternalSpan" ? parent.value : undefined
      return self(clock.unsafeCurrentTimeMillis(), measured, external, fiber)
    }
    return Effect.useSpan(name, options(), (span) =>
      Effect.withParentSpan(
        Effect.suspend(() => self(clock.unsafeCurrentTimeMillis(), measured, span, fiber)),
        span
      )
    )
  })

/**
 * Whether Eventfold records its metrics. Off unless a layer turns it on
 * ({@link layerMetrics}, or an exporting layer), so that a program nobody measures
 * pays nothing for them on its hottest calls.
 *
 * @since 0.1.0
 * @category metrics
 */
export const metricsEnabled: FiberRef.FiberRef<boolean> = globalValue("@eventfold/core/Telemetry/metricsEnabled", () =>
  FiberRef.unsafeMake(false)
)

/**
 * Turns Eventfold's metrics on for the program it is provided to.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMetrics: Layer.Layer<never> = Layer.locallyScoped(metricsEnabled, true)

/**
 * The append metrics, for reading them in tests and dashboards (`Metric.value`).
 *
 * @since 0.1.0
 * @category metrics
 */
export const appendMetrics = {
  events: Metric.counter(Metrics.appendEvents, { description: "Events appended", incremental: true }),
  conflicts: Metric.counter(Metrics.appendConflicts, {
    description: "Appends refused because the stream was not at the expected version",
    incremental: true
  }),
  duration: Metric.histogram(
    Metrics.appendDuration,
    MetricBoundaries.fromIterable([0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000]),
    "Time of an append, in milliseconds"
  )
}

/**
 * The projection metrics, for reading them (`Metric.value`), tagged with the projection's name.
 *
 * @since 0.1.0
 * @category metrics
 */
export const projectionMetrics = {
  events: Metric.counter(Metrics.projectionEvents, { description: "Events a projection handled", incremental: true }),
  deadLetters: Metric.counter(Metrics.deadLetters, {
    description: "Events a projection dead-lettered",
    incremental: true
  }),
  lag: Metric.gauge(Metrics.projectionLag, {
    description: "Events of a projection's types after its checkpoint"
  })
}

/**
 * The read metric, for reading it (`Metric.value`), tagged with the backend and the read
 * method ({@link Attributes.readOperation}).
 *
 * @since 0.1.0
 * @category metrics
 */
export const readMetrics = {
  events: Metric.counter(Metrics.readEvents, { description: "Events read from the store", incremental: true })
}

/**
 * The lag of subscriptions that have a name, tagged with it ({@link Attributes.subscription}).
 *
 * @since 0.1.0
 * @category metrics
 */
export const subscriptionMetrics = {
  lag: Metric.gauge(Metrics.subscriptionLag, {
    description: "Positions between the log's head and the last one a subscription delivered"
  }),
  lagTime: Metric.gauge(Metrics.subscriptionLagTime, {
    description: "Age of the event a subscription delivered last, in seconds; 0 once caught up"
  })
}

/**
 * The outbox relay's metrics. `sent`, `duration` and `failed` are tagged with
 * `messaging.system`, `messaging.operation.name` ("publish"), `messaging.operation.type`
 * ("send") and, when the publisher names one, `messaging.destination.name`. `sent`
 * counts the messages the broker was asked to take: without `error.type` those it
 * acknowledged (published), with it (the `PublishError` reason) those it refused or did
 * not answer.
 *
 * @since 0.1.0
 * @category metrics
 */
export const outboxMetrics = {
  pending: Metric.gauge(Metrics.outboxPending, { description: "Outbox entries waiting to be published" }),
  oldestPendingAge: Metric.gauge(Metrics.outboxOldestPendingAge, {
    description: "Age of the oldest pending outbox entry, in seconds; 0 when none"
  }),
  sent: Metric.counter(Metrics.messagesSent, {
    description: "Messages the relay sent to the broker",
    incremental: true
  }),
  failed: Metric.counter(Metrics.outboxFailed, {
    description: "Outbox entries marked failed: their retry budget is spent",
    incremental: true
  }),
  duration: Metric.histogram(
    Metrics.publishDuration,
    // OpenTelemetry's advice for this metric.
    MetricBoundaries.fromIterable([0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]),
    "Time of a publish to the broker, in seconds"
  )
}

/**
 * Counts the events `self` reads ({@link readMetrics}) as `operation` of `backend`, a
 * page at a time, when `measured` (whether {@link metricsEnabled} is on, read once by the
 * caller when the read starts); `self` untouched otherwise. `count` says how many events a
 * page holds (default: its size).
 *
 * @since 0.1.0
 * @category metrics
 */
export const countReads = <A, E, R>(
  self: Stream.Stream<A, E, R>,
  measured: boolean,
  backend: string,
  operation: string,
  count: (chunk: Chunk.Chunk<A>) => number = (chunk) => chunk.length
): Stream.Stream<A, E, R> => {
  if (!measured) return self
  const counter = readMetrics.events.pipe(
    Metric.tagged(Attributes.backend, backend),
    Metric.tagged(Attributes.readOperation, operation)
  )
  return Stream.mapChunksEffect(self, (chunk) => Effect.as(Metric.update(counter, count(chunk)), chunk))
}

/**
 * The pool metrics, for reading them (`Metric.value`): `connections` tagged with
 * {@link Attributes.poolName} then {@link Attributes.poolState}, `acquireDuration` with
 * the pool's name.
 *
 * @since 0.1.0
 * @category metrics
 */
export const poolMetrics = {
  connections: Metric.gauge(Metrics.poolConnections, {
    description: "Connections of the pool by state: idle, used, and waiting (callers waiting for one)"
  }),
  acquireDuration: Metric.histogram(
    Metrics.poolAcquireDuration,
    MetricBoundaries.fromIterable([
      0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000
    ]),
    "Time to check a connection out of the pool, in milliseconds"
  )
}

/**
 * Records what a projection's batch did, while {@link metricsEnabled} is on.
 *
 * @since 0.1.0
 * @category metrics
 */
export const measureProjectionBatch = (
  projection: string,
  handled: number,
  deadLettered: number
): Effect.Effect<void> =>
  Effect.flatMap(FiberRef.get(metricsEnabled), (enabled) =>
    enabled
      ? Effect.tagMetrics(
          Effect.zipRight(
            Metric.update(projectionMetrics.events, handled),
            Metric.update(projectionMetrics.deadLetters, deadLettered)
          ),
          Attributes.projection,
          projection
        )
      : Effect.void
  )

/**
 * Records an append's metrics ({@link Metrics}); called only while
 * {@link metricsEnabled} is on (see {@link withHotSpan}).
 *
 * @since 0.1.0
 * @category metrics
 */
export const measureAppend = <A, E extends { readonly _tag: string }, R>(
  self: Effect.Effect<A, E, R>,
  backend: string,
  eventCount: number
): Effect.Effect<A, E, R> =>
  Effect.withFiberRuntime((fiber) => {
    const clock = Context.get(fiber.getFiberRef(DefaultServices.currentServices), Clock.Clock)
    const start = clock.unsafeCurrentTimeNanos()
    const metrics = appendMetricsOf(backend)
    return Effect.onExit(self, (exit) => {
      const duration = Metric.update(metrics.duration, Number(clock.unsafeCurrentTimeNanos() - start) / 1e6)
      if (Exit.isSuccess(exit)) return Effect.zipRight(duration, Metric.update(metrics.events, eventCount))
      return exit.cause._tag === "Fail" && exit.cause.error._tag === "ConcurrencyError"
        ? Effect.zipRight(duration, Metric.update(metrics.conflicts, 1))
        : duration
    })
  })

/**
 * The append metrics tagged with a backend, made once per backend: tagging them at each
 * append (`Effect.tagMetrics`) cost about 10 µs per metric, measured.
 */
const appendMetricsOf = (() => {
  const tagged = new Map<string, typeof appendMetrics>()
  return (backend: string): typeof appendMetrics => {
    let metrics = tagged.get(backend)
    if (metrics === undefined) {
      metrics = {
        events: Metric.tagged(appendMetrics.events, Attributes.backend, backend),
        conflicts: Metric.tagged(appendMetrics.conflicts, Attributes.backend, backend),
        duration: Metric.tagged(appendMetrics.duration, Attributes.backend, backend)
      }
      tagged.set(backend, metrics)
    }
    return metrics
  }
})()

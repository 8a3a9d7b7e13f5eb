/**
 * Span names and attribute keys, in one place. Attribute keys follow OpenTelemetry
 * conventions where one exists; Eventfold's own live under `eventfold.`. Event
 * payloads never go into attributes.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Effect from "effect/Effect"
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
  deadLetterId: "eventfold.dead_letter.id",
  messagingSystem: "messaging.system",
  messagingDestination: "messaging.destination.name",
  messageCount: "messaging.batch.message_count",
  outboxOwner: "eventfold.outbox.owner",
  outboxClaimed: "eventfold.outbox.claimed",
  outboxPublished: "eventfold.outbox.published",
  outboxFailed: "eventfold.outbox.failed",
  outboxReleased: "eventfold.outbox.released"
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
  repositoryLoad: "AggregateRepository.load",
  repositorySave: "AggregateRepository.save",
  migrate: "PgMigrations.run",
  checkpointSave: "CheckpointStore.save",
  checkpointGet: "CheckpointStore.get",
  checkpointLag: "CheckpointStore.lag",
  checkpointReset: "CheckpointStore.reset",
  checkpointList: "CheckpointStore.list",
  deadLetterAdd: "DeadLetterQueue.add",
  deadLetterList: "DeadLetterQueue.list",
  deadLetterGet: "DeadLetterQueue.get",
  deadLetterResolve: "DeadLetterQueue.resolve",
  deadLetterRetry: "DeadLetterQueue.retry",
  projectionBatch: "Projection.handleBatch",
  projectionRebuild: "Projection.rebuild",
  publish: "Publisher.publish",
  outboxClaim: "Outbox.claim",
  outboxSettle: "Outbox.settle",
  relayBatch: "OutboxRelay.runOnce"
} as const

/**
 * Metric names. Subscriptions (PostgreSQL): `horizonChecks` and
 * `horizonCheckDuration` are what the no-skip guarantee costs, `heldBack` how long
 * positions have been waiting for open transactions (milliseconds), `notifications`
 * the NOTIFY wake-ups received.
 *
 * @since 0.1.0
 * @category models
 */
export const Metrics = {
  horizonChecks: "eventfold.subscription.horizon_checks",
  horizonCheckDuration: "eventfold.subscription.horizon_check_duration",
  heldBack: "eventfold.subscription.held_back",
  notifications: "eventfold.subscription.notifications",
  projectionEvents: "eventfold.projection.events_handled",
  deadLetters: "eventfold.projection.dead_letters"
} as const

/** The tracer of a runtime nobody gave one: the spans it makes are collected by nobody. */
const defaultTracer = Effect.runSync(Effect.tracer)

/**
 * `Effect.withSpan` for the hottest calls (an append): the same span under any
 * tracer an application installs (OpenTelemetry, a test's), and none under the
 * default tracer, whose spans no one exports or reads. Measured on an append: the
 * span cost about a third of its client CPU. `options` is built only when traced.
 *
 * @since 0.1.0
 * @category tracing
 */
export const withHotSpan = <A, E, R>(
  self: (now: number) => Effect.Effect<A, E, R>,
  name: string,
  options: () => Tracer.SpanOptions
): Effect.Effect<A, E, R> =>
  // One step through the runtime for the tracer and the clock (the fiber's own, a
  // TestClock in tests): reading them one by one took four.
  Effect.withFiberRuntime((fiber) => {
    const services = fiber.getFiberRef(DefaultServices.currentServices)
    const clock = Context.get(services, Clock.Clock)
    return Context.get(services, Tracer.Tracer) === defaultTracer
      ? self(clock.unsafeCurrentTimeMillis())
      : Effect.withSpan(
          Effect.suspend(() => self(clock.unsafeCurrentTimeMillis())),
          name,
          options()
        )
  })

/**
 * @since 0.1.0
 */
export * as Aggregate from "./Aggregate.js"
/**
 * @since 0.1.0
 */
export * as AggregateRepository from "./AggregateRepository.js"
/**
 * @since 0.1.0
 */
export * as CheckpointStore from "./CheckpointStore.js"
/**
 * @since 0.1.0
 */
export * as DeadLetterQueue from "./DeadLetterQueue.js"
/**
 * @since 0.1.0
 */
export * as Errors from "./Errors.js"
/**
 * @since 0.1.0
 */
export * as Event from "./Event.js"
/**
 * @since 0.1.0
 */
export * as EventMetadata from "./EventMetadata.js"
/**
 * @since 0.1.0
 */
export * as EventRegistry from "./EventRegistry.js"
/**
 * @since 0.1.0
 */
export * as EventStore from "./EventStore.js"
/**
 * @since 0.1.0
 */
export * as ExpectedVersion from "./ExpectedVersion.js"
/**
 * @since 0.1.0
 */
export * as Outbox from "./Outbox.js"
/**
 * @since 0.1.0
 */
export * as OutboxRelay from "./OutboxRelay.js"
/**
 * @since 0.1.0
 */
export * as Projection from "./Projection.js"
/**
 * @since 0.1.0
 */
export * as Publisher from "./Publisher.js"
/**
 * @since 0.1.0
 */
export * as Settings from "./Settings.js"
/**
 * @since 0.1.0
 */
export * as Subscription from "./Subscription.js"
/**
 * @since 0.1.0
 */
export * as Telemetry from "./Telemetry.js"

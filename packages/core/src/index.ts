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
export * as Errors from "./Errors.js"
/**
 * @since 0.1.0
 */
export * as Event from "./Event.js"
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
export * as Telemetry from "./Telemetry.js"

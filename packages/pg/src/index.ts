/**
 * @since 0.1.0
 */
export * as PgCheckpointStore from "./PgCheckpointStore.js"
/**
 * @since 0.1.0
 */
export * as PgDeadLetterQueue from "./PgDeadLetterQueue.js"
/**
 * @since 0.1.0
 */
export * as PgEventStore from "./PgEventStore.js"
/**
 * @since 0.1.0
 */
export * as PgMigrations from "./PgMigrations.js"
/**
 * @since 0.1.0
 */
export * as PgMonitor from "./PgMonitor.js"
/**
 * @since 0.1.0
 */
export * as PgOutbox from "./PgOutbox.js"
/**
 * @since 0.1.0
 */
export * as PgPool from "./PgPool.js"
/**
 * @since 0.1.0
 */
export * as PgProjection from "./PgProjection.js"
/**
 * @since 0.1.0
 */
export * as PgTransaction from "./PgTransaction.js"

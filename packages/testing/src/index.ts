/**
 * @since 0.1.0
 */
export * as AggregateSpecification from "./AggregateSpecification.js"
/**
 * @since 0.1.0
 */
export * as Testing from "./Testing.js"

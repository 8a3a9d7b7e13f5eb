/**
 * @since 0.1.0
 */
export * as NatsPublisher from "./NatsPublisher.js"

/**
 * @since 0.1.0
 */
export * as Testing from "./Testing.js"

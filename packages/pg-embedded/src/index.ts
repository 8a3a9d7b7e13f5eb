/**
 * @since 0.1.0
 */
export * as EmbeddedPostgres from "./EmbeddedPostgres.js"

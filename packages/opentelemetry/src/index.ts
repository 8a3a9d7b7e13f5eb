/**
 * @since 0.1.0
 */
export * as OtelTelemetry from "./OtelTelemetry.js"

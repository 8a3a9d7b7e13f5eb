/**
 * Span names and attribute keys, in one place. Attribute keys follow OpenTelemetry
 * conventions where one exists; Eventfold's own live under `eventfold.`. Event
 * payloads never go into attributes.
 *
 * @since 0.1.0
 */

/**
 * @since 0.1.0
 * @category models
 */
export const Attributes = {
  dbSystem: "db.system.name",
  dbOperation: "db.operation.name",
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
  backend: "eventfold.backend"
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
  migrate: "PgMigrations.run"
} as const

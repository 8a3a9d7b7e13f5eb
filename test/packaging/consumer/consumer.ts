// A TypeScript file of a project that installed the packed Eventfold packages: the
// packaging test (packInstall.test.ts) type-checks it there with moduleResolution
// node16, bundler and node10, without @types/pg, and with skipLibCheck (as Effect
// needs). Declarations that failed to resolve would become `any` silently under
// skipLibCheck: the `Equals` checks and the `@ts-expect-error` below fail then.
// `npm run check` also checks it in the monorepo, against the sources.
import { Event, EventRegistry, EventStore, ExpectedVersion } from "@eventfold/core"
import type * as EventStoreModule from "@eventfold/core/EventStore"
import type { NatsPublisher } from "@eventfold/nats"
import { OtelTelemetry } from "@eventfold/opentelemetry"
import { PgEventStore, PgMigrations, PgPool } from "@eventfold/pg"
// @ts-expect-error internal modules are not part of the public surface
import type * as Driver from "@eventfold/pg/internal/pgDriver"
import type { PoolStats } from "@eventfold/pg/PgPool"
import { EmbeddedPostgres } from "@eventfold/pg-embedded"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"

/** `true` when A and B are the same type (`any` is the same as no other type). */
type Equals<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false

const OrderPlaced = Event.make("OrderPlaced", { customer_id: Schema.String, total: Schema.Number })
const registry = EventRegistry.make(OrderPlaced)

const program = Effect.gen(function* () {
  const store = yield* EventStore.EventStore
  const stream: EventStoreModule.StreamId = {
    aggregateId: "0b5c0c8e-1f7e-4a3b-9a59-1c2f6f1a8d41",
    aggregateType: "Order"
  }
  const appended = yield* store.append(stream, [{ event: OrderPlaced.make({ customer_id: "c-1", total: 10 }) }], {
    expectedVersion: ExpectedVersion.noStream
  })
  const position: Equals<typeof appended.lastPosition, bigint> = true
  const events = yield* Stream.runCollect(store.readStream(stream))
  const stats = yield* Effect.flatMap(PgPool.PgPool, (pool) => pool.stats)
  return { position, events, stats }
})

const PoolLive = EmbeddedPostgres.layerPoolConfig({ dataDir: ".data/pg", persistent: true }, PgPool.config())
const AppLive = PgEventStore.layerPrepared({ registry }).pipe(Layer.provideMerge(PoolLive))
const main = Effect.zipRight(PgMigrations.run, program).pipe(
  Effect.provide(AppLive),
  Effect.provide(OtelTelemetry.layerConfig({ serviceName: "consumer" }))
)

/** Every requirement is met by the layers; the stats are numbers. */
export const checks: readonly [
  Equals<Effect.Effect.Context<typeof main>, never>,
  Equals<PoolStats["checkedOut"], number>,
  Equals<ReturnType<typeof NatsPublisher.subject>, string>
] = [true, true, true]

export type Unreachable = Driver.Connections
export { main }

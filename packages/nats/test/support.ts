/**
 * What the JetStream tests share: a probe for the NATS server, a TCP proxy to it
 * (the project's `TcpProxy`), a reader of a whole stream, and a fresh PostgreSQL
 * event store with the outbox enabled.
 */
import * as Net from "node:net"
import { Event, EventMetadata, EventRegistry, type EventStore, type Outbox, type Publisher } from "@eventfold/core"
import { NatsPublisher } from "@eventfold/nats"
import { PgEventStore, PgMigrations, PgOutbox, PgPool } from "@eventfold/pg"
import * as Jet from "@nats-io/jetstream"
import * as Nats from "@nats-io/transport-node"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as TcpProxy from "../../../test/support/TcpProxy.js"
import * as TestDatabase from "../../../test/support/TestDatabase.js"

export const natsUrl = process.env.NATS_URL ?? "nats://127.0.0.1:4222"

const hostPort = (url: string) => {
  const parsed = new URL(url)
  return { host: parsed.hostname, port: Number(parsed.port || 4222) }
}

/** Whether something accepts TCP connections at the NATS URL. */
export const probe = (url: string = natsUrl): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = Net.connect(hostPort(url))
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(1000, () => done(false))
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
  })

export const OrderPlaced = Event.make("OrderPlaced", { total: Schema.Number })
export const OrderNoted = Event.make("OrderNoted", { text: Schema.String })
export const registry = EventRegistry.make(OrderPlaced, OrderNoted)

/**
 * A TCP proxy to the NATS server (the project's one proxy, `test/support/TcpProxy.ts`), with
 * its URL: `pause` cuts and refuses connections until `resume`; `reset` and `stall` are there too.
 */
export interface Proxy extends TcpProxy.TcpProxy {
  readonly url: string
}

export const proxy: Effect.Effect<Proxy, never, Scope.Scope> = TcpProxy.make(hostPort(natsUrl)).pipe(
  Effect.map((tcp): Proxy => ({ ...tcp, url: `nats://${tcp.host}:${tcp.port}` })),
  Effect.orDie
)

/** A message as stored in the stream. */
export interface Stored {
  readonly seq: number
  readonly subject: string
  readonly msgId: string
  readonly eventId: string
  readonly aggregateId: string
  readonly version: number
  readonly headers: Record<string, string>
  readonly payload: unknown
}

/** A direct connection to the server, for the test's own look at the streams. */
export class Broker extends Context.Tag("test/nats/Broker")<
  Broker,
  {
    readonly jsm: Jet.JetStreamManager
    /** Every message of the stream, in stream order. */
    readonly read: (stream: string) => Effect.Effect<ReadonlyArray<Stored>>
    readonly count: (stream: string) => Effect.Effect<number>
  }
>() {}

export const BrokerLive = Layer.scoped(
  Broker,
  Effect.gen(function* () {
    const nc = yield* Effect.acquireRelease(
      Effect.promise(() => Nats.connect({ servers: natsUrl, name: "eventfold-test-reader" })),
      (nc) => Effect.promise(() => nc.close())
    )
    const jsm = yield* Effect.promise(() => Jet.jetstreamManager(nc))
    const decoder = new TextDecoder()
    const count = (stream: string) => Effect.promise(() => jsm.streams.info(stream).then((i) => i.state.messages))
    const read = (stream: string) =>
      Effect.promise(async () => {
        const info = await jsm.streams.info(stream)
        const messages: Array<Stored> = []
        for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
          const m = await jsm.streams.getMessage(stream, { seq })
          if (m === null) continue
          const headers: Record<string, string> = {}
          for (const [key] of m.header) headers[key] = m.header.get(key)
          messages.push({
            seq: m.seq,
            subject: m.subject,
            msgId: m.header.get("Nats-Msg-Id"),
            eventId: m.header.get(NatsPublisher.Headers.eventId),
            aggregateId: m.header.get(NatsPublisher.Headers.aggregateId),
            version: Number(m.header.get(NatsPublisher.Headers.version)),
            headers,
            payload: JSON.parse(decoder.decode(m.data))
          })
        }
        return messages
      })
    return { jsm, read, count }
  })
)

/** A stream name and subject prefix no other test or run uses; the stream is deleted at the end. */
export const uniqueStream = Effect.gen(function* () {
  const { jsm } = yield* Broker
  const id = crypto.randomUUID().replaceAll("-", "").slice(0, 12)
  const names = { stream: `EFTEST_${id}`, subjectPrefix: `eftest.${id}` }
  yield* Effect.addFinalizer(() => Effect.promise(() => jsm.streams.delete(names.stream).catch(() => false)))
  return names
})

/** A fresh database with the schema, an event store with the outbox enabled, and the PostgreSQL outbox. */
export const database: Effect.Effect<
  {
    readonly store: EventStore.Service
    readonly outbox: Outbox.Service
    readonly context: Context.Context<Layer.Layer.Success<ReturnType<typeof PgPool.layer>>>
  },
  never,
  Scope.Scope
> = Effect.gen(function* () {
  const url = yield* TestDatabase.fresh
  const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 4, maxOverflow: 12 }))
  yield* PgMigrations.run.pipe(Effect.provide(context))
  const store = yield* PgEventStore.makePrepared({ registry, outbox: true }).pipe(Effect.provide(context))
  const outbox = yield* PgOutbox.make().pipe(Effect.provide(context))
  return { store, outbox, context }
}).pipe(Effect.orDie)

/** Per aggregate, the versions in stream order. */
export const versionsByAggregate = (messages: ReadonlyArray<Stored>): Map<string, Array<number>> => {
  const result = new Map<string, Array<number>>()
  for (const m of messages) {
    const versions = result.get(m.aggregateId) ?? []
    versions.push(m.version)
    result.set(m.aggregateId, versions)
  }
  return result
}

/** A message to publish directly, with fresh ids. */
export const message = (overrides: Partial<Publisher.Message> = {}): Publisher.Message => ({
  eventId: crypto.randomUUID(),
  eventType: "OrderPlaced",
  aggregateId: crypto.randomUUID(),
  aggregateType: "Order",
  version: 1,
  globalPosition: 1n,
  tenantId: null,
  actorId: null,
  timestamp: new Date(),
  metadata: EventMetadata.empty,
  payloadJson: "{}",
  ...overrides
})

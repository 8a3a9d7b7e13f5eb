/**
 * The spans only the PostgreSQL implementations make (the others are checked on the
 * memory backends in packages/core/test/Telemetry.test.ts).
 */
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, ExpectedVersion, Telemetry } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgMonitor, PgOutbox, PgPool } from "@eventfold/pg"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import { recordingSpans } from "../../../test/support/spans.js"
import * as TestDatabase from "../../../test/support/TestDatabase.js"

const Noted = Event.make("Noted", { text: Schema.String })
const registry = EventRegistry.make(Noted)

describe("PgTelemetry", () => {
  it.scopedLive("the migrations and the outbox's claim and settle make their spans", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 2 }))
      const [, spans] = yield* recordingSpans(
        Effect.gen(function* () {
          yield* PgMigrations.run
          const store = yield* PgEventStore.make({ registry, outbox: true })
          const outbox = yield* PgOutbox.make()
          yield* store.append(
            { aggregateId: crypto.randomUUID(), aggregateType: "Note" },
            [{ event: Noted.make({ text: "x" }) }],
            { expectedVersion: ExpectedVersion.noStream }
          )
          const claimed = yield* outbox.claim({ owner: "telemetry", limit: 10, lease: Duration.seconds(30) })
          assert.strictEqual(claimed.length, 1)
          yield* outbox.settle({ owner: "telemetry", published: claimed.map((e) => e.id), failed: [], released: [] })
        }).pipe(Effect.provide(context))
      )
      const names = new Set(spans.map((s) => s.name))
      for (const name of [Telemetry.Spans.migrate, Telemetry.Spans.outboxClaim, Telemetry.Spans.outboxSettle]) {
        assert.isTrue(names.has(name), `missing span ${name}`)
      }
    })
  )

  it.scopedLive("the monitor makes a span per query, the overview's parts under its own", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 2 }))
      const [, spans] = yield* recordingSpans(
        Effect.gen(function* () {
          yield* PgMigrations.run
          const monitor = yield* PgMonitor.make
          yield* monitor.overview
          yield* monitor.streams({ limit: 1 })
        }).pipe(Effect.provide(context))
      )
      const named = (method: string) => spans.filter((s) => s.name === Telemetry.spanOf.monitor(method))
      const [overview] = named("overview")
      assert.isDefined(overview)
      assert.strictEqual(named("streams").length, 1)
      for (const part of [
        "migrations",
        "tableSizes",
        "horizon",
        "outbox",
        "projections",
        "deadLetters",
        "connections"
      ]) {
        assert.deepStrictEqual(
          named(part).map((s) => s.parentSpanId),
          [overview!.spanId],
          `${part} is a child of the overview`
        )
      }
    })
  )

  it.scopedLive("the prepared path makes a client span per statement, with its text and never its values", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 2 }))
      yield* PgMigrations.run.pipe(Effect.provide(context))
      const stream = { aggregateId: crypto.randomUUID(), aggregateType: "Note" }
      const secret = "a payload value that no span may carry"
      const [, spans] = yield* recordingSpans(
        Effect.gen(function* () {
          const store = yield* PgEventStore.makePrepared({ registry })
          yield* store.append(stream, [{ event: Noted.make({ text: secret }) }], {
            expectedVersion: ExpectedVersion.noStream
          })
          yield* Stream.runDrain(store.readStream(stream))
        }).pipe(Effect.provide(context))
      )
      const append = spans.find((s) => s.name === "INSERT events")
      assert.isDefined(append, `no INSERT events span among ${spans.map((s) => s.name).join(", ")}`)
      assert.strictEqual(append!.attributes.get(Telemetry.Attributes.dbSystem), "postgresql")
      assert.strictEqual(append!.attributes.get(Telemetry.Attributes.dbOperation), "INSERT")
      assert.strictEqual(append!.attributes.get(Telemetry.Attributes.dbCollection), "events")
      const read = spans.find((s) => s.name === "SELECT events")
      assert.isDefined(read, "no SELECT events span for the stream read")
      for (const span of [append!, read!]) {
        const text = String(span.attributes.get(Telemetry.Attributes.dbQueryText))
        assert.match(text, /\$1/)
        for (const value of [secret, stream.aggregateId]) {
          assert.notInclude(JSON.stringify([...span.attributes.values()].map(String)), value)
        }
      }
    })
  )
})

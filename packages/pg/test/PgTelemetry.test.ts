/**
 * The spans only the PostgreSQL implementations make (the others are checked on the
 * memory backends in packages/core/test/Telemetry.test.ts).
 */
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, ExpectedVersion, Telemetry } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgOutbox, PgPool } from "@eventfold/pg"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
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
})

import { assert, describe, it } from "@effect/vitest"
import { NatsPublisher } from "@eventfold/nats"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"

describe("NatsPublisher", () => {
  it("subjects are the prefix, the aggregate type and the event type, each a valid token", () => {
    assert.strictEqual(
      NatsPublisher.subject("eventfold", { aggregateType: "Order", eventType: "OrderPlaced" }),
      "eventfold.Order.OrderPlaced"
    )
    assert.strictEqual(
      NatsPublisher.subject("acme.events", { aggregateType: "sales.Order v2", eventType: "Item*Added>" }),
      "acme.events.sales_Order_v2.Item_Added_"
    )
    assert.strictEqual(NatsPublisher.token(""), "_")
  })

  it.effect("settings come from the environment, over the given defaults", () =>
    Effect.gen(function* () {
      const options = yield* NatsPublisher.config({ stream: "ORDERS", ackTimeout: "2 seconds" }).pipe(
        Effect.withConfigProvider(
          ConfigProvider.fromMap(
            new Map([
              ["NATS_URL", "nats://a:4222,nats://b:4222"],
              ["NATS_SUBJECT_PREFIX", "acme"],
              ["NATS_TOKEN", "s3cret"]
            ])
          )
        )
      )
      assert.deepInclude(options, {
        servers: "nats://a:4222,nats://b:4222",
        subjectPrefix: "acme",
        stream: "ORDERS",
        ackTimeout: "2 seconds"
      })
      assert.isTrue(Redacted.isRedacted(options.token))
      assert.strictEqual(Redacted.value(options.token!), "s3cret")
    })
  )

  it.effect("a server that cannot be reached is named by host and port, never with the URL's credentials", () =>
    Effect.gen(function* () {
      // Port 1: nothing listens there, so the connection is refused at once.
      const error = yield* Effect.flip(
        NatsPublisher.make({ servers: "nats://relay:S3cret@127.0.0.1:1, tls://admin:hunter2@localhost:2" })
      )
      assert.strictEqual(error._tag, "JetStreamSetupError")
      assert.include(error.message, "cannot connect to NATS at 127.0.0.1:1, localhost:2")
      for (const secret of ["S3cret", "hunter2", "relay:", "admin:"]) assert.notInclude(error.message, secret)
    }).pipe(Effect.scoped)
  )

  it.effect("an invalid subject prefix fails before connecting", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(NatsPublisher.make({ subjectPrefix: "events.>" }))
      assert.strictEqual(error._tag, "JetStreamSetupError")
      assert.include(error.message, "invalid subject prefix")
    }).pipe(Effect.scoped)
  )
})

import { assert, describe, it } from "@effect/vitest"
import { NatsPublisher } from "@eventfold/nats"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as FastCheck from "effect/FastCheck"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Stream from "effect/Stream"
import { message } from "./support.js"

// Names as the store takes them: 1 to 255 characters, no NUL, no lone surrogate.
const names = FastCheck.string({ unit: "grapheme", minLength: 1, maxLength: 60 }).filter(
  // biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is what the store refuses
  (name) => name.length <= 255 && !/\u0000|\p{Surrogate}/u.test(name)
)

describe("NatsPublisher", () => {
  it("subjects are the prefix, the aggregate type and the event type, each one token", () => {
    assert.strictEqual(
      NatsPublisher.subject("eventfold", { aggregateType: "Order", eventType: "OrderPlaced" }),
      "eventfold.Order.OrderPlaced"
    )
    assert.strictEqual(
      NatsPublisher.subject("acme.events", { aggregateType: "sales.Order v2", eventType: "Item*Added>" }),
      "acme.events.sales%2EOrder%20v2.Item%2AAdded%3E"
    )
    assert.strictEqual(NatsPublisher.token("Order_Created-2"), "Order_Created-2")
    assert.notStrictEqual(NatsPublisher.token("Order.Created"), NatsPublisher.token("Order_Created"))
  })

  it.prop(
    "two names never share a token, a token is one valid subject token, and decodes back to its name",
    [names, names],
    ([a, b]) => {
      const ta = NatsPublisher.token(a)
      assert.match(ta, /^[A-Za-z0-9_%-]+$/)
      assert.strictEqual(decodeURIComponent(ta), a)
      if (a !== b) assert.notStrictEqual(ta, NatsPublisher.token(b))
      const header = NatsPublisher.headerText(a)
      assert.notMatch(header, /[\r\n]/)
      assert.notInclude(header, String.fromCharCode(0))
      assert.strictEqual(decodeURIComponent(header), a)
    }
  )

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
      // NATS_URL may carry a password: it stays Redacted until the connection is made.
      assert.isTrue(Redacted.isRedacted(options.servers))
      assert.strictEqual(Redacted.value(options.servers as Redacted.Redacted<string>), "nats://a:4222,nats://b:4222")
      assert.notInclude(String(options.servers), "nats://")
      assert.deepInclude(options, {
        subjectPrefix: "acme",
        stream: "ORDERS",
        ackTimeout: "2 seconds"
      })
      assert.isTrue(Redacted.isRedacted(options.token))
      assert.strictEqual(Redacted.value(options.token!), "s3cret")
    })
  )

  it.live("a server that cannot be reached is a state, shown by host and port, never with the URL's credentials", () =>
    Effect.gen(function* () {
      const logs = yield* Ref.make<ReadonlyArray<string>>([])
      const logger = Logger.make(({ message }) => {
        Effect.runSync(Ref.update(logs, (lines) => [...lines, String(message)]))
      })
      // Port 1: nothing listens there, so the connection is refused at once. The layer is built all the same.
      const publisher = yield* NatsPublisher.make({
        servers: "nats://relay:S3cret@127.0.0.1:1, tls://relay:S3cret@localhost:2"
      }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
      const status = yield* publisher.statusChanges.pipe(
        Stream.filter((s) => s._tag === "Connecting" && s.attempts >= 2),
        Stream.runHead,
        Effect.map(Option.getOrThrow)
      )
      assert.strictEqual(status._tag, "Connecting")
      const lastError = status._tag === "Connecting" ? (status.lastError ?? "") : ""
      assert.include(lastError, "cannot connect to NATS at 127.0.0.1:1, localhost:2")
      const outcome = yield* publisher.publish([message()])
      assert.strictEqual(outcome[0]?._tag, "Failed")
      const error = outcome[0]?._tag === "Failed" ? outcome[0].error : undefined
      assert.strictEqual(error?.reason, "Unavailable")
      const printed = [lastError, error?.message ?? "", String(error?.cause ?? ""), ...(yield* Ref.get(logs))]
      assert.isAbove(printed.length, 3)
      for (const text of printed) {
        for (const secret of ["S3cret", "relay:", "relay@"]) assert.notInclude(text, secret)
      }
    }).pipe(Effect.scoped)
  )

  it.effect("credentials that disagree are refused before connecting, without printing them", () =>
    Effect.gen(function* () {
      const twoSets = yield* Effect.flip(
        NatsPublisher.make({ servers: "nats://a:S3cret@127.0.0.1:1,nats://b:hunter2@127.0.0.1:2" })
      )
      assert.include(twoSets.message, "different credentials")
      const apart = yield* Effect.flip(
        NatsPublisher.make({ servers: "nats://a:S3cret@127.0.0.1:1", password: Redacted.make("hunter2") })
      )
      assert.include(apart.message, "differ from the user, password or token given apart")
      for (const error of [twoSets, apart]) {
        for (const secret of ["S3cret", "hunter2"]) assert.notInclude(error.message, secret)
      }
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

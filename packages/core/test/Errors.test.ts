import { assert, describe, it } from "@effect/vitest"
import { Errors } from "@eventfold/core"
import * as Either from "effect/Either"
import * as Schema from "effect/Schema"

describe("describeCause", () => {
  it("joins the messages along the cause chain, each once", () => {
    const inner = new Error("Connection terminated unexpectedly")
    const outer = new Error("Failed to execute statement", { cause: inner })
    assert.strictEqual(Errors.describeCause(outer), "Failed to execute statement: Connection terminated unexpectedly")
  })

  it("words a failure whose message cannot be formatted (a ParseError of a value nested 10,000 deep)", () => {
    let deep: unknown = "leaf"
    for (let i = 0; i < 10_000; i++) deep = [deep]
    const parsed = Schema.decodeUnknownEither(Schema.Struct({ sku: Schema.String }))({ sku: deep })
    assert.isTrue(Either.isLeft(parsed))
    const failure = Either.isLeft(parsed) ? parsed.left : undefined
    assert.throws(() => failure?.message)
    const wrapped = new Error("handler failed", { cause: failure })
    assert.include(Errors.describeCause(wrapped), "handler failed: (its message cannot be formatted")
  })
})

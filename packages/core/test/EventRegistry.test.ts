import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry } from "@eventfold/core"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import * as PlainStruct from "../src/internal/plainStruct.js"

// A plain struct: the registry decodes and encodes it on its fast path.
const fields = { sku: Schema.String, quantity: Schema.Number, gift: Schema.Boolean, unit: Schema.Literal("piece") }
const ItemAdded = Event.make("ItemAdded", fields)
const registry = EventRegistry.make(ItemAdded)
const reference = Schema.Struct(fields)
const meta = { eventId: "e-1", globalPosition: 1n }

/** Inputs around the struct's shape: right and wrong types, missing and extra keys, non-objects. */
const value = FastCheck.oneof(
  FastCheck.string(),
  FastCheck.double(),
  FastCheck.boolean(),
  FastCheck.constant(null),
  FastCheck.constant(undefined),
  FastCheck.constant("piece"),
  FastCheck.array(FastCheck.integer(), { maxLength: 2 })
)
const input = FastCheck.oneof(
  FastCheck.record({ sku: value, quantity: value, gift: value, extra: value, __proto__: value }, { requiredKeys: [] }),
  FastCheck.record({
    sku: FastCheck.string(),
    quantity: FastCheck.double(),
    gift: FastCheck.boolean(),
    unit: FastCheck.constantFrom("piece", "box")
  }),
  FastCheck.anything()
)

describe("EventRegistry", () => {
  it.prop("decodes a plain struct exactly as Schema does, and explains what it rejects", [input], ([payload]) => {
    const expected = Schema.decodeUnknownEither(reference)(payload)
    const decoded = registry.decode("ItemAdded", payload, meta)
    if (Either.isRight(expected)) {
      assert.deepStrictEqual(decoded, Either.right({ ...expected.right, _tag: "ItemAdded" }))
      assert.deepStrictEqual(Object.keys(Either.getOrThrow(decoded)), ["sku", "quantity", "gift", "unit", "_tag"])
    } else {
      assert.isTrue(Either.isLeft(decoded))
      assert.deepInclude(Either.getLeft(decoded).pipe(Option.getOrUndefined), {
        _tag: "EventDecodeError",
        message: ParseResult.TreeFormatter.formatErrorSync(expected.left)
      })
    }
  })

  it.prop(
    "decodes a payload it is handed over as decode does, taking it as the event only when nothing is to drop",
    [input],
    ([payload]) => {
      const expected = registry.decode("ItemAdded", structuredClone(payload), meta)
      const keys = typeof payload === "object" && payload !== null ? Object.keys(payload) : []
      const decoded = registry.decodeOwned("ItemAdded", payload, meta)
      assert.deepStrictEqual(decoded, expected)
      if (Either.isRight(decoded) && decoded.right === payload) {
        // Only the struct's four fields were there: the event is the payload, given its tag.
        assert.sameMembers(keys, ["sku", "quantity", "gift", "unit"])
        assert.sameMembers(Object.keys(payload), [...keys, "_tag"])
      }
    }
  )

  it("takes a handed-over payload as the event when it has exactly the fields, and copies it otherwise", () => {
    const payload: Record<string, unknown> = { unit: "piece", gift: false, quantity: 2, sku: "A-1" }
    assert.strictEqual<unknown>(Either.getOrThrow(registry.decodeOwned("ItemAdded", payload, meta)), payload)
    assert.strictEqual(payload._tag, "ItemAdded")
    const extra = { unit: "piece", gift: false, quantity: 2, sku: "A-1", note: "dropped" }
    const decoded: unknown = Either.getOrThrow(registry.decodeOwned("ItemAdded", extra, meta))
    assert.notStrictEqual(decoded, extra)
    assert.deepStrictEqual(decoded, { sku: "A-1", quantity: 2, gift: false, unit: "piece", _tag: "ItemAdded" })
    // decode never touches what it is given.
    const mine = { unit: "piece", gift: false, quantity: 2, sku: "A-1" }
    assert.notStrictEqual<unknown>(Either.getOrThrow(registry.decode("ItemAdded", mine, meta)), mine)
    assert.notProperty(mine, "_tag")
  })

  it.prop("encodes a plain struct exactly as Schema does", [input], ([payload]) => {
    const event = { ...(typeof payload === "object" && payload !== null ? payload : {}), _tag: "ItemAdded" }
    const expected = Schema.encodeUnknownEither(reference)(event)
    const encoded = registry.encode(event)
    if (Either.isRight(expected)) assert.deepStrictEqual(encoded, Either.right(expected.right))
    else assert.isTrue(Either.isLeft(encoded))
  })

  it("takes the fast path only for required strings, numbers, booleans and string literals, without parse options", () => {
    assert.isDefined(PlainStruct.compile(reference.ast))
    assert.isDefined(PlainStruct.compile(ItemAdded.ast))
    assert.isDefined(PlainStruct.compileExact(reference.ast))
    for (const schema of [
      Schema.Struct({ sku: Schema.optional(Schema.String) }),
      Schema.Struct({ sku: Schema.String.pipe(Schema.minLength(1)) }),
      Schema.Struct({ at: Schema.DateFromString }),
      Schema.Struct({ kind: Schema.Literal(1) }),
      Schema.Struct({ kind: Schema.Literal("a", "b") }),
      Schema.Struct({ sku: Schema.String }, Schema.Record({ key: Schema.String, value: Schema.String })),
      Schema.Struct({ sku: Schema.String }).annotations({ parseOptions: { onExcessProperty: "error" } }),
      Schema.Union(Schema.Struct({ sku: Schema.String }), Schema.Struct({ id: Schema.String }))
    ]) {
      assert.isUndefined(PlainStruct.compile(schema.ast), String(schema.ast))
      assert.isUndefined(PlainStruct.compileExact(schema.ast), String(schema.ast))
    }
  })
})

describe("EventRegistry refuses, when it is made, what could not be stored and read back", () => {
  interface Tree {
    readonly label: string
    readonly children: ReadonlyArray<Tree>
  }
  const Tree: Schema.Schema<Tree> = Schema.Struct({
    label: Schema.String,
    children: Schema.Array(Schema.suspend(() => Tree))
  })
  class Money extends Schema.Class<Money>("Money")({ amount: Schema.BigInt, currency: Schema.String }) {}

  it("accepts schemas whose encoded side is JSON", () => {
    const fine = {
      at: Schema.Date,
      amount: Schema.BigInt,
      maybe: Schema.optional(Schema.String),
      maybeAt: Schema.optionalWith(Schema.Date, { exact: true }),
      nullable: Schema.NullOr(Schema.Number),
      option: Schema.Option(Schema.String),
      tree: Tree,
      money: Money,
      record: Schema.Record({ key: Schema.String, value: Schema.UndefinedOr(Schema.Number) }),
      pair: Schema.Tuple(Schema.String, Schema.Number),
      bytes: Schema.Uint8Array,
      anything: Schema.Unknown
    }
    assert.doesNotThrow(() => EventRegistry.make(Event.make("Fine", fine)))
  })

  it("refuses a Date, a bigint, bytes, a symbol or a required undefined in the encoded side, naming the field", () => {
    const cases: ReadonlyArray<readonly [Schema.Struct.Fields, string]> = [
      [{ at: Schema.DateFromSelf }, "payload.at is encoded as DateFromSelf"],
      [{ at: Schema.optional(Schema.DateFromSelf) }, "payload.at is encoded as DateFromSelf"],
      [{ n: Schema.BigIntFromSelf }, "payload.n is encoded as a bigint"],
      [{ n: Schema.Literal(1n) }, "payload.n is encoded as a bigint literal"],
      [{ bytes: Schema.Uint8ArrayFromSelf }, "payload.bytes is encoded as Uint8ArrayFromSelf"],
      [{ s: Schema.SymbolFromSelf }, "payload.s is encoded as a symbol"],
      [{ u: Schema.UndefinedOr(Schema.String) }, "payload.u may be encoded as undefined"],
      [{ list: Schema.Array(Schema.UndefinedOr(Schema.String)) }, "payload.list[] may be encoded as undefined"],
      [{ nested: Schema.Struct({ deep: Schema.Tuple(Schema.String, Schema.DateFromSelf) }) }, "payload.nested.deep[1]"],
      [{ map: Schema.ReadonlyMapFromSelf({ key: Schema.String, value: Schema.String }) }, "payload.map is encoded as"]
    ]
    for (const [fields, expected] of cases) {
      assert.throws(() => EventRegistry.make(Event.make("Bad", fields) as unknown as Event.AnyEventType), expected)
    }
  })

  it("refuses an event type the event_type column could not store as given", () => {
    for (const type of ["", "x".repeat(256), "Order\u0000Created", "lone \ud800"]) {
      assert.throws(() => EventRegistry.make(Event.make(type, { a: Schema.String })), /event type/)
    }
    assert.doesNotThrow(() => EventRegistry.make(Event.make("x".repeat(255), { a: Schema.String })))
  })
})

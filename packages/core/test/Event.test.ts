import { assert, describe, it } from "@effect/vitest"
import { Event } from "@eventfold/core"
import * as FastCheck from "effect/FastCheck"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"

const fields = {
  customer_id: Schema.String,
  total: Schema.Number.pipe(Schema.nonNegative()),
  // A constructor default, as Schema's own `make` fills it in.
  currency: Schema.String.pipe(
    Schema.propertySignature,
    Schema.withConstructorDefault(() => "EUR")
  ),
  note: Schema.optionalWith(Schema.String, { default: () => "none" })
}
const OrderPlaced = Event.make("OrderPlaced", fields)
// The same definition through Schema alone: its `make` is the reference.
const Reference = Schema.TaggedStruct("OrderPlaced", fields)

const outcome = (make: () => unknown) => {
  try {
    return { value: make() }
  } catch (error) {
    return { error: ParseResult.isParseError(error) ? "ParseError" : String(error) }
  }
}

// A plain struct: `make` checks it in one loop (internal/plainStruct.ts).
const plainFields = { sku: Schema.String, quantity: Schema.Number, gift: Schema.Boolean }
const ItemAdded = Event.make("ItemAdded", plainFields)
const PlainReference = Schema.TaggedStruct("ItemAdded", plainFields)

describe("Event.make's make", () => {
  it.prop(
    "of a plain struct builds, and rejects, what the schema's own make does",
    [
      FastCheck.record(
        {
          sku: FastCheck.oneof(FastCheck.string(), FastCheck.integer()),
          quantity: FastCheck.oneof(FastCheck.double(), FastCheck.string()),
          gift: FastCheck.oneof(FastCheck.boolean(), FastCheck.constant(null)),
          _tag: FastCheck.constantFrom("ItemAdded", "Other")
        },
        { requiredKeys: [] }
      )
    ],
    ([props]) => {
      const input = props as Parameters<typeof PlainReference.make>[0]
      const ours = outcome(() => ItemAdded.make(input))
      const theirs = outcome(() => PlainReference.make(input))
      assert.deepStrictEqual(ours, theirs)
      if ("value" in ours)
        assert.deepStrictEqual(Object.keys(ours.value as object), ["_tag", "sku", "quantity", "gift"])
    }
  )

  it.prop(
    "builds what the schema's own make builds, and rejects what it rejects",
    [
      FastCheck.record(
        {
          customer_id: FastCheck.oneof(FastCheck.string(), FastCheck.integer()),
          total: FastCheck.oneof(FastCheck.double(), FastCheck.string()),
          currency: FastCheck.string(),
          note: FastCheck.string()
        },
        { requiredKeys: ["customer_id", "total"] }
      )
    ],
    ([props]) => {
      const input = props as Parameters<typeof Reference.make>[0]
      assert.deepStrictEqual(
        outcome(() => OrderPlaced.make(input)),
        outcome(() => Reference.make(input))
      )
      assert.deepStrictEqual(
        outcome(() => OrderPlaced.make(input, { disableValidation: true })),
        outcome(() => Reference.make(input, { disableValidation: true }))
      )
    }
  )

  it("fills in defaults and the tag, and validates refinements", () => {
    assert.deepStrictEqual(OrderPlaced.make({ customer_id: "c-1", total: 3 }), {
      _tag: "OrderPlaced",
      customer_id: "c-1",
      total: 3,
      currency: "EUR",
      note: "none"
    })
    assert.throws(() => OrderPlaced.make({ customer_id: "c-1", total: -1 }), /\["total"\]/)
    assert.strictEqual(OrderPlaced.make({ customer_id: "c-1", total: -1 }, true).total, -1)
  })
})

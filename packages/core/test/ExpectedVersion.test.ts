import { assert, describe, it } from "@effect/vitest"
import { ExpectedVersion } from "@eventfold/core"
import * as Equal from "effect/Equal"
import * as FastCheck from "effect/FastCheck"
import * as Hash from "effect/Hash"
import * as Schema from "effect/Schema"

describe("ExpectedVersion.exact", () => {
  it.prop(
    "builds the same value as the Schema class: equal, same hash, same fields, encodes and validates alike",
    [FastCheck.nat()],
    ([version]) => {
      const fast = ExpectedVersion.exact(version)
      const built = new ExpectedVersion.Exact({ version })
      assert.instanceOf(fast, ExpectedVersion.Exact)
      assert.isTrue(Equal.equals(fast, built))
      assert.strictEqual(Hash.hash(fast), Hash.hash(built))
      assert.deepStrictEqual(Reflect.ownKeys(fast), Reflect.ownKeys(built))
      assert.strictEqual(JSON.stringify(fast), JSON.stringify(built))
      assert.strictEqual(String(fast), String(built))
      assert.isTrue(Schema.is(ExpectedVersion.ExpectedVersion)(fast))
      assert.deepStrictEqual(
        Schema.encodeSync(ExpectedVersion.ExpectedVersion)(fast),
        Schema.encodeSync(ExpectedVersion.ExpectedVersion)(built)
      )
      assert.isTrue(ExpectedVersion.isSatisfiedBy(fast, version))
      assert.isFalse(ExpectedVersion.isSatisfiedBy(fast, version + 1))
    }
  )

  it("rejects what is not a version, as the Schema does, naming the value", () => {
    for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53]) {
      assert.throws(() => ExpectedVersion.exact(bad), String(bad))
    }
  })
})

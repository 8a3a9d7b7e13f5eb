import { assert, describe, it } from "@effect/vitest"
import * as KnownVersions from "../src/internal/knownVersions.js"

describe("KnownVersions", () => {
  const type = "Order"
  const id = () => crypto.randomUUID()

  it("knows version 0 of every stream, and every version up to the highest it saw", () => {
    const known = KnownVersions.make(10)
    const stream = id()
    assert.isTrue(known.knows(stream, type, 0))
    assert.isFalse(known.knows(stream, type, 1))
    known.saw(stream, type, 3)
    assert.isTrue(known.knows(stream, type, 1))
    assert.isTrue(known.knows(stream, type, 3))
    assert.isFalse(known.knows(stream, type, 4))
    // Only ever raised: an older report (a slow reader's page) changes nothing.
    known.saw(stream, type, 2)
    assert.isTrue(known.knows(stream, type, 3))
    // Streams are told apart by type too.
    assert.isFalse(known.knows(stream, "Invoice", 1))
  })

  it("forgets the stream it recorded first past its capacity", () => {
    const known = KnownVersions.make(2)
    const [a, b, c] = [id(), id(), id()]
    known.saw(a, type, 1)
    known.saw(b, type, 1)
    known.saw(a, type, 2)
    known.saw(c, type, 1)
    assert.isFalse(known.knows(a, type, 1))
    assert.isTrue(known.knows(b, type, 1))
    assert.isTrue(known.knows(c, type, 1))
  })

  it("with capacity 0 knows only version 0", () => {
    const known = KnownVersions.make(0)
    const stream = id()
    known.saw(stream, type, 5)
    assert.isTrue(known.knows(stream, type, 0))
    assert.isFalse(known.knows(stream, type, 1))
  })
})

import { assert, describe, it } from "@effect/vitest"
import * as KnownVersions from "../src/internal/knownVersions.js"

describe("KnownVersions", () => {
  const type = "Order"
  const id = () => crypto.randomUUID()

  it("knows version 0 of every stream, and every version up to the highest it saw", () => {
    const known = KnownVersions.make(10)
    const stream = id()
    assert.strictEqual(known.knows(stream, type, 0), "known")
    assert.strictEqual(known.knows(stream, type, 1), "unknown")
    known.saw(stream, type, 3)
    assert.strictEqual(known.knows(stream, type, 1), "known")
    assert.strictEqual(known.knows(stream, type, 3), "known")
    assert.strictEqual(known.knows(stream, type, 4), "unknown")
    // Only ever raised: an older report (a slow reader's page) changes nothing.
    known.saw(stream, type, 2)
    assert.strictEqual(known.knows(stream, type, 3), "known")
    // Streams are told apart by type too.
    assert.strictEqual(known.knows(stream, "Invoice", 1), "unknown")
  })

  it("marks a stream where a race was lost as contended, for good", () => {
    const known = KnownVersions.make(10)
    const [a, b] = [id(), id()]
    known.saw(a, type, 2)
    known.lostRace(a, type, 5)
    assert.strictEqual(known.knows(a, type, 5), "contended")
    assert.strictEqual(known.knows(a, type, 6), "unknown")
    known.saw(a, type, 6)
    assert.strictEqual(known.knows(a, type, 6), "contended")
    // A stream first heard of through a lost race.
    known.lostRace(b, type, 1)
    assert.strictEqual(known.knows(b, type, 0), "contended")
  })

  it("forgets the stream it recorded first past its capacity", () => {
    const known = KnownVersions.make(2)
    const [a, b, c] = [id(), id(), id()]
    known.saw(a, type, 1)
    known.saw(b, type, 1)
    known.saw(a, type, 2)
    known.saw(c, type, 1)
    assert.strictEqual(known.knows(a, type, 1), "unknown")
    assert.strictEqual(known.knows(b, type, 1), "known")
    assert.strictEqual(known.knows(c, type, 1), "known")
  })

  it("with capacity 0 knows only version 0", () => {
    const known = KnownVersions.make(0)
    const stream = id()
    known.saw(stream, type, 5)
    known.lostRace(stream, type, 5)
    assert.strictEqual(known.knows(stream, type, 0), "known")
    assert.strictEqual(known.knows(stream, type, 1), "unknown")
  })
})

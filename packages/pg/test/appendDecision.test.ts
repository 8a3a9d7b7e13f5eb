/**
 * The rules of an append's outcome (internal/appendDecision.ts), without a database:
 * every rule, and properties over random rows.
 */
import { assert, describe, it } from "@effect/vitest"
import { ExpectedVersion } from "@eventfold/core"
import * as Equal from "effect/Equal"
import * as FastCheck from "effect/FastCheck"
import * as D from "../src/internal/appendDecision.js"

const any = ExpectedVersion.any
const exact = ExpectedVersion.exact
const input = (expectedVersion: ExpectedVersion.ExpectedVersion, count = 1): D.Input => ({ expectedVersion, count })

const explain = (fields: Partial<D.ExplainRow> = {}): D.ExplainRow => ({
  head_version: 3,
  last_version: 3,
  found: 0,
  same_stream: false,
  base_min: null,
  base_max: null,
  replay_version: null,
  first_position: null,
  last_position: null,
  duplicate_event_id: null,
  foreign_tenant: false,
  foreign_event_id: null,
  ...fields
})

/** A replay of `count` events stored from version `base + 1` of this stream. */
const replay = (base: number, count: number, fields: Partial<D.ExplainRow> = {}) =>
  explain({
    head_version: base + count + 2,
    last_version: base + count + 2,
    found: count,
    same_stream: true,
    base_min: base,
    base_max: base,
    replay_version: base + count,
    first_position: 100n,
    last_position: 100n + BigInt(count - 1),
    duplicate_event_id: "a",
    ...fields
  })

const expectations: ReadonlyArray<ExpectedVersion.ExpectedVersion> = [
  ExpectedVersion.any,
  ExpectedVersion.noStream,
  ExpectedVersion.streamExists,
  exact(0),
  exact(1),
  exact(3),
  exact(7)
]

describe("afterAppend", () => {
  it("a row with a version and positions is the result", () => {
    const decision = D.afterAppend(input(any), {
      _tag: "Rows",
      rows: [{ version: 4, first_position: 10n, last_position: 10n }]
    })
    assert.deepStrictEqual(
      decision,
      D.Decision.Appended({ result: { version: 4, firstPosition: 10n, lastPosition: 10n } })
    )
  })

  it("nothing inserted: a single event looks up the head, a batch is explained", () => {
    for (const rows of [[], [{ version: null, first_position: null, last_position: null }]]) {
      assert.strictEqual(D.afterAppend(input(exact(2), 1), { _tag: "Rows", rows })._tag, "LookUpHead")
      assert.strictEqual(D.afterAppend(input(exact(2), 3), { _tag: "Rows", rows })._tag, "Explain")
    }
  })

  it("a violation of our constraints is explained; any other is the database's refusal", () => {
    for (const constraint of [D.VERSION_CONSTRAINT, D.EVENT_ID_CONSTRAINT]) {
      assert.strictEqual(
        D.afterAppend(input(any), { _tag: "UniqueViolation", constraint, cause: "x" })._tag,
        "Explain",
        constraint
      )
    }
    for (const constraint of ["uq_order_number", undefined]) {
      assert.deepStrictEqual(
        D.afterAppend(input(any), { _tag: "UniqueViolation", constraint, cause: "x" }),
        D.Decision.Refused({ cause: "x" })
      )
    }
  })

  it("a version without positions is unexpected, never a success, and says what came back", () => {
    const decision = D.afterAppend(input(any), {
      _tag: "Rows",
      rows: [{ version: 4, first_position: null, last_position: 5n }]
    })
    assert.strictEqual(decision._tag, "Unexpected")
    assert.include(decision._tag === "Unexpected" ? decision.message : "", '"last_position":"5"')
    const withoutLast = D.afterAppend(input(any), {
      _tag: "Rows",
      rows: [{ version: 4, first_position: 5n, last_position: null }]
    })
    assert.strictEqual(withoutLast._tag, "Unexpected")
  })
})

describe("afterHead", () => {
  it("a stored id is explained, whatever the head", () => {
    for (const expected of expectations) {
      assert.strictEqual(
        D.afterHead(input(expected), { head_version: 5, last_version: 5, stored: true, foreign_tenant: false })._tag,
        "Explain"
      )
    }
  })

  it("otherwise the head decides: a conflict at its version, or, when it accepts the expectation, again", () => {
    assert.deepStrictEqual(
      D.afterHead(input(exact(2)), { head_version: 5, last_version: 5, stored: false, foreign_tenant: false }),
      D.Decision.Conflict({ actualVersion: 5 })
    )
    assert.deepStrictEqual(
      D.afterHead(input(ExpectedVersion.noStream), {
        head_version: 1,
        last_version: 1,
        stored: false,
        foreign_tenant: false
      }),
      D.Decision.Conflict({ actualVersion: 1 })
    )
    assert.deepStrictEqual(
      D.afterHead(input(ExpectedVersion.streamExists), {
        head_version: 0,
        last_version: 0,
        stored: false,
        foreign_tenant: false
      }),
      D.Decision.Conflict({ actualVersion: 0 })
    )
    // The stream came to exist between the append and the lookup.
    assert.deepStrictEqual(
      D.afterHead(input(ExpectedVersion.streamExists), {
        head_version: 2,
        last_version: 2,
        stored: false,
        foreign_tenant: false
      }),
      D.Decision.Retry({ actualVersion: 2 })
    )
  })

  it("a head behind the stream's events (written around the store) is repaired first, whatever the expectation", () => {
    for (const expected of expectations) {
      assert.deepStrictEqual(
        D.afterHead(input(expected), { head_version: 0, last_version: 2, stored: false, foreign_tenant: false }),
        D.Decision.RepairHead({ lastVersion: 2 })
      )
    }
    // A stored id still goes to the explanation, which repairs too when none of the ids is found.
    assert.strictEqual(
      D.afterHead(input(exact(2)), { head_version: 0, last_version: 2, stored: true, foreign_tenant: false })._tag,
      "Explain"
    )
  })

  it("a row with nulls is unexpected", () => {
    assert.strictEqual(
      D.afterHead(input(any), { head_version: null, last_version: 0, stored: false, foreign_tenant: false })._tag,
      "Unexpected"
    )
    assert.strictEqual(
      D.afterHead(input(any), { head_version: 0, last_version: null, stored: false, foreign_tenant: false })._tag,
      "Unexpected"
    )
    const noStored = D.afterHead(input(any), { head_version: 0, last_version: 0, stored: null, foreign_tenant: false })
    assert.include(noStored._tag === "Unexpected" ? noStored.message : "", "a head lookup returned")
    const noLast = D.afterExplain(input(any), explain({ last_version: null }))
    assert.include(noLast._tag === "Unexpected" ? noLast.message : "", "an explanation returned")
  })

  it.prop(
    "properties: a single event's lookup agrees with the explanation of the same stream with no id found",
    [
      FastCheck.constantFrom(...expectations),
      FastCheck.integer({ min: 0, max: 10 }),
      FastCheck.integer({ min: 0, max: 10 })
    ],
    ([expected, head, last]) => {
      const byHead = D.afterHead(input(expected), {
        head_version: head,
        last_version: last,
        stored: false,
        foreign_tenant: false
      })
      const byExplanation = D.afterExplain(
        input(expected),
        explain({ head_version: head, last_version: last, found: 0 })
      )
      return Equal.equals(byHead, byExplanation)
    }
  )
})

describe("afterExplain", () => {
  it("no id stored: events past the head repair it; else the head decides", () => {
    assert.deepStrictEqual(
      D.afterExplain(input(exact(2)), explain({ head_version: 2, last_version: 4 })),
      D.Decision.RepairHead({ lastVersion: 4 })
    )
    assert.deepStrictEqual(
      D.afterExplain(input(exact(2)), explain({ head_version: 3, last_version: 3 })),
      D.Decision.Conflict({ actualVersion: 3 })
    )
    // Deleted events leave the head above them: the head stands.
    assert.deepStrictEqual(
      D.afterExplain(input(ExpectedVersion.noStream), explain({ head_version: 3, last_version: 0 })),
      D.Decision.Conflict({ actualVersion: 3 })
    )
    assert.deepStrictEqual(
      D.afterExplain(input(exact(3)), explain({ head_version: 3, last_version: 3 })),
      D.Decision.Retry({ actualVersion: 3 })
    )
  })

  it("all ids stored in this stream at consecutive versions, from a version the expectation accepts: a replay", () => {
    assert.deepStrictEqual(
      D.afterExplain(input(exact(4), 3), replay(4, 3)),
      D.Decision.Appended({ result: { version: 7, firstPosition: 100n, lastPosition: 102n } })
    )
    assert.strictEqual(D.afterExplain(input(any, 3), replay(4, 3))._tag, "Appended")
    assert.strictEqual(D.afterExplain(input(ExpectedVersion.noStream, 2), replay(0, 2))._tag, "Appended")
    assert.strictEqual(D.afterExplain(input(ExpectedVersion.streamExists, 2), replay(1, 2))._tag, "Appended")
  })

  it("anything short of a replay is a duplicate, naming the first id found", () => {
    const duplicate = D.Decision.Duplicate({ eventId: "a" })
    // Not all ids stored.
    assert.deepStrictEqual(D.afterExplain(input(exact(4), 3), replay(4, 3, { found: 2 })), duplicate)
    // Stored in another stream.
    assert.deepStrictEqual(D.afterExplain(input(exact(4), 3), replay(4, 3, { same_stream: false })), duplicate)
    // Not at consecutive versions: [a, c] replayed after [a, b, c].
    assert.deepStrictEqual(D.afterExplain(input(exact(0), 2), replay(0, 2, { base_max: 1 })), duplicate)
    // From a version the expectation does not accept.
    assert.deepStrictEqual(D.afterExplain(input(exact(3), 3), replay(4, 3)), duplicate)
    assert.deepStrictEqual(D.afterExplain(input(ExpectedVersion.noStream, 3), replay(4, 3)), duplicate)
    assert.deepStrictEqual(D.afterExplain(input(ExpectedVersion.streamExists, 2), replay(0, 2)), duplicate)
  })

  it("ids all found in place but without a version or positions to answer with are no replay", () => {
    for (const missing of [
      { base_min: null, base_max: null },
      { replay_version: null },
      { first_position: null },
      { last_position: null }
    ]) {
      assert.strictEqual(
        D.afterExplain(input(any, 2), replay(4, 2, missing))._tag,
        "Duplicate",
        JSON.stringify(missing)
      )
    }
  })

  it("a row with nulls where counts belong is unexpected", () => {
    assert.strictEqual(D.afterExplain(input(any), explain({ found: null }))._tag, "Unexpected")
    assert.strictEqual(D.afterExplain(input(any), explain({ head_version: null }))._tag, "Unexpected")
  })

  it.prop(
    "properties: an explanation never succeeds unless every id is found in place; a conflict reports the head",
    [
      FastCheck.constantFrom(...expectations),
      FastCheck.integer({ min: 1, max: 5 }),
      FastCheck.record({
        head_version: FastCheck.integer({ min: 0, max: 10 }),
        last_version: FastCheck.integer({ min: 0, max: 10 }),
        found: FastCheck.integer({ min: 0, max: 5 }),
        same_stream: FastCheck.boolean(),
        base_min: FastCheck.option(FastCheck.integer({ min: 0, max: 10 }), { nil: null }),
        base_max: FastCheck.option(FastCheck.integer({ min: 0, max: 10 }), { nil: null }),
        replay_version: FastCheck.option(FastCheck.integer({ min: 1, max: 15 }), { nil: null }),
        first_position: FastCheck.option(FastCheck.bigInt({ min: 1n, max: 100n }), { nil: null }),
        last_position: FastCheck.option(FastCheck.bigInt({ min: 1n, max: 100n }), { nil: null }),
        duplicate_event_id: FastCheck.option(FastCheck.uuid(), { nil: null }),
        foreign_tenant: FastCheck.boolean(),
        foreign_event_id: FastCheck.option(FastCheck.uuid(), { nil: null })
      })
    ],
    ([expected, count, row]) => {
      const decision = D.afterExplain(input(expected, count), row)
      // Another tenant's stream ends every explanation, whatever else the row says.
      if (row.foreign_tenant) return decision._tag === "ForeignTenant"
      switch (decision._tag) {
        case "Appended":
          return (
            row.found === count &&
            row.same_stream &&
            row.base_min !== null &&
            row.base_min === row.base_max &&
            ExpectedVersion.isSatisfiedBy(expected, row.base_min)
          )
        case "Conflict":
          return (
            row.found === 0 &&
            row.foreign_event_id === null &&
            row.last_version <= row.head_version &&
            decision.actualVersion === row.head_version &&
            !ExpectedVersion.isSatisfiedBy(expected, row.head_version)
          )
        case "Retry":
          return (
            row.found === 0 &&
            row.foreign_event_id === null &&
            row.last_version <= row.head_version &&
            ExpectedVersion.isSatisfiedBy(expected, row.head_version)
          )
        case "RepairHead":
          return (
            row.found === 0 &&
            row.foreign_event_id === null &&
            row.last_version > row.head_version &&
            decision.lastVersion === row.last_version
          )
        case "Duplicate":
          return row.found > 0 || (row.foreign_event_id !== null && decision.eventId === row.foreign_event_id)
        default:
          return false
      }
    }
  )
})

describe("tenants", () => {
  it("another tenant's stream ends the append before anything else is considered", () => {
    for (const expected of expectations) {
      // Even with the id stored, or the head behind: nothing is repaired or retried for another tenant.
      for (const stored of [false, true]) {
        assert.deepStrictEqual(
          D.afterHead(input(expected), { head_version: 0, last_version: 2, stored, foreign_tenant: true }),
          D.Decision.ForeignTenant()
        )
      }
      assert.deepStrictEqual(
        D.afterExplain(input(expected, 2), replay(0, 2, { foreign_tenant: true })),
        D.Decision.ForeignTenant()
      )
    }
    const noForeign = D.afterHead(input(any), { head_version: 0, last_version: 0, stored: false, foreign_tenant: null })
    assert.strictEqual(noForeign._tag, "Unexpected")
    assert.strictEqual(D.afterExplain(input(any), explain({ foreign_tenant: null }))._tag, "Unexpected")
  })

  it("an id another tenant stored is a duplicate, though the explanation found none", () => {
    const id = "0b5c0c8e-1f7e-4a3b-9a59-1c2f6f1a8d41"
    assert.deepStrictEqual(
      D.afterExplain(input(any, 2), explain({ found: 0, foreign_event_id: id })),
      D.Decision.Duplicate({ eventId: id })
    )
  })

  it("a policy violation is explained: another tenant's stream, or the database's refusal", () => {
    const cause = new Error("new row violates row-level security policy")
    const decision = D.afterAppend(input(any), { _tag: "PolicyViolation", cause })
    assert.deepStrictEqual(decision, D.Decision.CheckTenant({ cause }))
    assert.deepStrictEqual(D.afterTenantCheck(explain({ foreign_tenant: true }), cause), D.Decision.ForeignTenant())
    assert.deepStrictEqual(D.afterTenantCheck(explain({ foreign_tenant: false }), cause), D.Decision.Refused({ cause }))
    assert.deepStrictEqual(D.afterTenantCheck(explain({ foreign_tenant: null }), cause), D.Decision.Refused({ cause }))
  })
})

describe("result columns", () => {
  it("are read by name from text (prepared statements) or from values pg parsed", () => {
    assert.deepStrictEqual(D.appendedColumns(["3", "10", "12"]), {
      version: 3,
      first_position: 10n,
      last_position: 12n
    })
    assert.deepStrictEqual(D.appendedColumns([3, 10n, null]), { version: 3, first_position: 10n, last_position: null })
    assert.deepStrictEqual(D.headColumns(["2", "3", "t", "f"]), {
      head_version: 2,
      last_version: 3,
      stored: true,
      foreign_tenant: false
    })
    assert.deepStrictEqual(D.headColumns([0, 0, false, true]), {
      head_version: 0,
      last_version: 0,
      stored: false,
      foreign_tenant: true
    })
    assert.deepStrictEqual(
      D.explainColumns([
        "5",
        "6",
        "2",
        "t",
        "1",
        "1",
        "3",
        "7",
        "8",
        "0b5c0c8e-1f7e-4a3b-9a59-1c2f6f1a8d41",
        "f",
        null
      ]),
      {
        head_version: 5,
        last_version: 6,
        found: 2,
        same_stream: true,
        base_min: 1,
        base_max: 1,
        replay_version: 3,
        first_position: 7n,
        last_position: 8n,
        duplicate_event_id: "0b5c0c8e-1f7e-4a3b-9a59-1c2f6f1a8d41",
        foreign_tenant: false,
        foreign_event_id: null
      }
    )
    assert.throws(() => D.headColumns(["two", "0", "t", "f"]), /head_version/)
    assert.throws(() => D.headColumns(["2", "0", "maybe", "f"]), /stored/)
  })
})

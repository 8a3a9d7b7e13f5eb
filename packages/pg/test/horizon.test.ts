/**
 * The subscription watcher's rules (internal/horizon.ts), without a database:
 * a model of writers taking positions and ending in any order, observed at random
 * moments as `eventfold_log_horizon()` would report them.
 */
import { assert, describe, it } from "@effect/vitest"
import * as FastCheck from "effect/FastCheck"
import * as W from "../src/internal/horizon.js"

const settings: W.Settings = { settleMillis: 5, pollMillis: 1000, stallMillis: 100 }

/** A step of the model: a writer takes the next position, a writer ends, or the watcher refreshes. */
type Step =
  | { readonly _tag: "Take"; readonly writer: number }
  | { readonly _tag: "End"; readonly writer: number }
  | { readonly _tag: "Refresh"; readonly elapsed: number }

const step: FastCheck.Arbitrary<Step> = FastCheck.oneof(
  // Three writers: states where every writer of an earlier refresh has ended come often.
  FastCheck.record({ _tag: FastCheck.constant("Take" as const), writer: FastCheck.integer({ min: 0, max: 2 }) }),
  FastCheck.record({ _tag: FastCheck.constant("End" as const), writer: FastCheck.integer({ min: 0, max: 2 }) }),
  FastCheck.record({ _tag: FastCheck.constant("Refresh" as const), elapsed: FastCheck.integer({ min: 0, max: 80 }) })
)

/** Runs the model; calls `check` after every refresh with the state and the model's facts. */
const simulate = (
  steps: ReadonlyArray<Step>,
  check: (
    state: W.State,
    facts: {
      readonly last: bigint
      readonly running: ReadonlyMap<number, bigint>
      readonly before: W.State
      readonly report: W.Report
      readonly now: number
    }
  ) => void
) => {
  let last = 0n
  let now = 1_000
  let state = W.initialState
  // Each running writer's transaction, and the lowest position it took.
  const running = new Map<number, { readonly id: string; readonly lowest: bigint }>()
  let transactions = 0
  for (const s of steps) {
    switch (s._tag) {
      case "Take": {
        last += 1n
        const current = running.get(s.writer)
        if (current === undefined) running.set(s.writer, { id: `tx${transactions++}`, lowest: last })
        break
      }
      case "End":
        running.delete(s.writer)
        break
      case "Refresh": {
        now += s.elapsed
        const writers = new Map([...running.values()].map((t) => [t.id, 1] as const))
        const before = state
        const result = W.observe(state, last, writers, now, settings)
        state = result.state
        check(state, {
          last,
          running: new Map([...running].map(([w, t]) => [w, t.lowest])),
          before,
          report: result.report,
          now
        })
      }
    }
  }
}

describe("the settled horizon", () => {
  it.prop(
    "never passes a position a running transaction took, and never goes back",
    [FastCheck.array(step, { maxLength: 200 })],
    ([steps]) => {
      simulate(steps, (state, { before, last, running }) => {
        for (const lowest of running.values()) assert.isBelow(Number(state.settled), Number(lowest))
        assert.isAtLeast(Number(state.settled), Number(before.settled))
        assert.isAtMost(Number(state.settled), Number(last))
      })
    }
  )

  it.prop(
    "waiting entries lie past the horizon, each past the one before: a refresh that saw nothing new adds none",
    [FastCheck.array(step, { maxLength: 200 })],
    ([steps]) => {
      simulate(steps, (state, { before }) => {
        let floor = state.settled
        for (const entry of state.pending) {
          assert.isAbove(Number(entry.last), Number(floor))
          floor = entry.last
        }
        assert.isAtMost(state.pending.length, before.pending.length + 1)
      })
    }
  )

  it.prop(
    "with no transaction running, everything taken is settled and nothing waits",
    [FastCheck.array(step, { maxLength: 200 })],
    ([steps]) => {
      simulate(steps, (state, { last, running }) => {
        if (running.size === 0) {
          assert.strictEqual(state.settled, last)
          assert.strictEqual(state.pending.length, 0)
        }
      })
    }
  )

  it.prop(
    "once every transaction that was running at a refresh has ended, the next refresh settles what it saw",
    [FastCheck.array(step, { maxLength: 200 })],
    ([steps]) => {
      // After a refresh that saw `last` with writers W, a later refresh that finds none of W
      // running settles at least `last`.
      const seen: Array<{ readonly last: bigint; readonly writers: ReadonlySet<number> }> = []
      simulate(steps, (state, { last, running }) => {
        for (const earlier of seen) {
          if ([...earlier.writers].every((w) => !running.has(w))) {
            assert.isAtLeast(Number(state.settled), Number(earlier.last))
          }
        }
        seen.push({ last, writers: new Set(running.keys()) })
      })
    },
    { fastCheck: { numRuns: 500 } }
  )

  it.prop(
    "a stall is reported once the oldest wait passes the threshold, again at most every threshold, and its end once",
    [FastCheck.array(step, { maxLength: 200 })],
    ([steps]) => {
      simulate(steps, (state, { before, now, report }) => {
        const oldest = state.pending[0]
        const held = oldest === undefined ? 0 : now - oldest.at
        switch (report._tag) {
          case "Stalled":
            assert.isAtLeast(report.heldMillis, settings.stallMillis)
            assert.isTrue(before.stalled === undefined || now - before.stalled.reportedAt >= settings.stallMillis)
            assert.deepStrictEqual(state.stalled, { since: report.oldest.at, reportedAt: now })
            break
          case "Resumed":
            assert.isDefined(before.stalled)
            assert.isUndefined(state.stalled)
            assert.isBelow(held, settings.stallMillis)
            break
          case "None":
            if (held >= settings.stallMillis) assert.isDefined(state.stalled)
            else assert.isUndefined(state.stalled)
        }
      })
    }
  )
})

describe("the rules, by example", () => {
  const writers = (...ids: ReadonlyArray<string>) => new Map(ids.map((id) => [id, 1] as const))
  const observe = (state: W.State, last: bigint, running: ReadonlyMap<string, number>, now: number) =>
    W.observe(state, last, running, now, settings)

  it("a position waits for the writers running when it was seen, not for later ones", () => {
    assert.strictEqual(W.initialState.settled, -1n)
    let s = observe(W.initialState, 1n, writers("a"), 1000).state
    assert.strictEqual(s.settled, -1n)
    assert.deepStrictEqual(
      s.pending.map((p) => p.last),
      [1n]
    )
    // a ended, b runs: 1 is settled, 2 waits for b.
    s = observe(s, 2n, writers("b"), 1010).state
    assert.strictEqual(s.settled, 1n)
    assert.deepStrictEqual(
      s.pending.map((p) => p.last),
      [2n]
    )
    // c started too; b still runs: nothing moves, 3 waits for b and c.
    s = observe(s, 3n, writers("b", "c"), 1020).state
    assert.strictEqual(s.settled, 1n)
    assert.deepStrictEqual(
      s.pending.map((p) => [p.last, [...p.writers.keys()]]),
      [
        [2n, ["b"]],
        [3n, ["b", "c"]]
      ]
    )
    // b ended, c runs: 2 is settled (its writers ended), 3 still waits for c.
    s = observe(s, 3n, writers("c"), 1030).state
    assert.strictEqual(s.settled, 2n)
    // Nobody runs: all is settled.
    s = observe(s, 4n, writers(), 1040).state
    assert.strictEqual(s.settled, 4n)
    assert.strictEqual(s.pending.length, 0)
    // The horizon never goes back, even if the sequence seems to.
    assert.strictEqual(observe(s, 3n, writers(), 1050).state.settled, 4n)
  })

  it("the newest entry whose writers all ended settles everything before it too", () => {
    let s = observe(W.initialState, 1n, writers("a"), 1000).state
    s = observe(s, 2n, writers("a", "b"), 1010).state
    s = observe(s, 3n, writers("b", "c"), 1020).state
    // a and b ended, c runs: entries 1 and 2 are done; 3 waits.
    s = observe(s, 4n, writers("c", "d"), 1030).state
    assert.strictEqual(s.settled, 2n)
    assert.deepStrictEqual(
      s.pending.map((p) => p.last),
      [3n, 4n]
    )
  })

  it("past 1024 waiting entries, the oldest two merge: later, never wrong", () => {
    let s = W.initialState
    for (let i = 1; i <= 1030; i++) s = observe(s, BigInt(i), writers("long", `w${i}`), 1000 + i).state
    assert.strictEqual(s.pending.length, 1024)
    // The first entry now waits for the writers of the merged ones, and the first one's time.
    assert.strictEqual(s.pending[0]!.at, 1001)
    assert.isTrue(s.pending[0]!.writers.has("w1") && s.pending[0]!.writers.has("w7"))
    assert.strictEqual(s.settled, -1n)
    // Once "long" and w1..w7 ended, everything up to 7 is settled.
    const others = writers(...Array.from({ length: 1030 - 7 }, (_, i) => `w${i + 8}`))
    s = observe(s, 1030n, others, 3000).state
    assert.isAtLeast(Number(s.settled), 7)
  })

  it("three refreshes in a row that see new positions, each soon after the last, make the log busy", () => {
    let s = W.initialState
    s = observe(s, 1n, writers(), 1000).state
    assert.strictEqual(s.moving, 1)
    s = observe(s, 2n, writers(), 1000 + 4 * settings.settleMillis).state
    assert.strictEqual(s.moving, 2)
    s = observe(s, 3n, writers(), 1000 + 8 * settings.settleMillis).state
    assert.strictEqual(s.moving, 3)
    assert.strictEqual(W.nextDelay(s, 2000, settings), settings.settleMillis)
    // A refresh that sees nothing new: quiet again, and the watcher waits for a wake-up.
    const quiet = observe(s, 3n, writers(), 1000 + 9 * settings.settleMillis).state
    assert.strictEqual(quiet.moving, 0)
    assert.isUndefined(W.nextDelay(quiet, 2000, settings))
    // New positions after a long gap start counting again.
    const late = observe(s, 4n, writers(), 1000 + 8 * settings.settleMillis + 4 * settings.settleMillis + 1).state
    assert.strictEqual(late.moving, 1)
    // Two moves are not yet busy.
    assert.isUndefined(W.nextDelay({ ...late, moving: 2 }, 2000, settings))
  })

  it("a wait's delay starts at the settle interval, grows to a tenth of the wait, and stops at the poll interval", () => {
    const waiting = { ...W.initialState, pending: [{ last: 5n, writers: writers("a"), at: 1000 }] }
    assert.strictEqual(W.nextDelay(waiting, 1000, settings), settings.settleMillis)
    assert.strictEqual(W.nextDelay(waiting, 1000 + 700, settings), 70)
    assert.strictEqual(W.nextDelay(waiting, 1000 + 100_000, settings), settings.pollMillis)
  })

  it("a stall is reported at the threshold, again each threshold while it lasts, and its end once", () => {
    let s = observe(W.initialState, 1n, writers("a"), 1000).state
    let r = observe(s, 1n, writers("a"), 1000 + settings.stallMillis - 1)
    assert.strictEqual(r.report._tag, "None")
    assert.isUndefined(r.state.stalled)
    r = observe(r.state, 1n, writers("a"), 1000 + settings.stallMillis)
    assert.deepInclude(r.report, { _tag: "Stalled", heldMillis: settings.stallMillis })
    assert.deepStrictEqual(r.state.stalled, { since: 1000, reportedAt: 1000 + settings.stallMillis })
    s = r.state
    r = observe(s, 1n, writers("a"), 1000 + 2 * settings.stallMillis - 1)
    assert.strictEqual(r.report._tag, "None")
    assert.deepStrictEqual(r.state.stalled, s.stalled)
    r = observe(r.state, 1n, writers("a"), 1000 + 2 * settings.stallMillis)
    assert.strictEqual(r.report._tag, "Stalled")
    r = observe(r.state, 1n, writers(), 1000 + 2 * settings.stallMillis + 1)
    assert.deepStrictEqual(r.report, { _tag: "Resumed", since: 1000 })
    assert.strictEqual(r.heldMillis, 0)
    assert.isUndefined(r.state.stalled)
    // The end of a stall changes nothing else: the horizon and what was seen stay.
    assert.deepInclude(r.state, {
      settled: 1n,
      pending: [],
      lastSeen: 1n,
      lastRefreshAt: 1000 + 2 * settings.stallMillis + 1
    })
    assert.strictEqual(observe(r.state, 1n, writers(), 5000).report._tag, "None")
  })
})

describe("when to refresh and whether to wait for notifications", () => {
  it.prop(
    "while positions wait, the delay grows with the wait, between the settle and the poll interval",
    [FastCheck.array(step, { maxLength: 200 }), FastCheck.integer({ min: 0, max: 100_000 })],
    ([steps, later]) => {
      simulate(steps, (state, { now }) => {
        const delay = W.nextDelay(state, now + later, settings)
        if (state.pending.length > 0) {
          assert.isDefined(delay)
          assert.isAtLeast(delay!, settings.settleMillis)
          assert.isAtMost(delay!, settings.pollMillis)
        } else if (delay !== undefined) {
          // Nothing waits: a delay only while the log keeps moving, and then the shortest.
          assert.strictEqual(delay, settings.settleMillis)
        }
      })
    }
  )

  it("a watcher that does not listen never asks for notifications; one that listens does when all is quiet", () => {
    assert.isFalse(W.waitsForNotifications(W.initialState, 0, settings))
    const listening = { ...W.initialState, listenerPid: 42 }
    assert.isTrue(W.waitsForNotifications(listening, 0, settings))
    // A log that keeps moving is polled instead.
    assert.isFalse(W.waitsForNotifications({ ...listening, moving: 3 }, 0, settings))
    // Something pending for long: notifications again (a commit wakes the watcher at once).
    const pending = { ...listening, pending: [{ last: 5n, writers: new Map([["tx", 1]]), at: 1000 }] }
    assert.isFalse(W.waitsForNotifications(pending, 1000 + 40 * settings.settleMillis, settings))
    assert.isTrue(W.waitsForNotifications(pending, 1000 + 40 * settings.settleMillis + 1, settings))
  })
})

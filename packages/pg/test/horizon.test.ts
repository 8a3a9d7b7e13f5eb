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
  FastCheck.record({ _tag: FastCheck.constant("Take" as const), writer: FastCheck.integer({ min: 0, max: 5 }) }),
  FastCheck.record({ _tag: FastCheck.constant("End" as const), writer: FastCheck.integer({ min: 0, max: 5 }) }),
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
    }
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
    const pending = { ...listening, pending: [{ last: 5n, writers: new Map([["tx", 1]]), at: 0 }] }
    assert.isFalse(W.waitsForNotifications(pending, 40 * settings.settleMillis, settings))
    assert.isTrue(W.waitsForNotifications(pending, 40 * settings.settleMillis + 1, settings))
  })
})

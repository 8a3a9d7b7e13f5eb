/**
 * A rebuild's progress: a bar redrawn in place on a terminal (ended by its line whatever
 * ends the rebuild), a plain line per report elsewhere, nothing with --json.
 */
import { assert, describe, it } from "@effect/vitest"
import type { Projection } from "@eventfold/core"
import * as Effect from "effect/Effect"
import { progressReporter } from "../src/internal/progress.js"

const at = (position: bigint, target: bigint): Projection.RebuildProgress => ({
  projection: "order-summary",
  position,
  target,
  eventsProcessed: position,
  elapsedMillis: 1500,
  done: position >= target
})

const run = (options: { readonly quiet: boolean; readonly isTTY: boolean }) =>
  Effect.gen(function* () {
    const written: Array<string> = []
    const reporter = yield* progressReporter(options.quiet, {
      isTTY: options.isTTY,
      write: (text) => written.push(text)
    })
    yield* reporter.report(at(0n, 400n))
    yield* reporter.report(at(100n, 400n))
    yield* reporter.report(at(400n, 400n))
    yield* reporter.end
    return written.join("")
  })

describe("rebuild progress", () => {
  it.effect("on a terminal: one bar redrawn in place, then its line ended", () =>
    Effect.gen(function* () {
      const shown = yield* run({ quiet: false, isTTY: true })
      const frames = shown.split("\r\x1b[2K").filter((frame) => frame !== "")
      assert.strictEqual(frames.length, 3)
      assert.strictEqual(frames[1], `order-summary ${"█".repeat(8)}${"░".repeat(22)} 100/400 (25%), 100 events, 1.5s`)
      assert.isTrue(shown.endsWith(`${"█".repeat(30)} 400/400 (100%), 400 events, 1.5s\n`))
    })
  )

  it.effect("elsewhere: a plain line per report; with --json: nothing", () =>
    Effect.gen(function* () {
      assert.strictEqual(
        yield* run({ quiet: false, isTTY: false }),
        [
          "rebuild order-summary: 0/400 (0%), 0 events, 1.5s",
          "rebuild order-summary: 100/400 (25%), 100 events, 1.5s",
          "rebuild order-summary: 400/400 (100%), 400 events, 1.5s",
          ""
        ].join("\n")
      )
      assert.strictEqual(yield* run({ quiet: true, isTTY: true }), "")
    })
  )

  it.effect("an empty log is done at once", () =>
    Effect.gen(function* () {
      const written: Array<string> = []
      const reporter = yield* progressReporter(false, { isTTY: false, write: (text) => written.push(text) })
      yield* reporter.report(at(0n, 0n))
      assert.deepStrictEqual(written, ["rebuild order-summary: 0/0 (100%), 0 events, 1.5s\n"])
    })
  )
})

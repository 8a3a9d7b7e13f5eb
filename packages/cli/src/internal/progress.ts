/**
 * Progress of a rebuild on stderr (stdout keeps the result): a bar redrawn in place on a
 * terminal, a plain line per report otherwise (a log, CI), nothing with `--json`.
 */
import type * as Projection from "@eventfold/core/Projection"
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import * as Out from "./output.js"

const width = 30

const percent = (p: Projection.RebuildProgress): number =>
  p.target <= 0n ? 100 : Math.min(100, Math.floor(Number((p.position * 100n) / p.target)))

const describe = (p: Projection.RebuildProgress) =>
  `${Out.count(p.position)}/${Out.count(p.target)} (${percent(p)}%), ${Out.count(p.eventsProcessed)} events, ${Out.age(p.elapsedMillis)}`

/** Where progress goes: stderr, or what a test gives. */
export interface ProgressStream {
  readonly isTTY?: boolean | undefined
  readonly write: (text: string) => unknown
}

export const progressReporter = (quiet: boolean, stream: ProgressStream = process.stderr) =>
  Effect.gen(function* () {
    const drawn = yield* Ref.make(false)
    const terminal = stream.isTTY === true
    const write = (text: string) => Effect.sync(() => stream.write(text))
    const report = (p: Projection.RebuildProgress): Effect.Effect<void> => {
      if (quiet) return Effect.void
      if (!terminal) return write(`rebuild ${p.projection}: ${describe(p)}\n`)
      const filled = Math.round((percent(p) * width) / 100)
      const bar = `${"█".repeat(filled)}${"░".repeat(width - filled)}`
      return Effect.zipRight(Ref.set(drawn, true), write(`\r\x1b[2K${p.projection} ${bar} ${describe(p)}`))
    }
    // A bar drawn in place ends with its line, whatever ends the rebuild.
    const end = Effect.flatMap(Ref.get(drawn), (wasDrawn) => (wasDrawn ? write("\n") : Effect.void))
    return { report, end }
  })

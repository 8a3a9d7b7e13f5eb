/**
 * What the parent and a child process say to each other (over the IPC channel),
 * and what a side's runner returns. Kept free of `pg` and Effect imports so that
 * neither side pays for the other's modules.
 */

export type Side = "raw" | "eventfold"
export const SIDES: ReadonlyArray<Side> = ["raw", "eventfold"]

export type Scale = "full" | "quick"

/** Sizes of one workload (appends, writers, stream length...). */
export type Params = Readonly<Record<string, number>>

/** Facts the seeding left in the database that a runner needs (e.g. the stream id of W4). */
export type Seed = Readonly<Record<string, string | number>>

export interface RunContext {
  /** The fresh database of this run. */
  readonly url: string
  readonly params: Params
  readonly seed: Seed
}

/** What a runner measured. Timing covers the workload only: connections are opened before. */
export interface Measurement {
  /** Events written or read (for W6: successful appends). */
  readonly events: number
  /** Timed operations (appends, loads, pages of 1,000 events). */
  readonly operations: number
  readonly elapsedMs: number
  /** Latency of each timed operation, in milliseconds. */
  readonly latencies: { readonly p50: number; readonly p99: number; readonly count: number }
  /** CPU time (user + system) of the whole process during the timed part, ms. */
  readonly cpuMs: number
  /** Workload-specific counts that the parent verifies (successes, conflicts, checksums...). */
  readonly counters: Readonly<Record<string, number>>
}

export type Runner = (context: RunContext) => Promise<Measurement>

export interface RunResult extends Measurement {
  /** Resident set size after modules were loaded and connections opened, MB. */
  readonly baselineRssMb: number
  /** Peak resident set size of the child process (`process.resourceUsage().maxRSS`), MB. */
  readonly peakRssMb: number
}

export type ParentMessage = {
  readonly _tag: "run"
  readonly workload: string
  readonly context: RunContext
  /** Write a V8 CPU profile of the run (not of module loading) to this file. */
  readonly profile?: string
}

export type ChildMessage =
  | { readonly _tag: "ready" }
  | { readonly _tag: "result"; readonly result: RunResult }
  | { readonly _tag: "error"; readonly message: string }

/** Writer `part`'s share of `total` operations split among `parts` writers. */
export const share = (total: number, parts: number, part: number): number =>
  Math.floor(total / parts) + (part < total % parts ? 1 : 0)

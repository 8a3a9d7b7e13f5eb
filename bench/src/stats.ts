/** Small numeric helpers shared by the parent and the children. */

/** Nearest-rank percentile of unsorted samples; NaN when empty. */
export const percentile = (samples: ReadonlyArray<number>, p: number): number => {
  if (samples.length === 0) return Number.NaN
  const sorted = Float64Array.from(samples).sort()
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[rank] ?? Number.NaN
}

export const median = (values: ReadonlyArray<number>): number => {
  const finite = values.filter(Number.isFinite)
  if (finite.length === 0) return Number.NaN
  const sorted = [...finite].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** Records operation latencies in milliseconds. */
export class Latencies {
  readonly samples: Array<number> = []
  time(start: number): void {
    this.samples.push(performance.now() - start)
  }
  summary(): { readonly p50: number; readonly p99: number; readonly count: number } {
    return { p50: percentile(this.samples, 50), p99: percentile(this.samples, 99), count: this.samples.length }
  }
}

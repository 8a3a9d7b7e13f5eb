/**
 * Reading metrics in tests: whether a series was ever recorded (a gauge reads 0 whether
 * it was set to 0 or never touched), and a clock ahead of the live one, for ages measured
 * against timestamps a database wrote.
 */

import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"

/** Whether the registry holds a series of `name` carrying every one of `tags`. */
export const recorded = (name: string, tags: Readonly<Record<string, string>>): Effect.Effect<boolean> =>
  Effect.map(Metric.snapshot, (pairs) =>
    pairs.some(
      (pair) =>
        pair.metricKey.name === name &&
        Object.entries(tags).every(([key, value]) =>
          pair.metricKey.tags.some((label) => label.key === key && label.value === value)
        )
    )
  )

/** The live clock, `millis` ahead: sleeps are the live clock's. */
export const clockAhead = (millis: number): Clock.Clock => {
  const live = Clock.make()
  const nanos = BigInt(millis) * 1_000_000n
  return {
    [Clock.ClockTypeId]: Clock.ClockTypeId,
    unsafeCurrentTimeMillis: () => live.unsafeCurrentTimeMillis() + millis,
    currentTimeMillis: Effect.sync(() => live.unsafeCurrentTimeMillis() + millis),
    unsafeCurrentTimeNanos: () => live.unsafeCurrentTimeNanos() + nanos,
    currentTimeNanos: Effect.sync(() => live.unsafeCurrentTimeNanos() + nanos),
    sleep: (duration) => live.sleep(duration)
  }
}

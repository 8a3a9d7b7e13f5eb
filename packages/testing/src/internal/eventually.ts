/**
 * Waiting for a condition instead of for time: `eventually` repeats an effect on the
 * live clock until its value satisfies `done`, and fails with a message naming what
 * it waited for (and the last value seen) when the bound runs out. The bound is a
 * safety net against hangs, generous on purpose: a loaded machine makes conditions
 * slow to arrive, never wrong.
 */

import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"

/** What `eventually` waited for, when it ran out of time. */
export class EventuallyTimeout extends Error {
  override readonly name = "EventuallyTimeout"
}

const describe = (value: unknown): string => {
  try {
    const text = JSON.stringify(value, (_, v: unknown) => (typeof v === "bigint" ? `${v}n` : v))
    return text === undefined ? String(value) : text.length > 300 ? `${text.slice(0, 300)}...` : text
  } catch {
    return String(value)
  }
}

/** Repeats `effect` until `done` holds, returning the value that satisfied it (or fails after `timeout`). */
export const eventually = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  done: (a: A) => boolean,
  options: {
    readonly every?: `${number} millis`
    readonly timeout?: `${number} seconds`
    /** Says what is awaited, for the failure message. */
    readonly what?: string
  } = {}
): Effect.Effect<A, E | EventuallyTimeout, R> =>
  Effect.suspend(() => {
    let last: { readonly value: A } | undefined
    const timeout = options.timeout ?? "20 seconds"
    return effect.pipe(
      Effect.tap((value) => {
        last = { value }
      }),
      Effect.repeat({
        schedule: Schedule.identity<A>().pipe(Schedule.zipLeft(Schedule.spaced(options.every ?? "25 millis"))),
        until: done
      }),
      Effect.timeoutFail({
        duration: timeout,
        onTimeout: () =>
          new EventuallyTimeout(
            `${options.what ?? "condition"} not reached within ${timeout}; last value: ${last === undefined ? "none" : describe(last.value)}`
          )
      })
    )
  })

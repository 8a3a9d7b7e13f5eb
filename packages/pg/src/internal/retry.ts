import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"

/**
 * `effect`, and when it fails with an error that `retryable` accepts, again as
 * `schedule` says (`Effect.retry`'s semantics: the schedule gets each failure and
 * decides the delay, or gives up), with the schedule set up only once a first attempt
 * has failed: appends and reads are hot paths, and almost every one succeeds at once.
 */
export const retryFailures = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  schedule: Schedule.Schedule<unknown, E>,
  retryable: (error: E) => boolean
): Effect.Effect<A, E, R> =>
  Effect.catchAll(effect, (first) =>
    retryable(first)
      ? Effect.flatMap(Schedule.driver(schedule), (driver) => {
          const again = (error: E): Effect.Effect<A, E, R> =>
            Effect.matchEffect(driver.next(error), {
              onFailure: () => Effect.fail(error),
              onSuccess: () => Effect.catchAll(effect, (next) => (retryable(next) ? again(next) : Effect.fail(next)))
            })
          return again(first)
        })
      : Effect.fail(first)
  )

/**
 * Fails a test when anything reaches the process as an uncaught error while it
 * runs: an `uncaughtException` (an 'error' event nobody listens to, such as pg's
 * "Connection terminated unexpectedly" on a client checked out of a pool) or an
 * `unhandledRejection`.
 *
 * vitest listens to both events too, so such an error does not kill the test
 * process: without a guard it is printed as an "unhandled error" after the run and
 * attributed to no test. A guard makes it the failure of the test during which it
 * happened, with the error itself (and its stack and code) in the message. While a
 * guard is installed vitest stays silent about these errors (it leaves them to
 * another listener when there is one), so the guard must fail the test: it does.
 *
 * ```ts
 * it.live("survives a dropped connection", () =>
 *   processGuard.guarded(Effect.gen(function* () { ... })))
 * ```
 */

import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"

/** What reached a process-level listener. */
export interface Caught {
  readonly event: "uncaughtException" | "unhandledRejection"
  readonly error: unknown
  readonly at: Date
}

/** Something reached the process as an uncaught error while the guard was installed. */
export class UncaughtError extends Schema.TaggedError<UncaughtError>()("UncaughtError", {
  message: Schema.String,
  errors: Schema.Array(Schema.Defect)
}) {}

/** An installed guard. */
export interface Guard {
  /** Everything caught so far, in order. */
  readonly caught: Effect.Effect<ReadonlyArray<Caught>>
  /** Fails with everything caught so far, if anything was. */
  readonly check: Effect.Effect<void, UncaughtError>
  /** Fails as soon as the first error is caught (never succeeds): race a test against it. */
  readonly failed: Effect.Effect<never, UncaughtError>
}

const describe = (caught: Caught): string => {
  const { error } = caught
  const text =
    error instanceof Error
      ? `${error.stack ?? `${error.name}: ${error.message}`}${
          (error as NodeJS.ErrnoException).code === undefined ? "" : ` (code ${(error as NodeJS.ErrnoException).code})`
        }`
      : Cause.isCause(error)
        ? Cause.pretty(error)
        : String(error)
  return `${caught.event} at ${caught.at.toISOString()}: ${text}`
}

const toError = (caught: ReadonlyArray<Caught>): UncaughtError =>
  new UncaughtError({
    message: `${caught.length} uncaught error(s) reached the process during the test:\n${caught.map(describe).join("\n")}`,
    errors: caught.map((c) => c.error)
  })

/** Installs the listeners for the life of the scope. */
export const make: Effect.Effect<Guard, never, Scope.Scope> = Effect.gen(function* () {
  const caught: Array<Caught> = []
  const first = yield* Deferred.make<never, UncaughtError>()
  const record = (event: Caught["event"]) => (error: unknown) => {
    const entry: Caught = { event, error, at: new Date() }
    caught.push(entry)
    Deferred.unsafeDone(first, Exit.fail(toError([entry])))
  }
  const onException = record("uncaughtException")
  const onRejection = record("unhandledRejection")
  yield* Effect.acquireRelease(
    Effect.sync(() => {
      process.on("uncaughtException", onException)
      process.on("unhandledRejection", onRejection)
    }),
    () =>
      Effect.sync(() => {
        process.off("uncaughtException", onException)
        process.off("unhandledRejection", onRejection)
      })
  )
  return {
    caught: Effect.sync(() => [...caught]),
    check: Effect.suspend(() => (caught.length === 0 ? Effect.void : Effect.fail(toError(caught)))),
    failed: Deferred.await(first)
  }
})

/**
 * Runs `effect` under a guard: it fails with `UncaughtError` as soon as an
 * uncaught error reaches the process (interrupting `effect`), or at the end if
 * one arrived while `effect` was finishing or releasing its resources (it runs in
 * a scope of its own, closed before the guard is checked). An uncaught error wins
 * over the effect's own failure, which is then named in the message: the first
 * is usually the cause of the second.
 */
export const guarded = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | UncaughtError, R> =>
  Effect.scoped(
    Effect.gen(function* () {
      const guard = yield* make
      const exit = yield* Effect.raceFirst(effect, guard.failed).pipe(Effect.scoped, Effect.exit)
      const caught = yield* guard.caught
      if (caught.length === 0) return yield* exit
      const own = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
      return yield* Effect.fail(
        own instanceof UncaughtError
          ? toError(caught)
          : new UncaughtError({
              message: `${toError(caught).message}${
                own === undefined ? "" : `\nThe test also failed: ${own instanceof Error ? own.message : String(own)}`
              }`,
              errors: caught.map((c) => c.error)
            })
      )
    })
  )

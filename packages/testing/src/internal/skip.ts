/**
 * A conformance test that cannot check anything on a backend (memory has no
 * transactions) must say so: it is reported as skipped, never as passed.
 */

import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type { TestContext } from "vitest"

/**
 * The value of `option`; when it is none, the running test is marked skipped with
 * `reason` (vitest's `ctx.skip`, which aborts the test body).
 */
export const orSkip = <A>(ctx: TestContext, option: Option.Option<A>, reason: string): Effect.Effect<A> =>
  Option.match(option, {
    onNone: () => Effect.sync(() => ctx.skip(reason)),
    onSome: Effect.succeed
  })

/**
 * The specification's own behaviour: it passes what holds and fails, with an
 * AssertionError carrying actual and expected, what does not.
 */
import { AssertionError } from "node:assert"
import { assert, describe, it } from "@effect/vitest"
import { Aggregate, AggregateRepository, type Errors } from "@eventfold/core"
import { AggregateSpecification } from "@eventfold/testing"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import {
  Account,
  AccountError,
  AccountOpened,
  deposit,
  MoneyDeposited,
  MoneyWithdrawn,
  open,
  withdraw,
  withdrawFrom
} from "./Bank.js"

const given = AggregateSpecification.make(Account)
const opened = AccountOpened.make({ owner: "ada" })

/** The defect an effect died with (the test fails if it did not die). */
const defect = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.flatMap(Effect.exit(effect), (exit) =>
    Exit.isFailure(exit)
      ? Effect.succeed(Option.getOrThrow(Cause.dieOption(exit.cause)))
      : Effect.dieMessage("expected the specification to fail")
  )

describe("AggregateSpecification", () => {
  describe("with an Aggregate.command", () => {
    it.effect("thenEvents: the events appended, read back, and what the stream folds into", () =>
      Effect.gen(function* () {
        const outcome = yield* given([opened, MoneyDeposited.make({ amount: 50 })])
          .when(withdraw({ amount: 20 }))
          .thenEvents([MoneyWithdrawn.make({ amount: 20 })])
        assert.deepStrictEqual(outcome.state, { owner: "ada", balance: 30 })
        assert.strictEqual(outcome.version, 3)
        assert.deepStrictEqual(outcome.events, [MoneyWithdrawn.make({ amount: 20 })])
      })
    )

    it.effect("given nothing, the command runs on a new aggregate (version 0)", () =>
      Effect.gen(function* () {
        const outcome = yield* given([])
          .when(open({ owner: "ada" }))
          .thenEvents([opened])
        assert.strictEqual(outcome.version, 1)
        const refused = yield* given([opened])
          .when(open({ owner: "bob" }))
          .thenFails()
        assert.deepStrictEqual(refused, new AccountError({ reason: "already open" }))
      })
    )

    it.effect("a command that decides nothing: thenEvents([])", () =>
      Effect.gen(function* () {
        const idle = Aggregate.command(Account, () => Effect.succeed([]))
        const outcome = yield* given([opened]).when(idle(undefined)).thenEvents([])
        assert.deepStrictEqual(outcome, { events: [], state: { owner: "ada", balance: 0 }, version: 1 })
        const error = yield* defect(
          given([opened])
            .when(idle(undefined))
            .thenEvents([MoneyDeposited.make({ amount: 1 })])
        )
        assert.instanceOf(error, AssertionError)
        assert.deepStrictEqual((error as AssertionError).actual, [])
      })
    )

    it.effect("thenEvents fails on other events, naming both", () =>
      Effect.gen(function* () {
        const error = yield* defect(
          given([opened, MoneyDeposited.make({ amount: 50 })])
            .when(withdraw({ amount: 20 }))
            .thenEvents([MoneyWithdrawn.make({ amount: 25 })])
        )
        assert.instanceOf(error, AssertionError)
        assert.deepStrictEqual((error as AssertionError).actual, [MoneyWithdrawn.make({ amount: 20 })])
        assert.deepStrictEqual((error as AssertionError).expected, [MoneyWithdrawn.make({ amount: 25 })])
        // Fewer events than expected is not a match either.
        const fewer = yield* defect(
          given([opened, MoneyDeposited.make({ amount: 50 })])
            .when(withdraw({ amount: 20 }))
            .thenEvents([MoneyWithdrawn.make({ amount: 20 }), MoneyWithdrawn.make({ amount: 20 })])
        )
        assert.instanceOf(fewer, AssertionError)
      })
    )

    it.effect("thenEvents fails when the command fails, with its error", () =>
      Effect.gen(function* () {
        const error = yield* defect(
          given([opened])
            .when(withdraw({ amount: 20 }))
            .thenEvents([])
        )
        assert.instanceOf(error, AssertionError)
        assert.include((error as AssertionError).message, "insufficient funds")
        assert.deepStrictEqual((error as AssertionError).actual, new AccountError({ reason: "insufficient funds" }))
      })
    )

    it.effect("thenFails: the typed error, equal to the expected one when given", () =>
      Effect.gen(function* () {
        const error = yield* given([opened])
          .when(withdraw({ amount: 20 }))
          .thenFails(new AccountError({ reason: "insufficient funds" }))
        assert.strictEqual(error.reason, "insufficient funds")
        const other = yield* defect(
          given([opened])
            .when(withdraw({ amount: 20 }))
            .thenFails(new AccountError({ reason: "account frozen" }))
        )
        assert.instanceOf(other, AssertionError)
        assert.deepStrictEqual((other as AssertionError).expected, new AccountError({ reason: "account frozen" }))
      })
    )

    it.effect("thenFails fails when the command succeeds", () =>
      Effect.gen(function* () {
        const error = yield* defect(
          given([opened, MoneyDeposited.make({ amount: 50 })])
            .when(withdraw({ amount: 20 }))
            .thenFails()
        )
        assert.instanceOf(error, AssertionError)
        assert.deepStrictEqual((error as AssertionError).actual, [MoneyWithdrawn.make({ amount: 20 })])
      })
    )

    it.effect("given events that the store refuses are a setup error, not an expectation", () =>
      Effect.gen(function* () {
        const error = yield* defect(
          given([MoneyDeposited.make({ amount: Number.NaN })])
            .when(deposit({ amount: 1 }))
            .thenEvents([])
        )
        assert.notInstanceOf(error, AssertionError)
        assert.include(String(error), "the given events could not be appended")
      })
    )
  })

  describe("with a program that uses the EventStore", () => {
    it.effect("thenEvents: what it appended to the stream", () =>
      given([opened, MoneyDeposited.make({ amount: 50 })])
        .when(withdrawFrom(given.id, 20))
        .thenEvents([MoneyWithdrawn.make({ amount: 20 })])
    )

    it.effect("thenFails: its typed errors, the repository's included", () =>
      Effect.gen(function* () {
        const error = yield* given([opened]).when(withdrawFrom(given.id, 20)).thenFails()
        assert.deepStrictEqual(error, new AccountError({ reason: "insufficient funds" }))
        const missing = yield* given([]).when(withdrawFrom(given.id, 20)).thenFails()
        assert.strictEqual(missing._tag, "StreamNotFoundError")
        assert.strictEqual((missing as Errors.StreamNotFoundError).aggregateId, given.id)
      })
    )

    it.effect("each run has a store of its own", () =>
      Effect.gen(function* () {
        const twice = given([opened]).when(
          Effect.gen(function* () {
            const accounts = yield* AggregateRepository.make(Account)
            return yield* accounts.load(given.id).pipe(deposit({ amount: 5 }), Effect.flatMap(accounts.save))
          })
        )
        const first = yield* twice.thenEvents([MoneyDeposited.make({ amount: 5 })])
        const second = yield* twice.thenEvents([MoneyDeposited.make({ amount: 5 })])
        assert.strictEqual(first.state.balance, 5)
        assert.strictEqual(second.version, 2)
      })
    )
  })
})

/**
 * The README's "Testing your application", as it runs: an aggregate's commands given
 * past events, an application service on the memory store, a projection with a
 * handler that fails, and reads typed by their filter.
 */
import { assert, describe, it } from "@effect/vitest"
import { DeadLetterQueue, EventStore, ExpectedVersion } from "@eventfold/core"
import { AggregateSpecification, Testing } from "@eventfold/testing"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import * as Stream from "effect/Stream"
import {
  Account,
  AccountError,
  AccountOpened,
  balances,
  MoneyDeposited,
  MoneyWithdrawn,
  registry,
  withdraw,
  withdrawFrom
} from "./Bank.js"

const given = AggregateSpecification.make(Account)

describe("Account", () => {
  it.effect("withdraws what the balance covers", () =>
    given([AccountOpened.make({ owner: "ada" }), MoneyDeposited.make({ amount: 50 })])
      .when(withdraw({ amount: 30 }))
      .thenEvents([MoneyWithdrawn.make({ amount: 30 })])
  )

  it.effect("refuses to overdraw", () =>
    given([AccountOpened.make({ owner: "ada" })])
      .when(withdraw({ amount: 30 }))
      .thenFails(new AccountError({ reason: "insufficient funds" }))
  )

  it.effect("an application service, through its repository", () =>
    given([AccountOpened.make({ owner: "ada" }), MoneyDeposited.make({ amount: 50 })])
      .when(withdrawFrom(given.id, 20))
      .thenEvents([MoneyWithdrawn.make({ amount: 20 })])
  )
})

describe("balances", () => {
  it.effect("a deposit its handler refuses is dead-lettered after the retries", () =>
    Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      const account = { aggregateId: crypto.randomUUID(), aggregateType: "Account" }
      yield* store.append(
        account,
        [
          { event: MoneyDeposited.make({ amount: 50 }) },
          { event: MoneyDeposited.make({ amount: 1_000_000 }) },
          { event: MoneyWithdrawn.make({ amount: 20 }) }
        ],
        { expectedVersion: ExpectedVersion.noStream }
      )
      const model = yield* Ref.make<ReadonlyMap<string, number>>(new Map())
      // Runs to the head of the log; the retries' waits pass on the TestClock.
      const status = yield* Testing.runProjection(balances(model, 10_000))
      assert.deepInclude(status, { handled: 2, deadLettered: 1 })
      assert.strictEqual((yield* Ref.get(model)).get(account.aggregateId), 30)
      const deadLetters = yield* DeadLetterQueue.DeadLetterQueue
      const [letter] = yield* deadLetters.list({ projection: "balances" })
      assert.strictEqual(letter?.retryCount, 4) // the first attempt and 3 retries
    }).pipe(Effect.provide(Testing.layer({ registry })))
  )
})

describe("typed reads", () => {
  it.effect("a read filtered by event definitions yields those events, typed", () =>
    Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      const account = { aggregateId: crypto.randomUUID(), aggregateType: "Account" }
      yield* store.append(
        account,
        [{ event: MoneyDeposited.make({ amount: 50 }) }, { event: MoneyWithdrawn.make({ amount: 20 }) }],
        { expectedVersion: ExpectedVersion.noStream }
      )
      const withdrawals = yield* Stream.runCollect(store.readAll({ eventTypes: [MoneyWithdrawn] }))
      const withdrawn = Chunk.reduce(withdrawals, 0, (sum, recorded) => sum + recorded.event.amount)
      assert.strictEqual(withdrawn, 20)
    }).pipe(Effect.provide(EventStore.layerMemory({ registry })))
  )
})

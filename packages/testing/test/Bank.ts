/**
 * A small domain for the kit's tests and the README's "Testing your application":
 * bank accounts, their commands, an application service, and a projection of balances.
 */
import { Aggregate, AggregateRepository, Event, EventRegistry, Projection } from "@eventfold/core"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"

export const AccountOpened = Event.make("AccountOpened", { owner: Schema.String })
export const MoneyDeposited = Event.make("MoneyDeposited", { amount: Schema.Number })
export const MoneyWithdrawn = Event.make("MoneyWithdrawn", { amount: Schema.Number })
export const registry = EventRegistry.make(AccountOpened, MoneyDeposited, MoneyWithdrawn)

export interface AccountState {
  readonly owner: string | null
  readonly balance: number
}

export const Account = Aggregate.make({
  type: "Account",
  events: [AccountOpened, MoneyDeposited, MoneyWithdrawn],
  initialState: (): AccountState => ({ owner: null, balance: 0 }),
  evolve: (state, event): AccountState => {
    switch (event._tag) {
      case "AccountOpened":
        return { ...state, owner: event.owner }
      case "MoneyDeposited":
        return { ...state, balance: state.balance + event.amount }
      case "MoneyWithdrawn":
        return { ...state, balance: state.balance - event.amount }
    }
  }
})

export class AccountError extends Data.TaggedError("AccountError")<{ readonly reason: string }> {
  override get message(): string {
    return this.reason
  }
}

export const open = Aggregate.command(Account, (_state, input: { owner: string }, root) =>
  root.version > 0
    ? Effect.fail(new AccountError({ reason: "already open" }))
    : Effect.succeed([AccountOpened.make({ owner: input.owner })])
)

export const withdraw = Aggregate.command(Account, (state, input: { amount: number }) =>
  state.balance < input.amount
    ? Effect.fail(new AccountError({ reason: "insufficient funds" }))
    : Effect.succeed([MoneyWithdrawn.make({ amount: input.amount })])
)

export const deposit = Aggregate.command(Account, (_state, input: { amount: number }) =>
  Effect.succeed([MoneyDeposited.make({ amount: input.amount })])
)

/** An application service: loads the account, withdraws, saves. */
export const withdrawFrom = (accountId: string, amount: number) =>
  Effect.gen(function* () {
    const accounts = yield* AggregateRepository.make(Account)
    return yield* accounts.load(accountId).pipe(withdraw({ amount }), Effect.flatMap(accounts.save))
  })

/** A read model of balances, kept in a Ref; deposits above `limit` fail, to show dead letters. */
export const balances = (model: Ref.Ref<ReadonlyMap<string, number>>, limit = Number.POSITIVE_INFINITY) =>
  Projection.make({
    name: "balances",
    handlers: [
      Projection.on(MoneyDeposited, (e) =>
        e.event.amount > limit
          ? Effect.fail(new AccountError({ reason: `deposit of ${e.event.amount} flagged for review` }))
          : Ref.update(model, (m) => new Map(m).set(e.aggregateId, (m.get(e.aggregateId) ?? 0) + e.event.amount))
      ),
      Projection.on(MoneyWithdrawn, (e) =>
        Ref.update(model, (m) => new Map(m).set(e.aggregateId, (m.get(e.aggregateId) ?? 0) - e.event.amount))
      )
    ]
  })

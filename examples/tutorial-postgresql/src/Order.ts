/**
 * The spec's Order aggregate: events defined with Schema, state folded by `evolve`,
 * and two commands that enforce its invariants.
 */
import { Aggregate, Event, EventRegistry } from "@eventfold/core"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"

// Events: the fields are the stored payload, verbatim (payload->>'customer_id').
export const OrderCreated = Event.make("OrderCreated", { customer_id: Schema.String, total: Schema.Number })
export const OrderShipped = Event.make("OrderShipped", { tracking_number: Schema.String })

export const registry = EventRegistry.make(OrderCreated, OrderShipped)

export interface OrderState {
  readonly orderId: string
  readonly customerId: string | null
  readonly total: number
  readonly status: "draft" | "created" | "shipped"
  readonly trackingNumber: string | null
}

export const Order = Aggregate.make({
  type: "Order",
  events: [OrderCreated, OrderShipped],
  initialState: (orderId): OrderState => ({
    orderId,
    customerId: null,
    total: 0,
    status: "draft",
    trackingNumber: null
  }),
  evolve: (state, event): OrderState => {
    switch (event._tag) {
      case "OrderCreated":
        return { ...state, customerId: event.customer_id, total: event.total, status: "created" }
      case "OrderShipped":
        return { ...state, status: "shipped", trackingNumber: event.tracking_number }
    }
  }
})

export class OrderError extends Data.TaggedError("OrderError")<{ readonly message: string }> {}

export const createOrder = Aggregate.command(Order, (_state, input: { customerId: string; total: number }, root) =>
  root.version > 0
    ? Effect.fail(new OrderError({ message: "Order already exists" }))
    : Effect.succeed([OrderCreated.make({ customer_id: input.customerId, total: input.total })])
)

export const shipOrder = Aggregate.command(Order, (state, input: { trackingNumber: string }) =>
  state.status !== "created"
    ? Effect.fail(new OrderError({ message: "Cannot ship order in current state" }))
    : Effect.succeed([OrderShipped.make({ tracking_number: input.trackingNumber })])
)

/**
 * The order events the example appends: their fields are the stored payload, and
 * the body of the JetStream message.
 */
import { Event, EventRegistry } from "@eventfold/core"
import * as Schema from "effect/Schema"

export const OrderPlaced = Event.make("OrderPlaced", { customer_id: Schema.String, total: Schema.Number })
export const ItemAdded = Event.make("ItemAdded", { sku: Schema.String, quantity: Schema.Int })
export const OrderShipped = Event.make("OrderShipped", { tracking_number: Schema.String })

export const registry = EventRegistry.make(OrderPlaced, ItemAdded, OrderShipped)

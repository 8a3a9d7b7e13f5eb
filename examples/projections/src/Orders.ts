/**
 * The orders of the example: three events, and the order-summary read model kept
 * from them in a PostgreSQL table by a projection.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Event, EventRegistry, Projection } from "@eventfold/core"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"

export const OrderPlaced = Event.make("OrderPlaced", {
  customer_id: Schema.String,
  total: Schema.Number
})
export const OrderShipped = Event.make("OrderShipped", { tracking_number: Schema.String })
export const OrderCancelled = Event.make("OrderCancelled", { reason: Schema.String })

export const registry = EventRegistry.make(OrderPlaced, OrderShipped, OrderCancelled)

/** The read model: one row per order. */
export const createTable = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) => sql`CREATE TABLE IF NOT EXISTS order_summary (
    order_id UUID PRIMARY KEY,
    customer_id TEXT NOT NULL,
    total NUMERIC(12, 2) NOT NULL CHECK (total >= 0),
    status TEXT NOT NULL,
    tracking_number TEXT,
    updated_at TIMESTAMPTZ NOT NULL
  )`
)

/**
 * The projection. Its handlers write with the application's `SqlClient`: with the
 * PostgreSQL runtime they run in the runner's transaction, with the checkpoint, so
 * each event is applied exactly once. A negative total breaks the table's CHECK: that
 * order's event goes to the dead-letter queue and the projection goes on.
 */
export const orderSummary = Effect.map(SqlClient.SqlClient, (sql) =>
  Projection.make({
    name: "order-summary",
    aggregateTypes: ["Order"],
    handlers: [
      Projection.on(
        OrderPlaced,
        (e) =>
          sql`INSERT INTO order_summary (order_id, customer_id, total, status, updated_at)
            VALUES (${e.aggregateId}::uuid, ${e.event.customer_id}, ${e.event.total}, 'placed', ${e.timestamp})`
      ),
      Projection.on(
        OrderShipped,
        (e) =>
          sql`UPDATE order_summary SET status = 'shipped', tracking_number = ${e.event.tracking_number},
                   updated_at = ${e.timestamp}
             WHERE order_id = ${e.aggregateId}::uuid`
      ),
      Projection.on(
        OrderCancelled,
        (e) =>
          sql`UPDATE order_summary SET status = 'cancelled', updated_at = ${e.timestamp}
             WHERE order_id = ${e.aggregateId}::uuid`
      )
    ],
    // For rebuilds: cleared in the same transaction as the checkpoint reset.
    reset: sql`DELETE FROM order_summary`
  })
)

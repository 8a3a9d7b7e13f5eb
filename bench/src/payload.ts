/**
 * The benchmark's event: one line added to an order, ~200 bytes of JSON, the same
 * shape whether written by the raw-SQL side, by Eventfold, or by the seed SQL.
 * Both sides fold it with the same function, so only the store's costs differ.
 */

export const AGGREGATE_TYPE = "Order"
export const EVENT_TYPE = "OrderItemAdded"

export interface ItemAdded {
  readonly order_id: string
  readonly customer_id: string
  readonly sku: string
  /** 1..9: one digit, so every payload has the same length. */
  readonly quantity: number
  /** 1000..9999: four digits. */
  readonly unit_price: number
  readonly currency: string
  readonly note: string
}

/** Pads the JSON text to exactly 200 bytes. */
const NOTE = "x".repeat(19)

export const payload = (orderId: string, n: number): ItemAdded => ({
  order_id: orderId,
  customer_id: crypto.randomUUID(),
  sku: `SKU-${String(n % 1_000_000).padStart(6, "0")}`,
  quantity: 1 + (n % 9),
  unit_price: 1000 + (n % 9000),
  currency: "EUR",
  note: NOTE
})

/** The same payload built in SQL, for seeding; `agg` and `n` are SQL expressions. */
export const payloadSql = (agg: string, n: string): string =>
  `jsonb_build_object('order_id', ${agg}::text, 'customer_id', gen_random_uuid()::text,
    'sku', 'SKU-' || lpad((${n} % 1000000)::text, 6, '0'), 'quantity', 1 + ${n} % 9,
    'unit_price', 1000 + ${n} % 9000, 'currency', 'EUR', 'note', '${NOTE}')`

/** What both sides fold a stream into (W4), and what the log reader sums (W5). */
export interface OrderTotals {
  readonly items: number
  readonly quantity: number
  readonly amount: number
  readonly lastSku: string | null
}

export const emptyTotals: OrderTotals = { items: 0, quantity: 0, amount: 0, lastSku: null }

export const fold = (state: OrderTotals, event: ItemAdded): OrderTotals => ({
  items: state.items + 1,
  quantity: state.quantity + event.quantity,
  amount: state.amount + event.quantity * event.unit_price,
  lastSku: event.sku
})

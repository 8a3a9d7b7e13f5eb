/**
 * The eventfold commands mounted in an application (examples/projections, `orders-admin`),
 * run as a child process on a database of its own: the commands that run the application's
 * projection code (rebuild with progress, a dead letter's retry through its handler, reset
 * clearing the read model) beside the standalone ones, under the application's name.
 */
import { assert, describe, it } from "@effect/vitest"
import { ExpectedVersion } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgPool } from "@eventfold/pg"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import {
  createTable,
  OrderCancelled,
  OrderPlaced,
  OrderShipped,
  registry
} from "../../examples/projections/src/Orders.js"
import * as TestDatabase from "../support/TestDatabase.js"
import { all, assertExit, assertPlain, errorLine, ordersAdmin } from "./run.js"

/** The non-empty lines of `text` that `f` holds of, and the others. */
const partition = (text: string, f: (line: string) => boolean) => {
  const lines = text.split("\n").filter((line) => line !== "")
  return [lines.filter(f), lines.filter((line) => !f(line))] as const
}

const sql = (url: string, text: string, values: ReadonlyArray<unknown> = []) =>
  TestDatabase.withClient(url, (client) => client.query(text, values as Array<unknown>).then((result) => result.rows))

describe("orders-admin (the eventfold commands mounted with the application's projection)", () => {
  it.scopedLive(
    "rebuild with progress, retry a dead letter (failing, then after the fix), reset the read model",
    () =>
      Effect.gen(function* () {
        const url = yield* TestDatabase.fresh
        const env = { DATABASE_URL: url }
        // The application's schema and three orders, written as the application writes them.
        const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 1 }))
        yield* Effect.provide(PgMigrations.run, context)
        yield* Effect.provide(createTable, context)
        const store = yield* Effect.provide(PgEventStore.make({ registry }), context)
        const order = (events: ReadonlyArray<Parameters<typeof store.append>[1][number]["event"]>) =>
          Effect.gen(function* () {
            const aggregateId = crypto.randomUUID()
            const eventIds = events.map(() => crypto.randomUUID())
            yield* store.append(
              { aggregateId, aggregateType: "Order" },
              events.map((event, i) => ({ event, eventId: eventIds[i]! })),
              { expectedVersion: ExpectedVersion.noStream }
            )
            return { aggregateId, eventIds }
          })
        const shipped = yield* order([
          OrderPlaced.make({ customer_id: "c-1", total: 25 }),
          OrderShipped.make({ tracking_number: "TRK-1" })
        ])
        // A negative total breaks the read model's CHECK: its event is dead-lettered.
        const negative = yield* order([OrderPlaced.make({ customer_id: "c-2", total: -5 })])
        const cancelled = yield* order([
          OrderPlaced.make({ customer_id: "c-3", total: 10 }),
          OrderCancelled.make({ reason: "changed mind" })
        ])
        const summary = () =>
          sql(
            url,
            "SELECT order_id::text, customer_id, total::text, status, tracking_number FROM order_summary ORDER BY customer_id"
          )

        const [rebuild, help, unknown, unreachable] = yield* all([
          ordersAdmin(["projections", "rebuild", "order-summary"], env),
          ordersAdmin(["--help"]),
          ordersAdmin(["projections", "rebuild", "no-such-projection"], env),
          // The application's own pool, on a port nothing listens on: "no database", as standalone.
          ordersAdmin(["projections", "list"], { DATABASE_URL: "postgres://postgres@127.0.0.1:1/orders" })
        ])
        assertExit(unreachable, 3)
        assert.match(errorLine(unreachable), /^orders-admin: PgPool: cannot connect to PostgreSQL at 127\.0\.0\.1:1: /)
        assertExit(rebuild, 0)
        assertPlain(rebuild)
        // Four events handled (the fifth went to the dead letters) up to the end of the log.
        assert.match(rebuild.stdout, /^order-summary rebuilt: 4 events up to position 5 in \S+\.\n$/)
        // Not a terminal: a plain line per report, no bar redrawn in place.
        assert.notInclude(rebuild.stderr, "\r")
        const [progress, others] = partition(rebuild.stderr, (line) => line.startsWith("rebuild "))
        assert.isNotEmpty(progress, "progress lines on stderr")
        for (const line of progress) {
          assert.match(line, /^rebuild order-summary: \d+\/5 \(\d+%\), \d+ events, \S+$/)
        }
        // Besides the progress, the warning that the negative order's event was dead-lettered.
        assert.strictEqual(others.length, 1, rebuild.stderr)
        assert.match(
          others[0]!,
          new RegExp(
            `^orders-admin: warn: projection order-summary: event ${negative.eventIds[0]} \\(OrderPlaced, position 3\\) dead-lettered after \\d+ attempts: .*order_summary_total_check`
          )
        )
        assert.match(progress.at(-1)!, /^rebuild order-summary: 5\/5 \(100%\), 4 events, /)
        assert.deepStrictEqual(yield* summary(), [
          {
            order_id: shipped.aggregateId,
            customer_id: "c-1",
            total: "25.00",
            status: "shipped",
            tracking_number: "TRK-1"
          },
          {
            order_id: cancelled.aggregateId,
            customer_id: "c-3",
            total: "10.00",
            status: "cancelled",
            tracking_number: null
          }
        ])
        const letters = yield* sql(
          url,
          "SELECT id::text, projection_name, event_id::text, status FROM dead_letter_queue ORDER BY id"
        )
        assert.deepStrictEqual(
          letters.map(({ id: _, ...letter }) => letter),
          [{ projection_name: "order-summary", event_id: negative.eventIds[0], status: "failed" }]
        )
        const id = letters[0]!.id as string

        assertExit(help, 0)
        assertPlain(help)
        assert.include(help.stdout, "orders-admin 0.1.0")
        for (const command of ["projections rebuild", "projections reset", "dead-letters retry", "migrate", "status"]) {
          assert.match(help.stdout, new RegExp(`^ {2}- ${command} `, "m"), command)
        }

        assertExit(unknown, 4)
        assert.strictEqual(
          errorLine(unknown),
          "orders-admin: no projection no-such-projection in this application (known: order-summary)"
        )

        // The cause is still there: the retry fails again, and the dead letter stays.
        const failing = assertExit(yield* ordersAdmin(["dead-letters", "retry", id], env), 1)
        assert.match(
          errorLine(failing),
          new RegExp(`^orders-admin: dead letter ${id} failed again: .*order_summary_total_check`)
        )
        assert.deepStrictEqual(yield* sql(url, "SELECT status, retry_count > 0 AS tried FROM dead_letter_queue"), [
          { status: "failed", tried: true }
        ])

        // Fixed: the read model takes negative totals now.
        yield* sql(url, "ALTER TABLE order_summary DROP CONSTRAINT order_summary_total_check")
        const [retried, notFound] = yield* all([
          ordersAdmin(["dead-letters", "retry", id], env),
          ordersAdmin(["dead-letters", "retry", "999999"], env)
        ])
        assertExit(retried, 0)
        assert.strictEqual(retried.stdout, `Dead letter ${id} handled by order-summary: resolved.\n`)
        assert.deepStrictEqual(yield* sql(url, "SELECT status, resolved_by FROM dead_letter_queue"), [
          { status: "resolved", resolved_by: "retry" }
        ])
        assert.deepStrictEqual(
          (yield* summary()).map((row) => [row.customer_id, row.total, row.status]),
          [
            ["c-1", "25.00", "shipped"],
            ["c-2", "-5.00", "placed"],
            ["c-3", "10.00", "cancelled"]
          ]
        )
        assertExit(notFound, 4)
        assert.strictEqual(errorLine(notFound), "orders-admin: dead letter 999999 does not exist")

        const reset = assertExit(yield* ordersAdmin(["projections", "reset", "order-summary"], env), 0)
        assert.strictEqual(
          reset.stdout,
          "order-summary: read model cleared and checkpoint reset; running projections replay the log.\n"
        )
        assert.deepStrictEqual(yield* summary(), [])
        assert.deepStrictEqual(
          yield* sql(
            url,
            "SELECT global_position::text AS position FROM projection_checkpoints WHERE projection_name = 'order-summary'"
          ),
          [{ position: "0" }]
        )
      }),
    180_000
  )
})

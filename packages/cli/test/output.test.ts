/**
 * What the commands print and how they end, without a database: the JSON every
 * `--json` prints (bigints exact, Options, Durations and Dates as plain data), the
 * tables, the figures, and the exit code and one line of each kind of failure.
 */

import * as HelpDoc from "@effect/cli/HelpDoc"
import * as ValidationError from "@effect/cli/ValidationError"
import { assert, describe, it } from "@effect/vitest"
import { DeadLetterQueue } from "@eventfold/core"
import { PgPool } from "@eventfold/pg"
import * as Cause from "effect/Cause"
import * as ConfigError from "effect/ConfigError"
import * as Duration from "effect/Duration"
import * as FastCheck from "effect/FastCheck"
import * as FiberId from "effect/FiberId"
import * as Option from "effect/Option"
import { CliError, ExitCode, explain } from "../src/internal/errors.js"
import * as Out from "../src/internal/output.js"

/** A JSON-like tree with bigints (exact beyond 2^53), Options, Durations and Dates in it. */
const { tree } = FastCheck.letrec<{ tree: unknown }>((tie) => ({
  tree: FastCheck.oneof(
    { depthSize: "small" },
    FastCheck.string(),
    FastCheck.integer(),
    FastCheck.boolean(),
    FastCheck.constant(null),
    FastCheck.bigInt({ min: -(2n ** 80n), max: 2n ** 80n }),
    FastCheck.date({ noInvalidDate: true }),
    FastCheck.integer({ min: 0, max: 10_000_000 }).map(Duration.millis),
    tie("tree").map(Option.some),
    FastCheck.constant(Option.none()),
    FastCheck.array(tie("tree"), { maxLength: 4 }),
    FastCheck.dictionary(FastCheck.string(), tie("tree"), { maxKeys: 4 })
  )
}))

/** What JSON.parse must give back: the same tree with every special value as plain data. */
const expected = (value: unknown): unknown => {
  if (typeof value === "bigint") return Number(value)
  if (value instanceof Date) return value.toISOString()
  if (Option.isOption(value)) return Option.isSome(value) ? expected(value.value) : null
  if (Duration.isDuration(value)) return Duration.toMillis(value)
  if (Array.isArray(value)) return value.map(expected)
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([key, v]) => [key, expected(v)]))
  }
  return value
}

const bigints = (value: unknown): Array<bigint> =>
  typeof value === "bigint"
    ? [value]
    : Option.isOption(value)
      ? Option.match(value, { onNone: () => [], onSome: bigints })
      : Array.isArray(value)
        ? value.flatMap(bigints)
        : value !== null && typeof value === "object" && !(value instanceof Date) && !Duration.isDuration(value)
          ? Object.values(value).flatMap(bigints)
          : []

describe("--json", () => {
  it.prop(
    "is one JSON document of the value as plain data, each bigint written with all its digits",
    [tree],
    ([value]) => {
      const text = Out.json(value)
      assert.deepStrictEqual(JSON.parse(text), expected(value))
      for (const n of bigints(value)) assert.match(text, new RegExp(`(^|[\\s\\[:])${n}(,|\\n|$)`))
    }
  )

  it("keeps a string that looks like a bigint a string", () => {
    const value = { a: "bigint-00000000-0000-0000-0000-000000000000:12", b: 12n }
    assert.deepStrictEqual(JSON.parse(Out.json(value)), { a: value.a, b: 12 })
  })
})

describe("tables", () => {
  const columns: ReadonlyArray<Out.Column<{ name: string; n: number }>> = [
    { header: "NAME", value: (r) => r.name },
    { header: "N", value: (r) => Out.count(r.n), align: "right" }
  ]

  it("align each column to its widest cell, numbers to the right, no trailing blanks", () => {
    assert.strictEqual(
      Out.table(
        [
          { name: "order-summary", n: 1234567 },
          { name: "x", n: 5 }
        ],
        columns
      ),
      "NAME                   N\norder-summary  1,234,567\nx                      5"
    )
  })

  it("never pass a terminal's control sequences through: what they show comes from the database", () => {
    const esc = String.fromCharCode(27)
    const hostile = `app${esc}]0;pwned${String.fromCharCode(7)}${esc}[2J`
    const shown = [
      Out.table([{ name: hostile, n: 1 }], columns),
      Out.fields([["application", hostile]]),
      Out.section("Stack", `line 1\n${hostile}`)
    ].join("\n")
    assert.notInclude(shown, esc)
    assert.notInclude(shown, String.fromCharCode(7))
    assert.include(shown, "app\\u001b]0;pwned\\u0007\\u001b[2J")
    assert.strictEqual(Out.section("Stack", "a\n\tb"), "Stack\n  a\n  \tb")
  })

  it("say so when there are no rows, and keep a cell on its line", () => {
    assert.strictEqual(Out.table([], columns, "(none)"), "(none)")
    assert.strictEqual(Out.table([{ name: "a\nb\tc", n: 1 }], columns), "NAME   N\na b c  1")
  })

  it("show figures as people read them", () => {
    assert.deepStrictEqual([0, 850, 12_345, 245_000, 7_800_000, 97_200_000].map(Out.age), [
      "0ms",
      "850ms",
      "12.3s",
      "4m 05s",
      "2h 10m",
      "1d 3h"
    ])
    assert.deepStrictEqual([0n, 8191n, 10_240n, 5n * 1024n ** 3n].map(Out.bytes), ["0 B", "8191 B", "10 kB", "5120 MB"])
    assert.strictEqual(Out.count(-1234n), "-1,234")
    assert.strictEqual(Out.time(new Date("2026-12-06T07:08:09.123Z")), "2026-12-06T07:08:09Z")
    assert.strictEqual(Out.clip("x".repeat(10), 5), "xxxx…")
  })
})

describe("how a command ends", () => {
  const fail = (error: unknown) => explain(Cause.fail(error), "eventfold")

  it("with the exit code of each kind of failure, and one line saying why", () => {
    assert.deepStrictEqual(fail(new CliError({ exitCode: ExitCode.pending, message: "2 migrations are pending" })), {
      exitCode: 5,
      line: "eventfold: 2 migrations are pending"
    })
    assert.deepStrictEqual(fail(new PgPool.ServerNotConfiguredError()).exitCode, ExitCode.unavailable)
    assert.deepStrictEqual(fail(new DeadLetterQueue.DeadLetterNotFoundError({ id: 7n })), {
      exitCode: ExitCode.notFound,
      line: "eventfold: dead letter 7 does not exist"
    })
    assert.deepStrictEqual(
      fail(new DeadLetterQueue.DeadLetterError({ method: "list", message: 'relation "x" does not exist' })),
      { exitCode: ExitCode.failure, line: 'eventfold: relation "x" does not exist' }
    )
  })

  it("says a usage error on one line as every failure (Cli.run keeps @effect/cli from printing it)", () => {
    assert.deepStrictEqual(fail(ValidationError.invalidValue(HelpDoc.p("bad"))), {
      exitCode: ExitCode.usage,
      line: "eventfold: bad"
    })
  })

  it("adds what the causes say beyond the message, and names a configuration's variable", () => {
    const statement = new Error("Failed to execute statement", { cause: new Error("LIMIT must not be negative") })
    assert.strictEqual(
      fail(new DeadLetterQueue.DeadLetterError({ method: "list", message: statement.message, cause: statement })).line,
      "eventfold: Failed to execute statement: LIMIT must not be negative"
    )
    assert.strictEqual(
      fail(ConfigError.InvalidData(["DATABASE_URL"], "Expected a PostgreSQL URL")).line,
      "eventfold: DATABASE_URL: Expected a PostgreSQL URL"
    )
  })

  it("never prints a stack, a second line or a password", () => {
    const error = new Error("cannot connect to postgres://app:s3cret@db:5432/orders:\n  connection refused")
    assert.include(error.stack!, "output.test.ts")
    const { line } = explain(Cause.die(error), "orders-admin")
    assert.strictEqual(
      line,
      "orders-admin: unexpected error: cannot connect to postgres://app:***@db:5432/orders: connection refused"
    )
    assert.deepStrictEqual(explain(Cause.interrupt(FiberId.none), "eventfold"), {
      exitCode: ExitCode.interrupted,
      line: "eventfold: interrupted"
    })
  })
})

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
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
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

describe("print", () => {
  it.effect("writes the JSON document with --json, the human rendering otherwise", () =>
    Effect.gen(function* () {
      const lines: Array<unknown> = []
      const capture = Effect.consoleWith((console) =>
        Effect.succeed({ ...console, log: (...args: ReadonlyArray<unknown>) => Effect.sync(() => lines.push(...args)) })
      )
      const printed = (asJson: boolean) =>
        Effect.flatMap(capture, (console) =>
          Effect.withConsole(
            Out.print({ n: 1n }, asJson, (v) => `n is ${v.n}`),
            console
          )
        )
      yield* printed(true)
      yield* printed(false)
      assert.deepStrictEqual(lines, ['{\n  "n": 1\n}', "n is 1"])
    })
  )
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

  it("pad no column at the end of a line, align labels, say (none) by default", () => {
    const rows = [
      { name: "a", n: 10 },
      { name: "long-name", n: 2 }
    ]
    const nameLast: ReadonlyArray<Out.Column<{ name: string; n: number }>> = [
      { header: "N", value: (r) => String(r.n), align: "right" },
      { header: "NAME", value: (r) => r.name }
    ]
    assert.strictEqual(Out.table(rows, nameLast), " N  NAME\n10  a\n 2  long-name")
    assert.strictEqual(Out.table([], nameLast), "(none)")
    assert.strictEqual(
      Out.fields([
        ["a", "1"],
        ["long label", "2"]
      ]),
      "a           1\nlong label  2"
    )
    assert.strictEqual(Out.section("Title", "x\ny"), "Title\n  x\n  y")
    // A value of several lines (a stack) keeps them.
    assert.strictEqual(Out.fields([["error", "a\nb"]]), "error  a\nb")
  })

  it("escape C0 and C1 controls and DEL, nothing else; a run of breaks is one space", () => {
    const chars = [0x00, 0x1f, 0x20, 0x7e, 0x7f, 0x80, 0x9f, 0xa0].map((code) => String.fromCharCode(code)).join("")
    assert.strictEqual(Out.escapeControls(chars), "\\u0000\\u001f ~\\u007f\\u0080\\u009f\u00a0")
    assert.strictEqual(Out.escapeControls("a\nb\tc", "\n"), "a\nb\\u0009c")
    assert.strictEqual(Out.oneLine("a\r\n\tb"), "a b")
    const esc = String.fromCharCode(27)
    assert.strictEqual(Out.stripAnsi(`${esc}[0;1mUSAGE${esc}[0m`), "USAGE")
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
    // TB is the largest unit: a petabyte is 1024 TB.
    assert.strictEqual(Out.bytes(1024n ** 5n), "1024 TB")
    assert.strictEqual(Out.bytes(1024n ** 6n), "1048576 TB")
    // At each boundary, the larger unit.
    assert.deepStrictEqual(
      [999, 1000, 59_999, 60_000, 3_599_999, 3_600_000, 7_500_000, 86_399_999, 86_400_000].map(Out.age),
      ["999ms", "1.0s", "60.0s", "1m 00s", "59m 59s", "1h 00m", "2h 05m", "23h 59m", "1d 0h"]
    )
    assert.strictEqual(Out.clip("xxxxx", 5), "xxxxx")
    assert.deepStrictEqual([Out.text(null), Out.text(undefined), Out.text("x")], ["-", "-", "x"])
    assert.strictEqual(Out.time(null), "-")
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

  it("names a configuration's variable, shows what causes add once, and survives odd failures", () => {
    const missing = Effect.runSync(Effect.flip(Config.string("EVENTFOLD_TEST_NEVER_SET")))
    assert.deepStrictEqual(fail(missing), {
      exitCode: ExitCode.unavailable,
      line: "eventfold: EVENTFOLD_TEST_NEVER_SET: Expected EVENTFOLD_TEST_NEVER_SET to exist in the process context"
    })
    assert.strictEqual(
      fail(new Error("Failed to execute statement", { cause: new Error("LIMIT must not be negative") })).line,
      "eventfold: Failed to execute statement: LIMIT must not be negative"
    )
    // A cause that says nothing new is left out; a loop of causes ends.
    const looping = new Error("connection lost") as Error & { cause?: unknown }
    looping.cause = new Error("lost")
    ;(looping.cause as Error & { cause?: unknown }).cause = looping
    assert.strictEqual(fail(looping).line, "eventfold: connection lost")
    assert.strictEqual(fail(new Error("outer", { cause: "not an error" })).line, "eventfold: outer")
    // Causes that are error-like objects count; each adds only what no earlier part says; eight at most.
    assert.strictEqual(
      fail(new Error("A failed: timeout", { cause: { message: "socket closed", cause: new Error("timeout") } })).line,
      "eventfold: A failed: timeout: socket closed"
    )
    const deep = Array.from({ length: 10 }, (_, i) => `cause ${i + 1}`).reduceRight<unknown>(
      (cause, message) => new Error(message, { cause }),
      undefined
    )
    assert.strictEqual(
      fail(new Error("top", { cause: deep })).line,
      `eventfold: top: ${Array.from({ length: 8 }, (_, i) => `cause ${i + 1}`).join(": ")}`
    )
    // A configuration error with no variable: its message alone.
    assert.deepStrictEqual(fail(ConfigError.InvalidData([], "PgPool: the URL does not parse")), {
      exitCode: ExitCode.unavailable,
      line: "eventfold: PgPool: the URL does not parse"
    })
    assert.deepStrictEqual(fail("boom"), { exitCode: ExitCode.failure, line: "eventfold: boom" })
    assert.deepStrictEqual(fail(null), { exitCode: ExitCode.failure, line: "eventfold: null" })
    assert.deepStrictEqual(fail({ _tag: "EmbeddedPostgresError", message: "port taken" }), {
      exitCode: ExitCode.unavailable,
      line: "eventfold: port taken"
    })
    assert.deepStrictEqual(fail({ _tag: "SomethingError", message: "" }), {
      exitCode: ExitCode.failure,
      line: "eventfold: SomethingError"
    })
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

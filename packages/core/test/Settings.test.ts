import { assert, describe, it } from "@effect/vitest"
import { Settings } from "@eventfold/core"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"

describe("Settings.overDefaults", () => {
  const settings = Settings.overDefaults(
    { size: Config.integer("SIZE"), name: Config.string("NAME"), verbose: Config.boolean("VERBOSE") },
    { size: 5, name: "default", other: true }
  )
  const read = (environment: ReadonlyArray<readonly [string, string]>) =>
    settings.pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map(environment))))

  it.effect("takes what the environment sets and keeps the defaults of the rest", () =>
    Effect.gen(function* () {
      assert.deepStrictEqual(yield* read([]), { size: 5, name: "default", other: true })
      assert.deepStrictEqual(yield* read([["SIZE", "20"]]), { size: 20, name: "default", other: true })
      assert.deepStrictEqual(yield* read([["VERBOSE", "true"]]), {
        size: 5,
        name: "default",
        other: true,
        verbose: true
      })
    })
  )

  it.effect("fails on a value the environment sets wrong, naming it", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(read([["SIZE", "many"]]))
      assert.include(String(error), "SIZE")
    })
  )
})

describe("redactCredentials", () => {
  it("replaces the password of every URL in a text, and nothing else", () => {
    assert.strictEqual(
      Settings.redactCredentials(
        "cannot connect to postgres://app:S3cret@db.example:5432/events?sslmode=require, nor nats://relay:p@ss:w0rd@127.0.0.1:4222"
      ),
      "cannot connect to postgres://app:***@db.example:5432/events?sslmode=require, nor nats://relay:***@127.0.0.1:4222"
    )
    assert.strictEqual(Settings.redactCredentials("postgresql://:onlyAPassword@host/db"), "postgresql://:***@host/db")
    for (const untouched of [
      "postgres://app@db.example:5432/events",
      "postgres://db.example:5432/events",
      "host:5432 user:name@example.com",
      "no URL at all"
    ]) {
      assert.strictEqual(Settings.redactCredentials(untouched), untouched)
    }
  })
})

describe("Settings.duration", () => {
  const millis = (text: string, unit: Settings.DurationUnit = "seconds") =>
    Option.map(Settings.parseDuration(text, unit), Duration.toMillis)

  it("reads durations as people write them", () => {
    for (const [text, expected] of [
      ["30s", 30_000],
      ["30 s", 30_000],
      ["30sec", 30_000],
      ["30 seconds", 30_000],
      ["1 second", 1000],
      ["1500ms", 1500],
      ["1500 millis", 1500],
      ["1500 milliseconds", 1500],
      ["1.5s", 1500],
      ["2m", 120_000],
      ["5 min", 300_000],
      ["1h30m", 5_400_000],
      ["1 hour 30 minutes", 5_400_000],
      ["2 days", 172_800_000],
      ["1w", 604_800_000],
      ["500us", 0.5],
      [" 30S ", 30_000]
    ] as const) {
      assert.deepStrictEqual(millis(text), Option.some(expected), text)
    }
  })

  it("reads a plain number in the unit given", () => {
    assert.deepStrictEqual(millis("30", "seconds"), Option.some(30_000))
    assert.deepStrictEqual(millis("1500", "millis"), Option.some(1500))
    assert.deepStrictEqual(millis("2.5", "minutes"), Option.some(150_000))
  })

  it("refuses anything else", () => {
    for (const text of ["", "soon", "-5s", "30 parsecs", "30s,", "s", "1..5s", "30 seconds ago"]) {
      assert.isTrue(Option.isNone(millis(text)), text)
    }
  })

  it.effect("a malformed value is a ConfigError naming the variable and the forms it takes", () =>
    Effect.gen(function* () {
      const read = (value: string) =>
        Settings.duration("POLL", { unit: "millis" }).pipe(
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["POLL", value]])))
        )
      assert.strictEqual(Duration.toMillis(yield* read("250")), 250)
      assert.strictEqual(Duration.toMillis(yield* read("2s")), 2000)
      const error = String(yield* Effect.flip(read("soon")))
      assert.include(error, "POLL")
      assert.include(error, '"30s"')
      assert.include(error, "a plain number is in millis")
      // Unset: MissingData, so that Config.withDefault applies.
      const unset = Settings.duration("POLL", { unit: "millis" }).pipe(
        Config.withDefault(Duration.seconds(1)),
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map()))
      )
      assert.strictEqual(Duration.toMillis(yield* unset), 1000)
    })
  )
})

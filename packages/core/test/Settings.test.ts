import { assert, describe, it } from "@effect/vitest"
import { Settings } from "@eventfold/core"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"

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

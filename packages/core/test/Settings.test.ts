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

/**
 * What a test gives a program from outside: its environment, as `Config` reads it, and
 * a logger that keeps what it logs.
 */
import * as Util from "node:util"
import * as Cause from "effect/Cause"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"

/** The environment, as the program's `Config` reads it: `env` and nothing else. */
export const withEnvironment =
  (env: Record<string, string>) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    Effect.withConfigProvider(effect, ConfigProvider.fromMap(new Map(Object.entries(env))))

/** Runs `effect` with a logger that keeps every line (message, cause, annotations) as text. */
export const capturingLogs = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const lines: Array<{ readonly level: string; readonly text: string }> = []
    const logger = Logger.make(({ logLevel, message, cause, annotations }) => {
      lines.push({
        level: logLevel.label,
        text: [Util.inspect(message, { depth: null }), Cause.pretty(cause), Util.inspect(annotations)].join(" ")
      })
    })
    const result = yield* Effect.provide(effect, Logger.replace(Logger.defaultLogger, logger))
    return [result, lines] as const
  })

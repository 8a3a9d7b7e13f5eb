/**
 * Settings read from the environment over defaults given in code, as every
 * `config` of Eventfold's layers reads them (`PgPool.config`, `OutboxRelay.config`,
 * `NatsPublisher.config`), durations as people write them (`duration`), and the one way
 * their URLs are printed (`redactCredentials`).
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Duration from "effect/Duration"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Record from "effect/Record"

/**
 * Each field is read with its `Config`; one the environment sets replaces the
 * default, one it leaves unset keeps it (a malformed value is a `ConfigError`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const overDefaults = <
  Fields extends { readonly [key: string]: Config.Config<unknown> },
  Defaults extends object
>(
  fields: Fields,
  defaults: Defaults
): Config.Config<Defaults & { [K in keyof Fields]?: Config.Config.Success<Fields[K]> }> =>
  Config.all(Record.map(fields, (field) => Config.option(field))).pipe(
    Config.map((values) => {
      const settings: { [key: string]: unknown } = { ...(defaults as { readonly [key: string]: unknown }) }
      for (const [key, value] of Object.entries(values)) if (Option.isSome(value)) settings[key] = value.value
      return settings as Defaults & { [K in keyof Fields]?: Config.Config.Success<Fields[K]> }
    })
  )

/**
 * `text` with the password of every URL in it replaced by `***`
 * (`postgres://app:s3cret@db:5432/events` → `postgres://app:***@db:5432/events`): the one
 * way Eventfold puts a URL, or a message that may hold one, into an error, a log line or
 * a span. Secrets themselves stay `Redacted` until the driver call.
 *
 * @since 0.1.0
 * @category utils
 */
export const redactCredentials = (text: string): string => text.replace(credentials, "$1:***@")

/**
 * `scheme://user:password@`: the user (which may be empty) is kept; the password runs to
 * the last `@` before the host (a raw `@` or `:` in a password included).
 */
const credentials = /(\b[a-z][a-z0-9+.-]*:\/\/[^\s:/?#@]*):[^\s/?#]*@/gi

/**
 * The unit of a duration written as a plain number (`DATABASE_POOL_TIMEOUT=30`).
 *
 * @since 0.1.0
 * @category models
 */
export type DurationUnit = "millis" | "seconds" | "minutes"

const millisPer: { readonly [unit: string]: number } = {
  ns: 1e-6,
  nano: 1e-6,
  nanos: 1e-6,
  nanosecond: 1e-6,
  nanoseconds: 1e-6,
  us: 1e-3,
  "\u00b5s": 1e-3,
  micro: 1e-3,
  micros: 1e-3,
  microsecond: 1e-3,
  microseconds: 1e-3,
  ms: 1,
  milli: 1,
  millis: 1,
  millisecond: 1,
  milliseconds: 1,
  s: 1000,
  sec: 1000,
  secs: 1000,
  second: 1000,
  seconds: 1000,
  m: 60_000,
  min: 60_000,
  mins: 60_000,
  minute: 60_000,
  minutes: 60_000,
  h: 3_600_000,
  hr: 3_600_000,
  hrs: 3_600_000,
  hour: 3_600_000,
  hours: 3_600_000,
  d: 86_400_000,
  day: 86_400_000,
  days: 86_400_000,
  w: 604_800_000,
  week: 604_800_000,
  weeks: 604_800_000
}

const plainNumber = /^\d+(?:\.\d+)?$/
const durationPart = /(\d+(?:\.\d+)?)\s*([a-z\u00b5]+)\s*/gy

/**
 * Reads a duration as people write it: `30s`, `30 s`, `30 seconds`, `1500ms`, `1500 millis`,
 * `2m`, `5 min`, `1h30m`, `1 hour 30 minutes` (units from nanoseconds to weeks, in any case;
 * `m` is minutes); a plain number (`30`) is in `unit`. `None` for anything else (a negative
 * or empty value included).
 *
 * @since 0.1.0
 * @category utils
 */
export const parseDuration = (text: string, unit: DurationUnit): Option.Option<Duration.Duration> => {
  const input = text.trim().toLowerCase()
  if (plainNumber.test(input)) return Option.some(Duration.millis(Number(input) * millisPer[unit]!))
  if (input === "") return Option.none()
  let total = 0
  durationPart.lastIndex = 0
  while (durationPart.lastIndex < input.length) {
    const match = durationPart.exec(input)
    const factor = match === null ? undefined : millisPer[match[2]!]
    if (match === null || factor === undefined) return Option.none()
    total += Number(match[1]) * factor
  }
  return Option.some(Duration.millis(total))
}

/**
 * A duration read from the variable `name` by {@link parseDuration} (`Config.duration` only
 * takes `30 seconds`): a malformed value is a `ConfigError` that names the variable and
 * shows the forms it takes.
 *
 * @since 0.1.0
 * @category constructors
 */
export const duration = (name: string, options: { readonly unit: DurationUnit }): Config.Config<Duration.Duration> =>
  Config.nested(
    Config.mapOrFail(Config.string(), (text) =>
      Either.fromOption(parseDuration(text, options.unit), () =>
        ConfigError.InvalidData(
          [],
          `Expected a duration such as "30s", "30 seconds" or "1500 millis" (a plain number is in ${options.unit}), but received ${JSON.stringify(text)}`
        )
      )
    ),
    name
  )

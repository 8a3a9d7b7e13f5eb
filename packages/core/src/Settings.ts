/**
 * Settings read from the environment over defaults given in code, as every
 * `config` of Eventfold's layers reads them (`PgPool.config`, `OutboxRelay.config`,
 * `NatsPublisher.config`), and the one way their URLs are printed (`redactCredentials`).
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
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

/**
 * Settings read from the environment over defaults given in code, as every
 * `config` of Eventfold's layers reads them (`PgPool.config`, `OutboxRelay.config`,
 * `NatsPublisher.config`).
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

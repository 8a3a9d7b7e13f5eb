/**
 * Where a pool connects, and how: the options resolved into one target, checked before
 * anything is sent, so that a mistake is a message naming the setting (never
 * "getaddrinfo ENOTFOUND base", pg's answer to a URL that is not one).
 *
 * - **The URL** is parsed here, not by pg: pg resolves a string without a scheme against
 *   `postgres://base` and merges the URL's parameters over every other setting, TLS
 *   included. Fields given beside the URL replace the URL's (`host`, `password`, ...).
 *   The URL's query takes libpq's parameters that matter to a pool (see
 *   {@link urlParameters}); any other is refused rather than ignored. Messages never
 *   quote the URL: a password with a stray `/` or `@` defeats any redaction of a URL
 *   that does not parse.
 * - **TLS** follows libpq's `sslmode` (see {@link tlsPlan}); certificates are PEM text or
 *   the path of a PEM file.
 * - **The schema** becomes the `search_path` of every connection (a startup option, so
 *   that it holds before the first statement, prepared ones included).
 *
 * @internal
 */
import * as Fs from "node:fs/promises"
import type * as Tls from "node:tls"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Redacted from "effect/Redacted"

import type { ConnectionOptions } from "../PgPool.js"
import { type SslMode, sslModes } from "./sslMode.js"

export { type SslMode, sslModes }

const isSslMode = (value: string): value is SslMode => (sslModes as ReadonlyArray<string>).includes(value)

/** The parameters a URL's query may carry (libpq's names); any other is refused. */
export const urlParameters = [
  "host",
  "port",
  "user",
  "password",
  "dbname",
  "sslmode",
  "ssl",
  "sslrootcert",
  "sslcert",
  "sslkey",
  "application_name",
  "options"
] as const

/** What a URL says; everything optional. */
export interface UrlParts {
  readonly host?: string | undefined
  readonly port?: number | undefined
  readonly user?: string | undefined
  readonly password?: Redacted.Redacted<string> | undefined
  readonly database?: string | undefined
  readonly sslMode?: SslMode | undefined
  readonly sslRootCert?: string | undefined
  readonly sslCert?: string | undefined
  readonly sslKey?: Redacted.Redacted<string> | undefined
  readonly applicationName?: string | undefined
  readonly options?: string | undefined
}

const schemes = new Set(["postgres:", "postgresql:"])

const parsePort = (text: string): number | undefined => {
  if (!/^\d{1,5}$/.test(text)) return undefined
  const port = Number(text)
  return port >= 1 && port <= 65535 ? port : undefined
}

const decode = (text: string): string | undefined => {
  try {
    return decodeURIComponent(text)
  } catch {
    return undefined
  }
}

/** Why the part of a URL after `scheme://` does not parse, as far as can be told without quoting it. */
const diagnose = (rest: string): string => {
  const authority = rest.slice(rest.lastIndexOf("@") + 1).split(/[/?#]/, 1)[0] ?? ""
  if (authority === "") return "names no host (postgres://user:password@host:port/database)"
  if (authority.startsWith("[") && !authority.includes("]")) return "has an IPv6 host without its closing ]"
  const port = /^(?:\[[^\]]*\]|[^:[\]]*):(.*)$/.exec(authority)?.[1]
  if (port !== undefined && parsePort(port) === undefined) return "has a port that is not a number from 1 to 65535"
  return "does not parse as a URL (a reserved character in the user name or password, such as @ / ? # : or %, must be percent-encoded)"
}

/**
 * The parts of a PostgreSQL URL (`postgres://user:password@host:port/database?sslmode=...`),
 * or why it is not one. The message never quotes the URL.
 */
export const parseUrl = (text: string): Either.Either<UrlParts, string> => {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(text)?.[1]
  if (scheme === undefined)
    return Either.left("is not a URL: it should read postgres://user:password@host:port/database")
  if (!schemes.has(`${scheme.toLowerCase()}:`)) {
    return Either.left(
      /^postgres(ql)?\+/i.test(scheme)
        ? `has the scheme ${scheme}://, which names a Python driver: write postgres:// (or postgresql://)`
        : `has the scheme ${scheme}://: a PostgreSQL URL starts with postgres:// (or postgresql://)`
    )
  }
  let url: URL
  try {
    url = new URL(text)
  } catch {
    return Either.left(diagnose(text.slice(scheme.length + 3)))
  }
  const parts: {
    -readonly [K in keyof UrlParts]: UrlParts[K]
  } = {}
  if (url.hostname !== "") {
    const host = decode(url.hostname)
    if (host === undefined) return Either.left("has a host that does not decode")
    parts.host = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host
  }
  if (url.port !== "") {
    const port = parsePort(url.port)
    if (port === undefined) return Either.left("has a port that is not a number from 1 to 65535")
    parts.port = port
  }
  if (url.username !== "") {
    const user = decode(url.username)
    if (user === undefined) return Either.left("has a user name that does not decode")
    parts.user = user
  }
  if (url.password !== "") {
    const password = decode(url.password)
    if (password === undefined) return Either.left("has a password that does not decode (a stray %?)")
    parts.password = Redacted.make(password)
  }
  const path = url.pathname.replace(/^\//, "")
  if (path !== "") {
    const database = decode(path)
    if (database === undefined || database.includes("/"))
      return Either.left("has a database name that does not decode, or holds a /")
    parts.database = database
  }
  const unknown: Array<string> = []
  for (const [name, value] of url.searchParams) {
    switch (name) {
      case "host":
        parts.host = value
        break
      case "port": {
        const port = parsePort(value)
        if (port === undefined) return Either.left("has a port parameter that is not a number from 1 to 65535")
        parts.port = port
        break
      }
      case "user":
        parts.user = value
        break
      case "password":
        parts.password = Redacted.make(value)
        break
      case "dbname":
        parts.database = value
        break
      case "sslmode":
      case "ssl": {
        // pg's own values of `ssl`: true (TLS that verifies the server against the system's
        // CAs), false, and no-verify (TLS that checks nothing).
        const sslMode =
          name !== "ssl"
            ? value
            : value === "true" || value === "1"
              ? "verify-full"
              : value === "false" || value === "0"
                ? "disable"
                : value === "no-verify"
                  ? "require"
                  : value
        if (!isSslMode(sslMode))
          return Either.left(`has ${name}=${JSON.stringify(value)}, which is none of ${sslModes.join(", ")}`)
        parts.sslMode = sslMode
        if (name === "ssl" && sslMode === "verify-full" && parts.sslRootCert === undefined) parts.sslRootCert = "system"
        break
      }
      case "sslrootcert":
        parts.sslRootCert = value
        break
      case "sslcert":
        parts.sslCert = value
        break
      case "sslkey":
        parts.sslKey = Redacted.make(value)
        break
      case "application_name":
        parts.applicationName = value
        break
      case "options":
        parts.options = value
        break
      default:
        unknown.push(name)
    }
  }
  if (unknown.length > 0) {
    // Parameter names are no secret (their values may be): they are named, their values not.
    const names = unknown.map((name) => JSON.stringify(name.slice(0, 40))).join(", ")
    return Either.left(
      `has parameters Eventfold does not take: ${names} (it takes ${urlParameters.join(", ")}); remove them, or set what they mean through PgPool's options`
    )
  }
  return Either.right(parts)
}

// ---------------------------------------------------------------------------
// The target
// ---------------------------------------------------------------------------

/** The options `resolve` reads: PgPool's connection options, and the pool's name. */
export type Settings = ConnectionOptions & { readonly applicationName?: string | undefined }

/** A certificate or key: PEM text, the path of a PEM file, or (root certificates only) the system's CAs. */
export type Source =
  | { readonly _tag: "Pem"; readonly pem: Redacted.Redacted<string> }
  | { readonly _tag: "File"; readonly path: string }
  | { readonly _tag: "System" }

/** Where a pool connects, resolved. */
export interface Target {
  readonly host: string | undefined
  readonly port: number | undefined
  readonly user: string | undefined
  readonly password: Redacted.Redacted<string> | undefined
  readonly database: string | undefined
  readonly applicationName: string | undefined
  readonly schema: string | undefined
  /** The startup `options` (the URL's, then the schema's `search_path`), or undefined. */
  readonly startupOptions: string | undefined
  readonly sslMode: SslMode
  readonly sslRootCert: Source | undefined
  readonly sslCert: Source | undefined
  readonly sslKey: Source | undefined
}

const source = (value: string): Source =>
  value.includes("-----BEGIN") ? { _tag: "Pem", pem: Redacted.make(value) } : { _tag: "File", path: value }

/** PostgreSQL's limit on identifiers, in bytes (NAMEDATALEN - 1). */
const MAX_IDENTIFIER = 63

/** Why `schema` cannot name a schema, or undefined. */
export const schemaProblem = (schema: string): string | undefined => {
  if (schema === "") return "is empty"
  if (Buffer.byteLength(schema, "utf8") > MAX_IDENTIFIER)
    return `is longer than PostgreSQL's ${MAX_IDENTIFIER} bytes (it would be cut short)`
  if (schema.includes("\0")) return "holds a NUL character"
  if (/^pg_/i.test(schema)) return "starts with pg_, which PostgreSQL reserves for its own schemas"
  return undefined
}

/** `name` as a quoted SQL identifier: `my "x"` → `"my ""x"""`. */
export const quoteIdentifier = (name: string): string => `"${name.replace(/"/g, '""')}"`

/**
 * The startup option that sets `search_path` to `schema` alone: a quoted identifier (the
 * name is used exactly, case included), its backslashes and white space escaped for the
 * server's splitting of `options` into arguments.
 */
export const searchPathOption = (schema: string): string =>
  `-c search_path=${quoteIdentifier(schema).replace(/[\\\s]/g, (c) => `\\${c}`)}`

/**
 * The target of `settings`, or why there is none usable: fields given beside the URL
 * replace the URL's. The message starts with the setting it is about and never quotes a
 * secret.
 */
export const resolve = (settings: Settings): Either.Either<Target, string> => {
  let parts: UrlParts = {}
  if (settings.url !== undefined) {
    const parsed = parseUrl(Redacted.value(settings.url))
    if (Either.isLeft(parsed)) return Either.left(`the URL ${parsed.left}`)
    parts = parsed.right
  }
  const host = settings.host ?? parts.host
  if (settings.url !== undefined && host === undefined)
    return Either.left("the URL names no host (postgres://user:password@host:port/database)")
  if (settings.schema !== undefined) {
    const problem = schemaProblem(settings.schema)
    if (problem !== undefined) return Either.left(`the schema ${problem}`)
  }
  const sslMode = settings.sslMode ?? parts.sslMode ?? "disable"
  const rootCertText = settings.sslRootCert ?? parts.sslRootCert
  const rootCert: Source | undefined =
    rootCertText === undefined ? undefined : rootCertText === "system" ? { _tag: "System" } : source(rootCertText)
  if (rootCert?._tag === "System" && sslMode !== "verify-full") {
    return Either.left(
      `sslrootcert=system (the system's CAs) needs sslmode verify-full, not ${sslMode}: a public CA vouches for names, so only checking the name protects anything (libpq refuses it too)`
    )
  }
  if ((sslMode === "verify-ca" || sslMode === "verify-full") && rootCert === undefined) {
    return Either.left(
      `sslmode ${sslMode} needs the CA that signed the server's certificate: set sslrootcert in the URL, PGSSLROOTCERT or the sslRootCert option to its PEM file (or to "system" for the system's CAs, with verify-full)`
    )
  }
  const certText = settings.sslCert ?? parts.sslCert
  const key = settings.sslKey ?? parts.sslKey
  if ((certText === undefined) !== (key === undefined)) {
    return Either.left("a client certificate needs both sslcert and sslkey (PGSSLCERT and PGSSLKEY)")
  }
  const startupOptions = [
    ...(parts.options === undefined || parts.options === "" ? [] : [parts.options]),
    ...(settings.schema === undefined ? [] : [searchPathOption(settings.schema)])
  ].join(" ")
  return Either.right({
    host,
    port: settings.port ?? parts.port,
    user: settings.user ?? parts.user,
    password: settings.password ?? parts.password,
    database: settings.database ?? parts.database,
    applicationName: settings.applicationName ?? parts.applicationName,
    schema: settings.schema,
    startupOptions: startupOptions === "" ? undefined : startupOptions,
    sslMode,
    sslRootCert: rootCert,
    sslCert: certText === undefined ? undefined : source(certText),
    sslKey: key === undefined ? undefined : source(Redacted.value(key))
  })
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

/**
 * What pg is given as `ssl`, and when a first attempt should give way to a second:
 * `allow` tries without TLS and uses TLS when the server requires it; `prefer` the
 * other way round, when the server offers no TLS.
 */
export interface TlsPlan {
  readonly ssl: false | Tls.ConnectionOptions
  readonly fallback:
    | { readonly ssl: false | Tls.ConnectionOptions; readonly when: "server requires TLS" | "server has no TLS" }
    | undefined
}

const read = (what: string, source: Source): Effect.Effect<string | undefined, string> => {
  switch (source._tag) {
    case "System":
      return Effect.succeed(undefined)
    case "Pem":
      return Effect.succeed(Redacted.value(source.pem))
    case "File":
      return Effect.tryPromise({
        try: () => Fs.readFile(source.path, "utf8"),
        catch: (cause) =>
          `cannot read the ${what} file ${source.path}: ${(cause as NodeJS.ErrnoException).code ?? String(cause)}`
      })
  }
}

/** Hides the key from `util.inspect`, JSON and spreads of the options (pg-pool does as much for its own copy). */
const withKey = (options: Tls.ConnectionOptions, key: string | undefined): Tls.ConnectionOptions => {
  if (key !== undefined)
    Object.defineProperty(options, "key", { value: key, enumerable: false, writable: true, configurable: true })
  return options
}

/**
 * Node's TLS options for the target's `sslMode`, as libpq means it:
 *
 * | sslmode | TLS | the server's certificate |
 * |---|---|---|
 * | disable | never | — |
 * | allow | when the server requires it | as require |
 * | prefer | when the server offers it | as require |
 * | require | always | unchecked; with a root certificate, its chain is checked as verify-ca |
 * | verify-ca | always | signed by the root certificate; any host name |
 * | verify-full | always | signed by the root certificate (or a system CA with `system`), for the host connected to |
 *
 * A client certificate (sslcert and sslkey) is sent whenever TLS is used.
 */
export const tlsPlan = (target: Target): Effect.Effect<TlsPlan, string> =>
  Effect.gen(function* () {
    if (target.sslMode === "disable") return { ssl: false, fallback: undefined }
    const ca = target.sslRootCert === undefined ? undefined : yield* read("root certificate", target.sslRootCert)
    const cert = target.sslCert === undefined ? undefined : yield* read("client certificate", target.sslCert)
    const key = target.sslKey === undefined ? undefined : yield* read("client key", target.sslKey)
    const client: Tls.ConnectionOptions = cert === undefined ? {} : { cert }
    const verifyChain = target.sslRootCert !== undefined
    const options: Tls.ConnectionOptions =
      target.sslMode === "verify-full"
        ? // Node's default: the chain (to `ca`, or the system's CAs) and the host name.
          { ...client, ...(ca === undefined ? {} : { ca }), rejectUnauthorized: true }
        : verifyChain
          ? // The chain, not the host name (verify-ca; require and weaker modes with a root certificate).
            { ...client, ca: ca!, rejectUnauthorized: true, checkServerIdentity: () => undefined }
          : { ...client, rejectUnauthorized: false }
    const ssl = withKey(options, key)
    switch (target.sslMode) {
      case "allow":
        return { ssl: false, fallback: { ssl, when: "server requires TLS" } }
      case "prefer":
        return { ssl, fallback: { ssl: false, when: "server has no TLS" } }
      default:
        return { ssl, fallback: undefined }
    }
  })

/**
 * The options resolved into a target, without a server: URLs (what pg would make of
 * them instead is in the module's comment), precedence, schemas, and libpq's sslmode
 * mapped onto Node's TLS options.
 */
import * as Fs from "node:fs/promises"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Util from "node:util"
import { assert, describe, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Redacted from "effect/Redacted"
import * as Target from "../src/internal/connection.js"

const secret = "S3cret-Pw_41"
const url = (text: string) => Redacted.make(text)

const resolved = (settings: Target.Settings): Target.Target => {
  const result = Target.resolve(settings)
  if (Either.isLeft(result)) throw new Error(`expected a target, got: ${result.left}`)
  return result.right
}

const problem = (settings: Target.Settings): string => {
  const result = Target.resolve(settings)
  if (Either.isRight(result)) throw new Error("expected a problem, got a target")
  return result.left
}

describe("PgPool's URL", () => {
  it("takes the parts of a PostgreSQL URL, percent-decoded, and libpq's parameters", () => {
    const target = resolved({
      url: url(
        `postgresql://app%40corp:${encodeURIComponent("p@ss/w:rd")}@db.example:6543/orders%20db?sslmode=require&application_name=orders&options=-c%20work_mem%3D64MB`
      )
    })
    assert.strictEqual(target.host, "db.example")
    assert.strictEqual(target.port, 6543)
    assert.strictEqual(target.user, "app@corp")
    assert.strictEqual(Redacted.value(target.password!), "p@ss/w:rd")
    assert.strictEqual(target.database, "orders db")
    assert.strictEqual(target.sslMode, "require")
    assert.strictEqual(target.applicationName, "orders")
    assert.strictEqual(target.startupOptions, "-c work_mem=64MB")
    const v6 = resolved({ url: url("postgres://[::1]:5433/db") })
    assert.strictEqual(v6.host, "::1")
    const socket = resolved({ url: url("postgres:///db?host=/var/run/postgresql&port=5433") })
    assert.strictEqual(socket.host, "/var/run/postgresql")
    assert.strictEqual(socket.port, 5433)
  })

  it("fields given beside the URL replace the URL's", () => {
    const target = resolved({
      url: url(`postgres://app:${secret}@db.example:6543/orders?sslmode=require`),
      host: "replica.example",
      password: Redacted.make("other"),
      sslMode: "disable"
    })
    assert.strictEqual(target.host, "replica.example")
    assert.strictEqual(target.port, 6543)
    assert.strictEqual(Redacted.value(target.password!), "other")
    assert.strictEqual(target.sslMode, "disable")
  })

  it("refuses what is not a PostgreSQL URL, saying why and quoting nothing of it", () => {
    const cases: ReadonlyArray<readonly [string, string]> = [
      // pg resolves these against postgres://base: "getaddrinfo ENOTFOUND base".
      [`app:${secret}@db.example/orders`, "is not a URL"],
      [`db.example:5432/orders`, "is not a URL"],
      [`http://app:${secret}@db.example/orders`, "has the scheme http://"],
      [`postgresql+asyncpg://app:${secret}@db.example/orders`, "Python driver"],
      [`postgres://app:${secret}@[::1/orders`, "IPv6"],
      [`postgres://app:${secret}@db.example:5432:1/orders`, "port"],
      [`postgres://app:${secret}/x@db.example/orders`, "does not parse"],
      [`postgres://app:${secret}@db.example:99999/orders`, "port"],
      [`postgres://app:${secret}@db.example/orders?sslmode=on`, "sslmode"],
      [`postgres://app:${secret}@db.example/orders?connect_timeout=10&x=${secret}`, '"connect_timeout", "x"'],
      [`postgres://app:${secret}@/orders`, "names no host"],
      ["postgres:///orders", "names no host"]
    ]
    for (const [text, expected] of cases) {
      const message = problem({ url: url(text) })
      assert.include(message, expected, text)
      assert.notInclude(message, secret, text)
      assert.notInclude(message, "db.example", text)
    }
  })

  it("reads pg's and asyncpg's ssl parameter as an sslmode", () => {
    assert.strictEqual(resolved({ url: url("postgres://h/db?ssl=require") }).sslMode, "require")
    assert.strictEqual(resolved({ url: url("postgres://h/db?ssl=false") }).sslMode, "disable")
    assert.strictEqual(resolved({ url: url("postgres://h/db?ssl=no-verify") }).sslMode, "require")
    const pgTrue = resolved({ url: url("postgres://h/db?ssl=true") })
    assert.strictEqual(pgTrue.sslMode, "verify-full")
    assert.deepStrictEqual(pgTrue.sslRootCert, { _tag: "System" })
  })
})

describe("PgPool's schema", () => {
  it("becomes the search_path of every connection, quoted and escaped for the startup options", () => {
    assert.strictEqual(resolved({ host: "h", schema: "orders" }).startupOptions, '-c search_path="orders"')
    // A quote doubled (SQL), white space and backslashes escaped (the server splits options on white space).
    assert.strictEqual(
      resolved({ host: "h", schema: 'My "big"\\ store' }).startupOptions,
      '-c search_path="My\\ ""big""\\\\\\ store"'
    )
    assert.strictEqual(
      resolved({ url: url("postgres://h/db?options=-c%20work_mem%3D64MB"), schema: "s" }).startupOptions,
      '-c work_mem=64MB -c search_path="s"'
    )
    assert.isUndefined(resolved({ host: "h" }).startupOptions)
  })

  it("refuses names PostgreSQL would refuse or cut short", () => {
    assert.include(problem({ host: "h", schema: "" }), "empty")
    assert.include(problem({ host: "h", schema: "x".repeat(64) }), "63 bytes")
    assert.include(problem({ host: "h", schema: "pg_mine" }), "pg_")
    assert.strictEqual(resolved({ host: "h", schema: "é".repeat(31) }).schema, "é".repeat(31))
  })
})

describe("PgPool's sslmode", () => {
  /** A throwaway PEM file. */
  const pemFile = (text: string) =>
    Effect.acquireRelease(
      Effect.promise(async () => {
        const dir = await Fs.mkdtemp(Path.join(Os.tmpdir(), "eventfold-tls-unit-"))
        await Fs.writeFile(Path.join(dir, "ca.pem"), text)
        return { dir, path: Path.join(dir, "ca.pem") }
      }),
      ({ dir }) => Effect.promise(() => Fs.rm(dir, { recursive: true, force: true }))
    ).pipe(Effect.map(({ path }) => path))

  const ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
  const key = "-----BEGIN PRIVATE KEY-----\nsecret-key-material\n-----END PRIVATE KEY-----\n"
  const plan = (settings: Target.Settings) => Target.tlsPlan(resolved({ host: "db.example", ...settings }))

  it.effect("maps each mode onto Node's TLS options as libpq means it", () =>
    Effect.gen(function* () {
      assert.deepStrictEqual(yield* plan({}), { ssl: false, fallback: undefined })
      assert.deepStrictEqual(yield* plan({ sslMode: "disable", sslRootCert: ca }), { ssl: false, fallback: undefined })

      // require: encrypted, nothing verified; with a root certificate, the chain (verify-ca).
      const require = yield* plan({ sslMode: "require" })
      assert.deepStrictEqual(require, { ssl: { rejectUnauthorized: false }, fallback: undefined })
      const requireCa = (yield* plan({ sslMode: "require", sslRootCert: ca })).ssl
      assert.isTrue(requireCa !== false && requireCa.rejectUnauthorized === true && requireCa.ca === ca)
      assert.isTrue(requireCa !== false && requireCa.checkServerIdentity?.("other.example", {} as never) === undefined)

      // verify-ca: the chain, not the host name.
      const verifyCa = (yield* plan({ sslMode: "verify-ca", sslRootCert: ca })).ssl
      assert.isTrue(verifyCa !== false && verifyCa.rejectUnauthorized === true && verifyCa.ca === ca)
      assert.isTrue(verifyCa !== false && typeof verifyCa.checkServerIdentity === "function")

      // verify-full: Node's own checks, chain and host name.
      const verifyFull = (yield* plan({ sslMode: "verify-full", sslRootCert: ca })).ssl
      assert.deepStrictEqual(verifyFull, { ca, rejectUnauthorized: true })
      assert.deepStrictEqual((yield* plan({ sslMode: "verify-full", sslRootCert: "system" })).ssl, {
        rejectUnauthorized: true
      })

      // allow: plain first, TLS when the server requires it; prefer: the other way round.
      const allow = yield* plan({ sslMode: "allow" })
      assert.deepStrictEqual(allow, {
        ssl: false,
        fallback: { ssl: { rejectUnauthorized: false }, when: "server requires TLS" }
      })
      const prefer = yield* plan({ sslMode: "prefer" })
      assert.deepStrictEqual(prefer, {
        ssl: { rejectUnauthorized: false },
        fallback: { ssl: false, when: "server has no TLS" }
      })
    })
  )

  it.scoped("reads certificates from files, and keeps the client key out of every printout", () =>
    Effect.gen(function* () {
      const caPath = yield* pemFile(ca)
      const keyPath = yield* pemFile(key)
      const ssl = (yield* plan({
        sslMode: "verify-full",
        sslRootCert: caPath,
        sslCert: ca,
        sslKey: Redacted.make(keyPath)
      })).ssl
      assert.isTrue(ssl !== false)
      if (ssl === false) return
      assert.strictEqual(ssl.ca, ca)
      assert.strictEqual(ssl.cert, ca)
      assert.strictEqual(ssl.key, key)
      for (const text of [Util.inspect(ssl, { depth: null }), JSON.stringify(ssl), JSON.stringify({ ...ssl })]) {
        assert.notInclude(text, "secret-key-material")
      }
      const missing = yield* Effect.flip(plan({ sslMode: "verify-ca", sslRootCert: "/nonexistent/ca.pem" }))
      assert.include(missing, "/nonexistent/ca.pem")
      assert.include(missing, "ENOENT")
    })
  )

  it("refuses combinations libpq refuses", () => {
    assert.include(problem({ host: "h", sslMode: "verify-full" }), "sslrootcert")
    assert.include(problem({ host: "h", sslMode: "verify-ca" }), "PGSSLROOTCERT")
    assert.include(problem({ host: "h", sslMode: "verify-ca", sslRootCert: "system" }), "verify-full")
    assert.include(problem({ host: "h", sslMode: "require", sslCert: ca }), "sslkey")
  })
})

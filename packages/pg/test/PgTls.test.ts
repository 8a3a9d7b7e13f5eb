/**
 * TLS as managed PostgreSQL needs it, against real PostgreSQL 15 servers this file starts:
 *
 * - `tls`: TLS only (`hostssl` in pg_hba.conf), its certificate signed by a CA made here,
 *   for the IP address 127.0.0.1 and no host name; `certuser` logs in by client
 *   certificate;
 * - `plain`: no TLS at all.
 *
 * Each sslmode is checked against them as libpq means it (verify-full checks the chain and
 * the host name, verify-ca the chain only, require nothing unless given a root
 * certificate, allow and prefer fall back), through options in code, the URL and the PG*
 * variables. A refusal is a typed `SqlError` at once (no retries: waiting would not
 * mend it), and the client key appears in none of its texts.
 */
import { execFile } from "node:child_process"
import * as Fs from "node:fs/promises"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Util from "node:util"
import * as SqlClient from "@effect/sql/SqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import { assert, describe, layer } from "@effect/vitest"
import { PgPool } from "@eventfold/pg"
import * as Cause from "effect/Cause"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import * as PostgresServer from "../../../test/support/PostgresServer.js"
import * as Driver from "../src/internal/pgDriver.js"

/** The system's PostgreSQL 15 (Debian's, built with OpenSSL). */
const BIN = "/usr/lib/postgresql/15/bin"

const openssl = (cwd: string, ...args: ReadonlyArray<string>) =>
  Effect.async<void, Error>((resume) => {
    execFile("openssl", args, { cwd }, (error, _stdout, stderr) =>
      resume(error === null ? Effect.void : Effect.fail(new Error(`openssl ${args[0]} failed: ${stderr}`)))
    )
  })

/** A CA, a server certificate for 127.0.0.1 (an IP address only), a client certificate for `certuser`, and a CA that signed neither. */
const makeCertificates = Effect.gen(function* () {
  const dir = yield* Effect.acquireRelease(
    Effect.promise(() => Fs.mkdtemp(Path.join(Os.tmpdir(), "eventfold-tls-"))),
    (dir) => Effect.promise(() => Fs.rm(dir, { recursive: true, force: true }))
  )
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
  const ca = (name: string) =>
    openssl(
      dir,
      "req",
      "-x509",
      ...ec,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.crt`,
      "-days",
      "2",
      "-subj",
      `/CN=${name}`,
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign"
    )
  const signed = (name: string, subject: string, extensions: string) =>
    Effect.gen(function* () {
      yield* Effect.promise(() => Fs.writeFile(Path.join(dir, `${name}.ext`), extensions))
      yield* openssl(dir, "req", "-new", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", subject)
      yield* openssl(
        dir,
        "x509",
        "-req",
        "-in",
        `${name}.csr`,
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        `${name}.crt`,
        "-days",
        "2",
        "-extfile",
        `${name}.ext`
      )
    })
  yield* ca("ca")
  yield* ca("other-ca")
  yield* signed("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
  yield* signed("client", "/CN=certuser", "extendedKeyUsage=clientAuth\n")
  const read = (name: string) => Effect.promise(() => Fs.readFile(Path.join(dir, name), "utf8"))
  return {
    dir,
    path: (name: string) => Path.join(dir, name),
    caPem: yield* read("ca.crt"),
    serverCert: yield* read("server.crt"),
    serverKey: yield* read("server.key"),
    clientKeyPem: yield* read("client.key")
  }
})

class Servers extends Context.Tag("PgTls.test/Servers")<
  Servers,
  {
    readonly tls: PostgresServer.PostgresServer
    readonly plain: PostgresServer.PostgresServer
    readonly certificates: Effect.Effect.Success<typeof makeCertificates>
  }
>() {}

const ServersLive = Layer.scoped(
  Servers,
  Effect.gen(function* () {
    const certificates = yield* makeCertificates
    const tls = yield* PostgresServer.start({
      binDir: BIN,
      files: {
        "server.crt": certificates.serverCert,
        "server.key": certificates.serverKey,
        "root.crt": certificates.caPem,
        "pg_hba.conf": "hostssl all certuser 127.0.0.1/32 cert\nhostssl all all 127.0.0.1/32 trust\n"
      },
      settings: { ssl: "on", ssl_cert_file: "server.crt", ssl_key_file: "server.key", ssl_ca_file: "root.crt" },
      clientSsl: { rejectUnauthorized: false }
    })
    yield* tls.query("CREATE ROLE certuser LOGIN")
    const plain = yield* PostgresServer.start({ binDir: BIN })
    return { tls, plain, certificates }
  })
)

/** Builds a pool with `options` (or from `env` through the preset) and runs `use` with its SqlClient; the outcome as an Exit. */
const withPool = <A>(
  source: PgPool.Options | { readonly env: Record<string, string> },
  use: (sql: SqlClient.SqlClient) => Effect.Effect<A, unknown, PgClient.PgClient>
) => {
  const pool =
    "env" in source
      ? PgPool.layerFromEnv().pipe(
          Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(source.env)))))
        )
      : PgPool.layer(source)
  return Effect.exit(
    Effect.scoped(
      Effect.gen(function* () {
        const context = yield* Layer.build(pool)
        return yield* Effect.flatMap(SqlClient.SqlClient, use).pipe(Effect.provide(context))
      })
    )
  )
}

/** Whether the session is encrypted, and as whom. */
const session = (sql: SqlClient.SqlClient) =>
  Effect.map(
    sql<{ ssl: boolean; user: string }>`SELECT ssl, current_user AS user FROM pg_stat_ssl WHERE pid = pg_backend_pid()`,
    (rows) => rows[0]!
  )

const succeeded = <A, E>(exit: Exit.Exit<A, E>, what: string): A => {
  if (Exit.isFailure(exit)) assert.fail(`${what}: ${Cause.pretty(exit.cause)}`)
  return (exit as Exit.Success<A, E>).value
}

/** The typed error of a pool that did not connect, and every text of it. */
const refused = <A, E>(exit: Exit.Exit<A, E>, what: string) => {
  assert.isTrue(Exit.isFailure(exit), `${what} should not connect`)
  const failure = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : undefined
  assert.isTrue(failure !== undefined && failure._tag === "Some", `${what}: a typed failure, not a defect`)
  const error = (failure as { value: { _tag: string; message: string } }).value
  assert.strictEqual(error._tag, "SqlError", what)
  const texts = [error.message, String(error), Util.inspect(error, { depth: null })]
  if (Exit.isFailure(exit)) texts.push(Cause.pretty(exit.cause))
  return { error, texts: texts.join("\n") }
}

layer(ServersLive, { excludeTestServices: true, timeout: "120 seconds" })("PgPool over TLS", (it) => {
  describe("a server that requires TLS, its certificate for 127.0.0.1", () => {
    it.effect("verify-full with the right CA and host connects encrypted, LISTEN connections included", () =>
      Effect.gen(function* () {
        const { tls, certificates } = yield* Servers
        const outcome = yield* withPool(
          {
            host: tls.host,
            port: tls.port,
            user: "postgres",
            database: "postgres",
            sslMode: "verify-full",
            sslRootCert: certificates.path("ca.crt")
          },
          (sql) =>
            Effect.gen(function* () {
              const s = yield* session(sql)
              // A LISTEN connection, opened from the pool's settings, is encrypted too (the server takes no other).
              const pg = yield* PgClient.PgClient
              const received = yield* Driver.listen(pg.config, "eventfold_tls_test", () =>
                Effect.ignore(sql`SELECT pg_notify('eventfold_tls_test', 'hello')`)
              ).pipe(Stream.take(1), Stream.runCollect, Effect.timeout("10 seconds"))
              return { ...s, received: [...received] }
            })
        )
        const result = succeeded(outcome, "verify-full")
        assert.isTrue(result.ssl)
        assert.deepStrictEqual(result.received, ["hello"])
        // The same from a URL, and the CA given as PEM text.
        const fromUrl = yield* withPool(
          {
            url: Redacted.make(
              `postgres://postgres@${tls.host}:${tls.port}/postgres?sslmode=verify-full&sslrootcert=${encodeURIComponent(certificates.path("ca.crt"))}`
            )
          },
          session
        )
        assert.isTrue(succeeded(fromUrl, "verify-full from the URL").ssl)
        const pem = yield* withPool(
          { host: tls.host, port: tls.port, user: "postgres", sslMode: "verify-full", sslRootCert: certificates.caPem },
          session
        )
        assert.isTrue(succeeded(pem, "verify-full with a PEM CA").ssl)
      })
    )

    it.effect(
      "verify-full with a host name the certificate does not name fails at once; verify-ca does not check it",
      () =>
        Effect.gen(function* () {
          const { tls, certificates } = yield* Servers
          const options = {
            host: "localhost",
            port: tls.port,
            user: "postgres",
            sslRootCert: certificates.path("ca.crt")
          } as const
          const started = Date.now()
          const wrongHost = refused(
            yield* withPool({ ...options, sslMode: "verify-full" }, session),
            "verify-full to localhost"
          )
          assert.match(wrongHost.error.message, /localhost/)
          assert.match(wrongHost.error.message, /altnames|does not match/i)
          assert.include(wrongHost.error.message, "sslmode verify-full")
          // Not retried for the 10 seconds of the default connectRetry: a certificate does not mend.
          assert.isBelow(Date.now() - started, 5000)
          const verifyCa = yield* withPool({ ...options, sslMode: "verify-ca" }, session)
          assert.isTrue(succeeded(verifyCa, "verify-ca to localhost").ssl)
        })
    )

    it.effect(
      "a CA that did not sign the server's certificate fails, with verify-full, verify-ca and require alike",
      () =>
        Effect.gen(function* () {
          const { tls, certificates } = yield* Servers
          for (const sslMode of ["verify-full", "verify-ca", "require"] as const) {
            const wrongCa = refused(
              yield* withPool(
                {
                  host: tls.host,
                  port: tls.port,
                  user: "postgres",
                  sslMode,
                  sslRootCert: certificates.path("other-ca.crt")
                },
                session
              ),
              `${sslMode} with another CA`
            )
            assert.match(wrongCa.error.message, /certificate/i, sslMode)
          }
        })
    )

    it.effect(
      "require without a CA connects encrypted, checking nothing; allow and prefer use TLS as the server asks",
      () =>
        Effect.gen(function* () {
          const { tls } = yield* Servers
          for (const sslMode of ["require", "allow", "prefer"] as const) {
            const outcome = yield* withPool({ host: tls.host, port: tls.port, user: "postgres", sslMode }, session)
            assert.isTrue(succeeded(outcome, sslMode).ssl, sslMode)
          }
        })
    )

    it.effect("disable is refused by a TLS-only server: a typed error at once", () =>
      Effect.gen(function* () {
        const { tls } = yield* Servers
        const started = Date.now()
        for (const options of [
          { host: tls.host, port: tls.port, user: "postgres", sslMode: "disable" as const },
          // The default is disable (as pg's; libpq's is prefer).
          { url: Redacted.make(`postgres://postgres@${tls.host}:${tls.port}/postgres`) }
        ]) {
          const plain = refused(yield* withPool(options, session), "disable")
          assert.include(plain.error.message, "no pg_hba.conf entry")
          assert.include(plain.error.message, "no encryption")
        }
        assert.isBelow(Date.now() - started, 5000)
      })
    )

    it.effect("a client certificate from PGSSLCERT and PGSSLKEY logs in; the key is in no error", () =>
      Effect.gen(function* () {
        const { tls, certificates } = yield* Servers
        const env = {
          PGHOST: tls.host,
          PGPORT: String(tls.port),
          PGUSER: "certuser",
          PGDATABASE: "postgres",
          PGSSLMODE: "verify-full",
          PGSSLROOTCERT: certificates.path("ca.crt"),
          PGSSLCERT: certificates.path("client.crt"),
          PGSSLKEY: certificates.path("client.key")
        }
        const outcome = yield* withPool({ env }, session)
        assert.deepStrictEqual(succeeded(outcome, "certuser with its certificate"), { ssl: true, user: "certuser" })
        // Without the certificate, the server refuses certuser.
        const { PGSSLCERT: _c, PGSSLKEY: _k, ...withoutCertificate } = env
        const anonymous = refused(
          yield* withPool({ env: withoutCertificate }, session),
          "certuser without a certificate"
        )
        assert.include(anonymous.error.message, "certificate")
        // With the key given as PEM text, a failing connection (wrong host name) prints nothing of it.
        const failing = refused(
          yield* withPool(
            {
              host: "localhost",
              port: tls.port,
              user: "certuser",
              sslMode: "verify-full",
              sslRootCert: certificates.caPem,
              sslCert: certificates.path("client.crt"),
              sslKey: Redacted.make(certificates.clientKeyPem)
            },
            session
          ),
          "a failing connection with a client key"
        )
        const keyBody = certificates.clientKeyPem.split("\n")[1]!
        assert.notInclude(failing.texts, keyBody)
      })
    )
  })

  describe("a server without TLS", () => {
    it.effect("prefer falls back to a plain connection; require, and stronger, fail at once", () =>
      Effect.gen(function* () {
        const { plain, certificates } = yield* Servers
        const prefer = yield* withPool(
          { host: plain.host, port: plain.port, user: "postgres", sslMode: "prefer" },
          session
        )
        assert.isFalse(succeeded(prefer, "prefer").ssl)
        const allow = yield* withPool(
          { host: plain.host, port: plain.port, user: "postgres", sslMode: "allow" },
          session
        )
        assert.isFalse(succeeded(allow, "allow").ssl)
        const started = Date.now()
        for (const sslMode of ["require", "verify-full"] as const) {
          const required = refused(
            yield* withPool(
              {
                host: plain.host,
                port: plain.port,
                user: "postgres",
                sslMode,
                sslRootCert: certificates.path("ca.crt")
              },
              session
            ),
            sslMode
          )
          assert.include(required.error.message, "does not support SSL")
        }
        assert.isBelow(Date.now() - started, 5000)
      })
    )
  })
})

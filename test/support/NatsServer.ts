/**
 * A NATS server with JetStream that a test owns, for what the shared server must never
 * see: being down when a relay starts, being killed, requiring a password. It runs
 * `nats-server` (`EVENTFOLD_NATS_SERVER`, else `/usr/sbin/nats-server`, else the PATH's)
 * on a port of 127.0.0.1 chosen up front, so that a test can start it after the relay,
 * with its JetStream data in a throwaway directory; it is killed and removed when the
 * scope closes.
 *
 * ```ts
 * const port = yield* NatsServer.freePort
 * const server = yield* NatsServer.start({ port, user: "relay", password: "S3cret" })
 * ```
 */

import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as FsP from "node:fs/promises"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"

export class NatsServerError extends Schema.TaggedError<NatsServerError>()("NatsServerError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

const HOST = "127.0.0.1"

const binary = (): string => {
  const configured = process.env.EVENTFOLD_NATS_SERVER
  if (configured !== undefined && configured !== "") return configured
  return Fs.existsSync("/usr/sbin/nats-server") ? "/usr/sbin/nats-server" : "nats-server"
}

/** Whether a NATS server binary is there to start. */
export const available = (): boolean => {
  const bin = binary()
  if (bin.includes("/")) return Fs.existsSync(bin)
  return (process.env.PATH ?? "").split(":").some((dir) => Fs.existsSync(Path.join(dir, bin)))
}

/** A port nothing listens on now. */
export const freePort: Effect.Effect<number, NatsServerError> = Effect.async((resume) => {
  const server = Net.createServer()
  server.unref()
  server.once("error", (cause) => resume(Effect.fail(new NatsServerError({ message: "no free port", cause }))))
  server.listen(0, HOST, () => {
    const { port } = server.address() as Net.AddressInfo
    server.close(() => resume(Effect.succeed(port)))
  })
})

const accepts = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = Net.connect({ host: HOST, port })
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(500, () => done(false))
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
  })

export interface Options {
  readonly port: number
  readonly user?: string
  readonly password?: string
}

export interface NatsServer {
  readonly port: number
  /** `nats://127.0.0.1:<port>`, without credentials. */
  readonly url: string
  /** SIGKILL: the server is gone at once. */
  readonly kill: Effect.Effect<void>
}

/** Starts the server and waits until it accepts connections. */
export const start = (options: Options): Effect.Effect<NatsServer, NatsServerError, Scope.Scope> =>
  Effect.gen(function* () {
    const dir = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => FsP.mkdtemp(Path.join(Os.tmpdir(), "eventfold-test-nats-")),
        catch: (cause) => new NatsServerError({ message: "cannot make a data directory", cause })
      }),
      (dir) => Effect.promise(() => FsP.rm(dir, { recursive: true, force: true }))
    )
    const args = ["-a", HOST, "-p", String(options.port), "-js", "-sd", dir]
    if (options.user !== undefined) args.push("--user", options.user)
    if (options.password !== undefined) args.push("--pass", options.password)
    const output: Array<string> = []
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const child: ChildProcess = spawn(binary(), args, { stdio: ["ignore", "pipe", "pipe"] })
        child.stdout?.on("data", (chunk: Buffer) => output.push(chunk.toString()))
        child.stderr?.on("data", (chunk: Buffer) => output.push(chunk.toString()))
        child.on("error", (error) => output.push(`spawn failed: ${error.message}`))
        return child
      }),
      (child) =>
        Effect.async<void>((resume) => {
          if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
          child.once("exit", () => resume(Effect.void))
          child.kill("SIGKILL")
        })
    )
    yield* Effect.tryPromise(() => accepts(options.port)).pipe(
      Effect.filterOrFail((ok) => ok),
      Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("10 seconds"))),
      Effect.mapError(
        (cause) =>
          new NatsServerError({ message: `nats-server did not start on ${options.port}: ${output.join("")}`, cause })
      )
    )
    const kill = Effect.async<void>((resume) => {
      if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
      child.once("exit", () => resume(Effect.void))
      child.kill("SIGKILL")
    })
    return { port: options.port, url: `nats://${HOST}:${options.port}`, kill }
  })

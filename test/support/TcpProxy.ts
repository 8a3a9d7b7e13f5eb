/**
 * A TCP proxy between the code under test and a server (PostgreSQL, NATS), with
 * the network faults the fault suites inject:
 *
 * - `reset`: every live connection is torn down with a TCP RST on both sides
 *   (what a crashed middlebox or a killed peer looks like), new ones are accepted;
 * - `pause` / `resume`: the server is unreachable: live connections are cut, new
 *   ones are reset as soon as they arrive, until `resume`;
 * - `stall` / `unstall`: a hung network: sockets stay open but no byte moves in
 *   either direction (new connections too) until `unstall`, when everything held
 *   back is delivered in order.
 *
 * ```ts
 * const proxy = yield* TcpProxy.make({ host: "127.0.0.1", port: server.port }) // closed with the scope
 * const url = `postgres://postgres@127.0.0.1:${proxy.port}/db`
 * yield* proxy.reset
 * ```
 */

import * as Net from "node:net"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"

/** The proxy could not listen. */
export class TcpProxyError extends Schema.TaggedError<TcpProxyError>()("TcpProxyError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/** Where the proxy forwards to. */
export interface Target {
  readonly host: string
  readonly port: number
}

/** A running proxy, listening on 127.0.0.1. */
export interface TcpProxy {
  readonly host: string
  readonly port: number
  /** Tears down every live connection with an RST (both sides); new connections are accepted. */
  readonly reset: Effect.Effect<void>
  /** Cuts every live connection and resets new ones until {@link TcpProxy.resume}. */
  readonly pause: Effect.Effect<void>
  readonly resume: Effect.Effect<void>
  /** Stops moving bytes, in both directions and on new connections too, keeping every socket open. */
  readonly stall: Effect.Effect<void>
  /** Delivers what was held back and forwards again. */
  readonly unstall: Effect.Effect<void>
  /** Client connections open now (through the proxy, to the target or on their way to it). */
  readonly connections: Effect.Effect<number>
  /** Client connections accepted since the proxy started (including those refused while paused). */
  readonly accepted: Effect.Effect<number>
}

/** A client connection and its upstream connection. */
interface Pair {
  readonly client: Net.Socket
  readonly upstream: Net.Socket
}

/** Kills a socket with an RST where the platform can, otherwise closes it. */
const rst = (socket: Net.Socket): void => {
  if (socket.destroyed) return
  // resetAndDestroy (Node >= 18.3) needs a connected socket; one still connecting is just destroyed.
  if (typeof socket.resetAndDestroy === "function" && socket.readyState === "open") socket.resetAndDestroy()
  else socket.destroy()
}

/**
 * Starts a proxy to `target` on a free port of 127.0.0.1; it stops (every
 * connection reset) when the scope closes.
 */
export const make = (target: Target): Effect.Effect<TcpProxy, TcpProxyError, Scope.Scope> =>
  Effect.gen(function* () {
    const pairs = new Set<Pair>()
    let paused = false
    let stalled = false
    let accepted = 0

    /** Copies `from` to `to` with backpressure, holding everything while the proxy stalls. */
    const forward = (from: Net.Socket, to: Net.Socket) => {
      from.on("data", (chunk: Buffer) => {
        if (!to.write(chunk)) {
          from.pause()
          to.once("drain", () => {
            if (!stalled && !from.destroyed) from.resume()
          })
        }
      })
      // A clean end on one side is passed on as a clean end.
      from.on("end", () => to.end())
    }

    const server = Net.createServer({ pauseOnConnect: true }, (client) => {
      accepted++
      if (paused) {
        // The reset is the point; the client's side of it is the code under test's to see.
        client.on("error", () => undefined)
        rst(client)
        return
      }
      const upstream = Net.connect({ host: target.host, port: target.port })
      // Nothing flows until both sides are wired (and only when not stalled).
      upstream.pause()
      const pair: Pair = { client, upstream }
      pairs.add(pair)
      for (const [socket, other] of [
        [client, upstream],
        [upstream, client]
      ] as const) {
        socket.setNoDelay(true)
        // A failure on one side (an RST from the server, a refused connection) is passed on as an RST.
        socket.on("error", () => rst(other))
        socket.on("close", () => {
          pairs.delete(pair)
          if (!other.destroyed) other.destroy()
        })
        forward(socket, other)
      }
      if (!stalled) {
        client.resume()
        upstream.resume()
      }
    })
    // Errors while listening fail `make` (below); later ones (a failed accept) only cost that connection.
    server.on("error", () => undefined)

    const port = yield* Effect.acquireRelease(
      Effect.async<number, TcpProxyError>((resume) => {
        const onError = (cause: Error) =>
          resume(Effect.fail(new TcpProxyError({ message: `TCP proxy: cannot listen: ${cause.message}`, cause })))
        server.once("error", onError)
        server.listen(0, "127.0.0.1", () => {
          server.off("error", onError)
          resume(Effect.succeed((server.address() as Net.AddressInfo).port))
        })
      }),
      () =>
        Effect.async<void>((resume) => {
          for (const pair of pairs) {
            rst(pair.client)
            rst(pair.upstream)
          }
          server.close(() => resume(Effect.void))
        })
    )

    const cutAll = (how: (socket: Net.Socket) => void) => {
      for (const pair of [...pairs]) {
        how(pair.client)
        how(pair.upstream)
      }
    }

    return {
      host: "127.0.0.1",
      port,
      reset: Effect.sync(() => cutAll(rst)),
      pause: Effect.sync(() => {
        paused = true
        cutAll((socket) => socket.destroy())
      }),
      resume: Effect.sync(() => {
        paused = false
      }),
      stall: Effect.sync(() => {
        stalled = true
        for (const pair of pairs) {
          pair.client.pause()
          pair.upstream.pause()
        }
      }),
      unstall: Effect.sync(() => {
        stalled = false
        for (const pair of pairs) {
          // A side waiting for the other to drain is resumed by its drain listener.
          if (pair.upstream.writableNeedDrain !== true) pair.client.resume()
          if (pair.client.writableNeedDrain !== true) pair.upstream.resume()
        }
      }),
      connections: Effect.sync(() => pairs.size),
      accepted: Effect.sync(() => accepted)
    } satisfies TcpProxy
  })

/**
 * W7: a subscriber follows the log from its start while writers append. The
 * harness (writers, bookkeeping, the final count) is shared by both sides; the
 * raw-SQL subscriber is here, Eventfold's (`EventStore.subscribe`) in
 * `subscriberEventfold.ts`.
 *
 * Both sides write with the same code, raw.ts's plain INSERT on connections of
 * their own, so that the writers cost the same and the figures differ by the
 * subscriber alone (W2 measures Eventfold's appends). The trigger that wakes
 * Eventfold's subscribers fires on any INSERT into `events`, so these writes wake
 * it as its own appends would. Writers and subscriber share the process: a
 * subscriber that costs more CPU slows the writers down, as it would in an
 * application.
 *
 * One subscriber follows the whole run: the warm-up's appends first (untimed,
 * until it has caught up with them), then the timed ones. At the end, the events in
 * the table (`SELECT global_position FROM events`) are compared with what it
 * delivered: `skipped` are events it never delivered, `duplicates` events it
 * delivered more than once, `foreign` positions it delivered that are not in the
 * table. Latency: from just before the append call to the delivery of the event
 * (writers and subscriber read the same clock). Throughput: distinct events
 * delivered per second, from the first append to the last delivery.
 */
import pg from "pg"
import type { ItemAdded } from "./payload.js"
import type { Measurement, RunContext, Runner } from "./protocol.js"
import { READ_LOG, singleAppends } from "./raw.js"
import { Latencies } from "./stats.js"

/** Hands one delivered event to the harness, with the time its batch was delivered. */
export type Deliver = (aggregateId: string, version: number, position: number, at: number) => void

export interface Follower {
  /** Stops following; resolves once the subscriber has stopped. */
  readonly stop: () => Promise<void>
}

/** What the writers left in the table, read once they had all finished. */
export interface Written {
  readonly events: number
  readonly lastPosition: number
}

export interface SubscriberSide {
  /** Starts following the log from its start; `fail` reports an error that ended the subscriber. */
  readonly start: (deliver: Deliver, fail: (error: unknown) => void) => Promise<Follower>
  /** Whether the subscriber has delivered everything it is going to, once the writers wrote `written`. */
  readonly caughtUp: (tally: Tally, written: Written) => boolean
}

/** How long a subscriber may take to catch up once the writers have finished. */
const CATCH_UP_MS = 30_000

const key = (aggregateId: string, version: number) => `${aggregateId}:${version}`

/** What the subscriber delivered, and when. */
export class Tally {
  /** Stream and version → the time just before the append call, for the timed appends. */
  readonly started = new Map<string, number>()
  /** Positions delivered at least once. */
  readonly positions = new Set<number>()
  readonly latencies = new Latencies()
  /** Distinct events delivered, warm-up included. */
  distinct = 0
  timedDelivered = 0
  timedDuplicates = 0
  warmupDuplicates = 0
  lastPosition = 0
  /** When the last timed event was delivered. */
  lastAt = 0
  private check: (() => void) | undefined
  private failure: { readonly error: unknown } | undefined

  readonly deliver: Deliver = (aggregateId, version, position, at) => {
    const start = this.started.get(key(aggregateId, version))
    if (this.positions.has(position)) {
      if (start === undefined) this.warmupDuplicates++
      else this.timedDuplicates++
    } else {
      this.positions.add(position)
      this.distinct++
      if (position > this.lastPosition) this.lastPosition = position
      if (start !== undefined) {
        this.timedDelivered++
        this.latencies.samples.push(at - start)
        if (at > this.lastAt) this.lastAt = at
      }
    }
    this.check?.()
  }

  readonly fail = (error: unknown) => {
    this.failure ??= { error }
    this.check?.()
  }

  /** Resolves with true once `done()` holds, with false after `timeoutMs`; rejects when the subscriber failed. */
  until(done: () => boolean, timeoutMs: number): Promise<boolean> {
    return new Promise((resolve, reject) => {
      const finish = (outcome: boolean | { readonly error: unknown }) => {
        clearTimeout(timer)
        this.check = undefined
        if (typeof outcome === "boolean") resolve(outcome)
        else reject(outcome.error)
      }
      const timer = setTimeout(() => finish(false), timeoutMs)
      this.check = () => {
        if (this.failure !== undefined) finish(this.failure)
        else if (done()) finish(true)
      }
      this.check()
    })
  }
}

const connect = async (url: string) => {
  const client = new pg.Client({ connectionString: url, application_name: "eventfold-bench-w7" })
  await client.connect()
  return client
}

/** Single-event appends by every writer (raw.ts's W2 loop); `started` gets each append's start. */
const write = async (
  clients: ReadonlyArray<pg.Client>,
  appends: number,
  streamLength: number,
  started: Map<string, number> | undefined
) => {
  const onStart =
    started === undefined
      ? undefined
      : (aggregateId: string, version: number) => started.set(key(aggregateId, version), performance.now())
  const { streams } = await singleAppends(streamLength, onStart)(clients, appends, new Latencies())
  return streams
}

const written = async (client: pg.Client): Promise<Written> => {
  const { rows } = await client.query<{ events: number; last: string }>(
    "SELECT count(*)::int AS events, coalesce(max(global_position), 0)::text AS last FROM events"
  )
  return { events: rows[0]!.events, lastPosition: Number(rows[0]!.last) }
}

/** Runs W7 with `side`'s subscriber; see the module's comment. */
export const measure = async (context: RunContext, side: SubscriberSide): Promise<Measurement> => {
  const { writers, appends, streamLength } = context.params
  const warmup = context.params.warmup ?? 0
  const clients = await Promise.all(Array.from({ length: writers! }, () => connect(context.url)))
  const tally = new Tally()
  let follower: Follower | undefined
  try {
    follower = await side.start(tally.deliver, tally.fail)
    const warmupStreams = await write(clients, warmup, streamLength!, undefined)
    const afterWarmup = await written(clients[0]!)
    if (!(await tally.until(() => side.caughtUp(tally, afterWarmup), CATCH_UP_MS))) {
      throw new Error(`the subscriber did not catch up with the warm-up within ${CATCH_UP_MS / 1000} s`)
    }

    const cpu = process.cpuUsage()
    const firstAppend = performance.now()
    const streams = await write(clients, appends!, streamLength!, tally.started)
    const atEnd = await written(clients[0]!)
    const caughtUp = await tally.until(() => side.caughtUp(tally, atEnd), CATCH_UP_MS)
    const { user, system } = process.cpuUsage(cpu)
    const stopping = follower
    follower = undefined
    await stopping.stop()

    // Everything in the table against what was delivered.
    const { rows } = await clients[0]!.query<{ global_position: string; aggregate_id: string; version: number }>(
      "SELECT global_position, aggregate_id, version FROM events"
    )
    let stored = 0
    let skipped = 0
    let warmupSkipped = 0
    let inTable = 0
    for (const row of rows) {
      const timed = tally.started.has(key(row.aggregate_id, row.version))
      if (timed) stored++
      if (tally.positions.has(Number(row.global_position))) inTable++
      else if (timed) skipped++
      else warmupSkipped++
    }
    return {
      events: tally.timedDelivered,
      operations: tally.latencies.samples.length,
      elapsedMs: tally.lastAt - firstAppend,
      latencies: tally.latencies.summary(),
      cpuMs: (user + system) / 1000,
      counters: {
        delivered: tally.timedDelivered,
        duplicates: tally.timedDuplicates,
        skipped,
        stored,
        streams,
        foreign: tally.positions.size - inTable,
        timedOut: caughtUp ? 0 : 1,
        warmupEvents: warmup,
        warmupStreams,
        warmupDelivered: tally.distinct - tally.timedDelivered,
        warmupDuplicates: tally.warmupDuplicates,
        warmupSkipped
      }
    }
  } finally {
    await follower?.stop().catch(() => undefined)
    await Promise.all(clients.map((c) => c.end()))
  }
}

/** Rows per poll, and the pause when a poll found nothing new. */
const PAGE = 1_000
const POLL_MS = 5

/**
 * The raw-SQL subscriber: naive keyset polling, `global_position > last` in pages of
 * 1,000, a poll every 5 ms when nothing is new. It skips an event whose transaction
 * commits after one with a higher position was read: the comparison W7 makes.
 * It has caught up once it has passed the last position written.
 */
export const raw: Runner = (context) =>
  measure(context, {
    caughtUp: (tally, written) => tally.lastPosition >= written.lastPosition,
    start: async (deliver, fail) => {
      const client = await connect(context.url)
      let running = true
      const loop = (async () => {
        let cursor = "0"
        while (running) {
          const { rows } = await client.query<{
            global_position: string
            aggregate_id: string
            version: number
            payload: ItemAdded
          }>({ ...READ_LOG, values: [cursor, PAGE] })
          const at = performance.now()
          for (const row of rows) deliver(row.aggregate_id, row.version, Number(row.global_position), at)
          const last = rows[rows.length - 1]
          if (last === undefined) await new Promise((resolve) => setTimeout(resolve, POLL_MS))
          else cursor = last.global_position
        }
      })().catch(fail)
      return {
        stop: async () => {
          running = false
          await loop
          await client.end()
        }
      }
    }
  })

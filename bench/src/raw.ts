/**
 * The raw-SQL baseline: plain `pg`, the cheapest correct SQL on Eventfold's own
 * schema. Named (prepared) statements; each writer holds a checked-out
 * connection, so a lost race costs an error reply and not a reconnect (pg's
 * `pool.query()` would drop the connection). Appends compute versions on the
 * client and let the unique constraint (aggregate_id, aggregate_type, version)
 * reject a stale expectation; a writer that loses reads the current version.
 *
 * Every runner first does an untimed warm-up (`params.warmup` operations of the
 * same kind, on streams of their own) so that both sides are measured with their
 * code already compiled by the JIT.
 */
import pg from "pg"
import { AGGREGATE_TYPE, EVENT_TYPE, emptyTotals, fold, type ItemAdded, payload } from "./payload.js"
import { type Measurement, type RunContext, type Runner, share } from "./protocol.js"
import { Latencies } from "./stats.js"

const INSERT_ONE = {
  name: "bench_insert_one",
  text: `INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7)`
}

const INSERT_MANY = {
  name: "bench_insert_many",
  text: `INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp, payload)
         SELECT e.event_id, $1, $2, e.event_type, e.version, e.ts, e.payload
           FROM unnest($3::uuid[], $4::text[], $5::int[], $6::timestamptz[], $7::jsonb[])
             AS e(event_id, event_type, version, ts, payload)`
}

const CURRENT_VERSION = {
  name: "bench_current_version",
  text: "SELECT coalesce(max(version), 0)::int AS version FROM events WHERE aggregate_id = $1 AND aggregate_type = $2"
}

const READ_STREAM = {
  name: "bench_read_stream",
  text: `SELECT version, event_type, payload FROM events
          WHERE aggregate_id = $1 AND aggregate_type = $2 ORDER BY version`
}

// The same envelope Eventfold's readAll hands out (a reader of the log needs ids, stream,
// version and time besides the payload), so that both sides do the same work.
export const READ_LOG = {
  name: "bench_read_log",
  text: `SELECT global_position, event_id, event_type, aggregate_id, aggregate_type, version, tenant_id, actor_id,
                timestamp, created_at, payload, metadata FROM events
          WHERE global_position > $1 ORDER BY global_position LIMIT $2`
}

const withClients = async <A>(url: string, count: number, f: (clients: ReadonlyArray<pg.Client>) => Promise<A>) => {
  const clients = await Promise.all(
    Array.from({ length: count }, async () => {
      const client = new pg.Client({ connectionString: url, application_name: "eventfold-bench-raw" })
      await client.connect()
      return client
    })
  )
  try {
    return await f(clients)
  } finally {
    await Promise.all(clients.map((c) => c.end()))
  }
}

const appendOne = (client: pg.Client, aggregateId: string, version: number, event: ItemAdded) =>
  client.query({
    ...INSERT_ONE,
    values: [
      crypto.randomUUID(),
      aggregateId,
      AGGREGATE_TYPE,
      EVENT_TYPE,
      version,
      new Date().toISOString(),
      JSON.stringify(event)
    ]
  })

const isVersionConflict = (error: unknown): boolean =>
  error instanceof pg.DatabaseError && error.code === "23505" && error.constraint === "uq_events_aggregate_version"

/**
 * Runs `phase` twice on the same connections: `warmup` operations untimed, then
 * `operations` timed. `phase` runs all writers and returns its counters.
 */
const warmThenTime = async (
  context: RunContext,
  connections: number,
  phase: (
    clients: ReadonlyArray<pg.Client>,
    operations: number,
    latencies: Latencies
  ) => Promise<Readonly<Record<string, number>>>,
  operations: number,
  events: (counters: Readonly<Record<string, number>>) => number
): Promise<Measurement> =>
  withClients(context.url, connections, async (clients) => {
    const warmup = await phase(clients, context.params.warmup ?? 0, new Latencies())
    const latencies = new Latencies()
    const cpu = process.cpuUsage()
    const start = performance.now()
    const counters = await phase(clients, operations, latencies)
    const elapsedMs = performance.now() - start
    const { user, system } = process.cpuUsage(cpu)
    return {
      events: events(counters),
      cpuMs: (user + system) / 1000,
      operations: latencies.samples.length,
      elapsedMs,
      latencies: latencies.summary(),
      counters: {
        ...counters,
        ...Object.fromEntries(Object.entries(warmup).map(([k, v]) => [`warmup${k[0]!.toUpperCase()}${k.slice(1)}`, v]))
      }
    }
  })

/**
 * Single-event appends; each writer starts a new stream every `streamLength` appends.
 * `onStart` hears of each append just before it is sent (W7 times delivery from there).
 */
export const singleAppends =
  (streamLength: number, onStart?: (aggregateId: string, version: number) => void) =>
  async (clients: ReadonlyArray<pg.Client>, appends: number, latencies: Latencies) => {
    let streams = 0
    await Promise.all(
      clients.map(async (client, w) => {
        let aggregateId = ""
        for (let i = 0; i < share(appends, clients.length, w); i++) {
          const version = (i % streamLength) + 1
          if (version === 1) {
            aggregateId = crypto.randomUUID()
            streams++
          }
          const event = payload(aggregateId, i)
          onStart?.(aggregateId, version)
          const t = performance.now()
          await appendOne(client, aggregateId, version, event)
          latencies.time(t)
        }
      })
    )
    return { events: appends, streams }
  }

const W1: Runner = (context) => warmThenTime(context, 1, singleAppends(1), context.params.appends!, (c) => c.events!)

const W2: Runner = (context) =>
  warmThenTime(
    context,
    context.params.writers!,
    singleAppends(context.params.streamLength!),
    context.params.appends!,
    (c) => c.events!
  )

const W3: Runner = (context) => {
  const batch = context.params.batch!
  return warmThenTime(
    context,
    1,
    async ([client], appends, latencies) => {
      for (let i = 0; i < appends; i++) {
        const aggregateId = crypto.randomUUID()
        const events = Array.from({ length: batch }, (_, k) => payload(aggregateId, i * batch + k))
        const t = performance.now()
        const now = new Date().toISOString()
        await client!.query({
          ...INSERT_MANY,
          values: [
            aggregateId,
            AGGREGATE_TYPE,
            events.map(() => crypto.randomUUID()),
            events.map(() => EVENT_TYPE),
            events.map((_, k) => k + 1),
            events.map(() => now),
            events.map((e) => JSON.stringify(e))
          ]
        })
        latencies.time(t)
      }
      return { events: appends * batch, streams: appends }
    },
    context.params.appends!,
    (c) => c.events!
  )
}

const W4: Runner = (context) => {
  const aggregateId = String(context.seed.aggregateId)
  return warmThenTime(
    context,
    1,
    async ([client], reads, latencies) => {
      let events = 0
      let first: typeof emptyTotals | undefined
      let last = emptyTotals
      let mismatches = 0
      for (let r = 0; r < reads; r++) {
        const t = performance.now()
        const { rows } = await client!.query<{ version: number; event_type: string; payload: ItemAdded }>({
          ...READ_STREAM,
          values: [aggregateId, AGGREGATE_TYPE]
        })
        let state = emptyTotals
        for (const row of rows) {
          if (row.event_type !== EVENT_TYPE) throw new Error(`unexpected event type ${row.event_type}`)
          state = fold(state, row.payload)
        }
        latencies.time(t)
        events += rows.length
        first ??= state
        if (state.amount !== first.amount || state.items !== first.items) mismatches++
        last = state
      }
      return { events, items: last.items, amount: last.amount, mismatches }
    },
    context.params.reads!,
    (c) => c.events!
  )
}

const W5: Runner = (context) => {
  const pageSize = context.params.pageSize!
  return warmThenTime(
    context,
    1,
    async ([client], limit, latencies) => {
      // `limit` events from the start of the log (the warm-up reads a prefix).
      let events = 0
      let quantity = 0
      let amount = 0
      let outOfOrder = 0
      let previous = 0
      let cursor = "0"
      let mark = performance.now()
      while (events < limit) {
        const { rows } = await client!.query<{ global_position: string; event_type: string; payload: ItemAdded }>({
          ...READ_LOG,
          values: [cursor, Math.min(pageSize, limit - events)]
        })
        for (const row of rows) {
          const position = Number(row.global_position)
          if (position <= previous) outOfOrder++
          previous = position
          if (row.event_type !== EVENT_TYPE) throw new Error(`unexpected event type ${row.event_type}`)
          quantity += row.payload.quantity
          amount += row.payload.quantity * row.payload.unit_price
          if (++events % 1000 === 0) {
            latencies.time(mark)
            mark = performance.now()
          }
        }
        if (rows.length < pageSize) break
        cursor = rows[rows.length - 1]!.global_position
      }
      return { events, quantity, amount, outOfOrder }
    },
    Number.MAX_SAFE_INTEGER,
    (c) => c.events!
  )
}

const W6: Runner = (context) =>
  warmThenTime(
    context,
    context.params.writers!,
    async (clients, attempts, latencies) => {
      const aggregateId = crypto.randomUUID()
      let issued = 0
      let successes = 0
      let conflicts = 0
      let claimedTwice = 0
      const claimed = new Set<number>()
      await Promise.all(
        clients.map(async (client) => {
          let known = 0
          while (issued < attempts) {
            issued++
            const event = payload(aggregateId, issued)
            const t = performance.now()
            try {
              await appendOne(client, aggregateId, known + 1, event)
              known += 1
              successes++
              if (claimed.has(known)) claimedTwice++
              claimed.add(known)
            } catch (error) {
              if (!isVersionConflict(error)) throw error
              conflicts++
              const { rows } = await client.query<{ version: number }>({
                ...CURRENT_VERSION,
                values: [aggregateId, AGGREGATE_TYPE]
              })
              known = rows[0]!.version
            }
            latencies.time(t)
          }
        })
      )
      return { successes, conflicts, claimedTwice, streams: 1 }
    },
    context.params.attempts!,
    (c) => c.successes!
  )

/**
 * Appends with no expected version, racing on one stream: the plain SQL way, read the
 * stream's last version and insert after it; on a unique violation, read again and
 * retry until the insert lands. `retries` counts the lost races.
 */
const W9: Runner = (context) =>
  warmThenTime(
    context,
    context.params.writers!,
    async (clients, appends, latencies) => {
      const aggregateId = crypto.randomUUID()
      let issued = 0
      let appended = 0
      let retries = 0
      let claimedTwice = 0
      const claimed = new Set<number>()
      await Promise.all(
        clients.map(async (client) => {
          while (issued < appends) {
            issued++
            const event = payload(aggregateId, issued)
            const t = performance.now()
            for (;;) {
              const { rows } = await client.query<{ version: number }>({
                ...CURRENT_VERSION,
                values: [aggregateId, AGGREGATE_TYPE]
              })
              const version = rows[0]!.version + 1
              try {
                await appendOne(client, aggregateId, version, event)
                appended++
                if (claimed.has(version)) claimedTwice++
                claimed.add(version)
                break
              } catch (error) {
                if (!isVersionConflict(error)) throw error
                retries++
              }
            }
            latencies.time(t)
          }
        })
      )
      return { appended, retries, claimedTwice, streams: 1 }
    },
    context.params.appends!,
    (c) => c.appended!
  )

export const runners: Readonly<Record<string, Runner>> = {
  W1,
  W2,
  W3,
  W4,
  W5,
  W6,
  W9,
  // Loaded when they run, so that the other workloads' processes stay as they were.
  W7: (context) => import("./subscriber.js").then((m) => m.raw(context)),
  W8: (context) => import("./outbox.js").then((m) => m.raw(context))
}

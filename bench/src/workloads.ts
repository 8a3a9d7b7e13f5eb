/**
 * The workloads of issue 5: their sizes, the data they need before they start, and
 * the checks of what they left behind. A workload is run once per side (raw SQL,
 * Eventfold) by the runners of the same id in `raw.ts` and `eventfold.ts`.
 *
 * To add one: add an entry here and a runner of the same id on each side.
 * `unavailable` lets a workload step aside when what it needs is not there
 * (W8 without NATS).
 */
import type pg from "pg"
import { AGGREGATE_TYPE, EVENT_TYPE, payloadSql } from "./payload.js"
import type { Measurement, Params, Scale, Seed, Side } from "./protocol.js"

export interface Workload {
  readonly id: string
  readonly title: string
  /** The throughput figure: what is counted per second. */
  readonly unit: "events/s" | "successes/s"
  /** What one latency sample times. */
  readonly operation: string
  /** Sizes; `warmup` is how many operations each side runs untimed first (JIT warm-up). */
  readonly params: Readonly<Record<Scale, Params>>
  /**
   * Read workloads: one database per workload, seeded once, read by every run.
   * Write workloads (no `seed`): a fresh database per run.
   */
  readonly seed?: (client: pg.ClientBase, params: Params) => Promise<Seed>
  /** Problems with what a run did or left behind; empty when all is well. */
  readonly verify: (
    client: pg.ClientBase,
    params: Params,
    measurement: Measurement,
    seed: Seed,
    side: Side
  ) => Promise<ReadonlyArray<string>>
  /** Why the workload cannot run here, or `undefined` when it can. */
  readonly unavailable?: () => Promise<string | undefined>
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

const expectEqual = (problems: Array<string>, what: string, actual: unknown, expected: unknown): void => {
  if (actual !== expected) problems.push(`${what}: expected ${String(expected)}, got ${String(actual)}`)
}

/** Event and stream counts, and streams whose versions are not exactly 1..n. */
const streamFacts = async (client: pg.ClientBase) => {
  const { rows } = await client.query<{ events: number; streams: number; broken: number; payload_bytes: number }>(`
    SELECT count(*)::int AS events,
           count(DISTINCT aggregate_id)::int AS streams,
           coalesce(avg(length(payload::text)), 0)::int AS payload_bytes,
           (SELECT count(*)::int FROM (
              SELECT 1 FROM events
               GROUP BY aggregate_id, aggregate_type
              HAVING min(version) <> 1 OR max(version) <> count(*) OR count(DISTINCT version) <> count(*)
           ) AS bad) AS broken
      FROM events`)
  return rows[0]!
}

const verifyAppends =
  (expected: (params: Params, measurement: Measurement) => { readonly events: number; readonly streams: number }) =>
  async (client: pg.ClientBase, params: Params, measurement: Measurement): Promise<ReadonlyArray<string>> => {
    const problems: Array<string> = []
    const facts = await streamFacts(client)
    const want = expected(params, measurement)
    const warm = measurement.counters
    expectEqual(problems, "events reported", measurement.events, want.events)
    expectEqual(problems, "events stored", facts.events, want.events + (warm.warmupEvents ?? 0))
    expectEqual(problems, "streams stored", facts.streams, want.streams + (warm.warmupStreams ?? 0))
    expectEqual(problems, "streams with duplicate or missing versions", facts.broken, 0)
    return problems
  }

// ---------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------

/**
 * Inserts `streams` streams of `perStream` events, interleaved in the global log as
 * concurrent writers would leave them, then VACUUM ANALYZE so that neither side
 * pays for hint bits or statistics the other did not.
 */
const seedLog = async (client: pg.ClientBase, streams: number, perStream: number) => {
  const total = streams * perStream
  await client.query(`
    INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp, payload)
    SELECT gen_random_uuid(), s.aggregate_id, '${AGGREGATE_TYPE}', '${EVENT_TYPE}', s.version,
           now() - make_interval(secs => ${total} - s.n), ${payloadSql("s.aggregate_id", "s.n")}
      FROM (SELECT n, md5('bench-stream-' || ((n - 1) % ${streams}))::uuid AS aggregate_id,
                   ((n - 1) / ${streams} + 1)::int AS version
              FROM generate_series(1, ${total}) AS n) AS s
     ORDER BY s.n`)
  await client.query("VACUUM (ANALYZE) events")
  const { rows } = await client.query<{ events: number; quantity: string; amount: string }>(`
    SELECT count(*)::int AS events, sum((payload->>'quantity')::int)::text AS quantity,
           sum((payload->>'quantity')::bigint * (payload->>'unit_price')::bigint)::text AS amount
      FROM events`)
  const row = rows[0]!
  return { events: row.events, quantity: Number(row.quantity), amount: Number(row.amount) }
}

// ---------------------------------------------------------------------------
// The workloads
// ---------------------------------------------------------------------------

export const workloads: ReadonlyArray<Workload> = [
  {
    id: "W1",
    title: "append 1 event to a new stream, 1 writer",
    unit: "events/s",
    operation: "append",
    params: { full: { appends: 5_000, warmup: 2_500 }, quick: { appends: 200, warmup: 50 } },
    verify: verifyAppends((p) => ({ events: p.appends!, streams: p.appends! }))
  },
  {
    id: "W2",
    title: "16 writers, single-event appends, a new stream every 10 events",
    unit: "events/s",
    operation: "append",
    params: {
      full: { writers: 16, appends: 20_000, streamLength: 10, warmup: 5_000 },
      quick: { writers: 16, appends: 800, streamLength: 10, warmup: 160 }
    },
    verify: verifyAppends((p) => ({ events: p.appends!, streams: Math.ceil(p.appends! / p.streamLength!) }))
  },
  {
    id: "W3",
    title: "appends of 100 events to a new stream, 1 writer",
    unit: "events/s",
    operation: "append of 100",
    params: { full: { appends: 200, batch: 100, warmup: 50 }, quick: { appends: 20, batch: 100, warmup: 4 } },
    verify: verifyAppends((p) => ({ events: p.appends! * p.batch!, streams: p.appends! }))
  },
  {
    id: "W4",
    title: "read a stream into an aggregate",
    unit: "events/s",
    operation: "load",
    params: {
      full: { streamLength: 10_000, reads: 20, warmup: 2 },
      quick: { streamLength: 2_000, reads: 5, warmup: 1 }
    },
    seed: async (client, params) => {
      const facts = await seedLog(client, 1, params.streamLength!)
      const { rows } = await client.query<{ id: string }>("SELECT aggregate_id::text AS id FROM events LIMIT 1")
      return { aggregateId: rows[0]!.id, ...facts }
    },
    verify: async (_client, params, m, seed) => {
      const problems: Array<string> = []
      expectEqual(problems, "events folded", m.events, params.streamLength! * params.reads!)
      expectEqual(problems, "loads", m.operations, params.reads)
      expectEqual(problems, "items in the last state", m.counters.items, seed.events)
      expectEqual(problems, "amount in the last state", m.counters.amount, seed.amount)
      expectEqual(problems, "loads that disagreed with the first", m.counters.mismatches, 0)
      return problems
    }
  },
  {
    id: "W5",
    title: "read the global log in order",
    unit: "events/s",
    operation: "1,000 events",
    params: {
      full: { events: 200_000, streams: 2_000, pageSize: 1_000, warmup: 20_000 },
      quick: { events: 20_000, streams: 200, pageSize: 1_000, warmup: 2_000 }
    },
    seed: (client, params) => seedLog(client, params.streams!, params.events! / params.streams!),
    verify: async (_client, params, m, seed) => {
      const problems: Array<string> = []
      expectEqual(problems, "events read", m.events, params.events)
      expectEqual(problems, "quantity read", m.counters.quantity, seed.quantity)
      expectEqual(problems, "amount read", m.counters.amount, seed.amount)
      expectEqual(problems, "positions out of order", m.counters.outOfOrder, 0)
      return problems
    }
  },
  {
    id: "W6",
    title: "8 writers race on one stream with expected versions",
    unit: "successes/s",
    operation: "attempt",
    params: { full: { writers: 8, attempts: 2_000, warmup: 1_000 }, quick: { writers: 8, attempts: 200, warmup: 50 } },
    verify: async (client, params, m) => {
      const problems: Array<string> = []
      const facts = await streamFacts(client)
      const { rows } = await client.query<{ duplicates: number; missing: number }>(`
        SELECT coalesce(sum(duplicates), 0)::int AS duplicates, coalesce(sum(missing), 0)::int AS missing
          FROM (SELECT count(*) - count(DISTINCT version) AS duplicates, max(version) - count(DISTINCT version) AS missing
                  FROM events GROUP BY aggregate_id, aggregate_type) AS per_stream`)
      const versions = rows[0]!
      const c = m.counters
      expectEqual(problems, "attempts", c.successes! + c.conflicts!, params.attempts)
      expectEqual(problems, "events stored", facts.events, c.successes! + (c.warmupSuccesses ?? 0))
      expectEqual(problems, "duplicate versions", versions.duplicates, 0)
      expectEqual(problems, "missing versions", versions.missing, 0)
      expectEqual(problems, "streams with duplicate or missing versions", facts.broken, 0)
      expectEqual(problems, "versions claimed by two writers", c.claimedTwice! + (c.warmupClaimedTwice ?? 0), 0)
      if (c.successes === 0) problems.push("no append succeeded")
      return problems
    }
  },
  {
    id: "W9",
    title: "8 writers append to one stream with no expected version (`any`)",
    unit: "events/s",
    operation: "append",
    params: { full: { writers: 8, appends: 2_000, warmup: 1_000 }, quick: { writers: 8, appends: 200, warmup: 50 } },
    verify: async (client, params, m) => {
      const problems: Array<string> = []
      const facts = await streamFacts(client)
      const c = m.counters
      expectEqual(problems, "appends that landed", c.appended, params.appends)
      expectEqual(problems, "events stored", facts.events, c.appended! + (c.warmupAppended ?? 0))
      expectEqual(problems, "streams with duplicate or missing versions", facts.broken, 0)
      expectEqual(problems, "versions claimed by two writers", c.claimedTwice! + (c.warmupClaimedTwice ?? 0), 0)
      return problems
    }
  },
  {
    id: "W7",
    title: "a subscriber follows the log while 8 writers append (the same raw INSERTs on both sides)",
    unit: "events/s",
    operation: "append → delivery",
    params: {
      full: { writers: 8, appends: 20_000, streamLength: 10, warmup: 2_000 },
      quick: { writers: 8, appends: 800, streamLength: 10, warmup: 160 }
    },
    verify: async (client, params, m, _seed, side) => {
      const problems: Array<string> = []
      const facts = await streamFacts(client)
      const c = m.counters
      expectEqual(problems, "events stored", facts.events, params.appends! + params.warmup!)
      expectEqual(problems, "streams stored", facts.streams, c.streams! + c.warmupStreams!)
      expectEqual(problems, "streams with duplicate or missing versions", facts.broken, 0)
      expectEqual(problems, "timed events in the table", c.stored, params.appends)
      expectEqual(problems, "timed events delivered + skipped", c.delivered! + c.skipped!, c.stored)
      expectEqual(problems, "events reported", m.events, c.delivered)
      expectEqual(problems, "subscriber timed out catching up", c.timedOut, 0)
      // Naive polling skips events by design (the figure W7 shows); Eventfold must not.
      if (side === "eventfold") {
        for (const name of ["skipped", "duplicates", "foreign", "warmupSkipped", "warmupDuplicates"]) {
          expectEqual(problems, `events ${name} by the subscriber`, c[name], 0)
        }
      }
      return problems
    }
  },
  {
    id: "W8",
    title: "outbox relay to NATS JetStream with acks",
    unit: "events/s",
    operation: "batch of 500",
    params: {
      full: { entries: 20_000, streamLength: 10, batch: 500, warmup: 2_000 },
      quick: { entries: 1_000, streamLength: 10, batch: 500, warmup: 200 }
    },
    // Loaded only when W8 is selected: the NATS client is none of the other workloads' business.
    unavailable: () => import("./outbox.js").then((m) => m.unavailable()),
    verify: async (client, params, m) => {
      const problems: Array<string> = []
      const { rows } = await client.query<{ entries: number; published: number; pending: number; failed: number }>(`
        SELECT count(*)::int AS entries, count(*) FILTER (WHERE status = 'published')::int AS published,
               count(*) FILTER (WHERE status = 'pending')::int AS pending,
               count(*) FILTER (WHERE status = 'failed')::int AS failed
          FROM event_outbox`)
      const outbox = rows[0]!
      const c = m.counters
      const total = params.entries! + params.warmup!
      expectEqual(problems, "events reported", m.events, params.entries)
      expectEqual(problems, "outbox entries", outbox.entries, total)
      expectEqual(problems, "entries marked published", outbox.published, total)
      expectEqual(problems, "entries pending", outbox.pending, 0)
      expectEqual(problems, "entries failed", outbox.failed, 0)
      expectEqual(problems, "messages in the JetStream stream", c.streamMessages, total)
      expectEqual(problems, "acks of a message the stream had already", c.duplicates! + c.warmupDuplicates!, 0)
      return problems
    }
  }
]

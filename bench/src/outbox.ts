/**
 * W8: the outbox relay drains pending entries to NATS JetStream, each publish
 * acknowledged. The harness (seeding, the JetStream stream, the count of what it
 * holds) is shared by both sides; the raw-SQL relay is here, Eventfold's
 * (OutboxRelay with NatsPublisher) in `outboxEventfold.ts`.
 *
 * Seeding is SQL, untimed and the same for both sides: events and their outbox
 * entries as an append with `outbox: true` writes them, streams of `streamLength`
 * events one after the other in the log, then VACUUM ANALYZE. Each side first
 * drains a warm-up of its own (JIT), then the timed entries, into a fresh stream
 * created here as NatsPublisher creates one (subjects `<prefix>.>`, 2-minute
 * duplicate window). Both sides send the same messages: subject
 * `<prefix>.<aggregate type>.<event type>`, the payload as body, the envelope in
 * headers, the event id as `Nats-Msg-Id` (JetStream drops a re-publish).
 *
 * NATS from NATS_URL (default nats://127.0.0.1:4222); without it the workload is
 * reported unavailable.
 */

import { redactCredentials } from "@eventfold/core/Settings"
import * as Jet from "@nats-io/jetstream"
import * as Nats from "@nats-io/transport-node"
import pg from "pg"
import { AGGREGATE_TYPE, EVENT_TYPE, payloadSql } from "./payload.js"
import type { Measurement, RunContext, Runner } from "./protocol.js"
import { Latencies } from "./stats.js"

export const natsUrl = process.env.NATS_URL ?? "nats://127.0.0.1:4222"

/** Why W8 cannot run here (NATS or JetStream unreachable), or `undefined`. */
export const unavailable = async (): Promise<string | undefined> => {
  try {
    const nc = await Nats.connect({ servers: natsUrl, timeout: 2_000, reconnect: false })
    try {
      await Jet.jetstreamManager(nc)
    } finally {
      await nc.close()
    }
    return undefined
  } catch (error) {
    return `no NATS JetStream at ${redactCredentials(natsUrl)} (${error instanceof Error ? error.message : String(error)}); set NATS_URL`
  }
}

/** Where a run publishes: a JetStream stream of its own. */
export interface Target {
  readonly url: string
  readonly servers: string
  readonly stream: string
  readonly subjectPrefix: string
  readonly batchSize: number
}

export interface Drained {
  /** Entries acknowledged by the broker and marked published. */
  readonly published: number
  /** Acknowledgements that said the broker had the message already. */
  readonly duplicates: number
}

export interface Relay {
  /** Publishes and marks every pending entry, one batch after the other; times each non-empty batch. */
  readonly drain: (latencies: Latencies) => Promise<Drained>
  readonly close: () => Promise<void>
}

/**
 * Events and their outbox entries (the columns the append writes), `entries` in
 * streams of `streamLength`, each stream's events together in the log.
 */
const seed = async (client: pg.Client, entries: number, streamLength: number) => {
  // One stream id per `streamLength` rows, unlike those of an earlier seed of the same database.
  const salt = crypto.randomUUID()
  await client.query(`
    WITH inserted AS (
      INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp, payload)
      SELECT gen_random_uuid(), s.aggregate_id, '${AGGREGATE_TYPE}', '${EVENT_TYPE}', s.version, now(),
             ${payloadSql("s.aggregate_id", "s.n")}
        FROM (SELECT n, md5('${salt}' || ((n - 1) / ${streamLength}))::uuid AS aggregate_id,
                     ((n - 1) % ${streamLength} + 1)::int AS version
                FROM generate_series(1, ${entries}) AS n) AS s
       ORDER BY s.n
      RETURNING event_id, event_type, aggregate_id, aggregate_type, tenant_id, actor_id, payload, global_position,
                version, timestamp
    )
    INSERT INTO event_outbox (event_id, event_type, aggregate_id, aggregate_type, tenant_id, actor_id, event_data,
                              global_position, version, occurred_at)
    SELECT event_id, event_type, aggregate_id, aggregate_type, tenant_id, actor_id, payload, global_position,
           version, timestamp
      FROM inserted`)
  await client.query("VACUUM (ANALYZE) events, event_outbox")
}

/** Runs W8 with the relay `open` builds; see the module's comment. */
export const measure = async (context: RunContext, open: (target: Target) => Promise<Relay>): Promise<Measurement> => {
  const { entries, streamLength, batch } = context.params
  const warmup = context.params.warmup ?? 0
  const run = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e9).toString(36)}`
  const target: Target = {
    url: context.url,
    servers: natsUrl,
    stream: `EFBENCH_${run.toUpperCase()}`,
    subjectPrefix: `efbench.${run}`,
    batchSize: batch!
  }
  const client = new pg.Client({ connectionString: context.url, application_name: "eventfold-bench-w8" })
  await client.connect()
  const nc = await Nats.connect({ servers: natsUrl, name: "eventfold-bench-w8" })
  const jsm = await Jet.jetstreamManager(nc)
  try {
    await jsm.streams.add({
      name: target.stream,
      subjects: [`${target.subjectPrefix}.>`],
      duplicate_window: Nats.nanos(120_000)
    })
    const relay = await open(target)
    try {
      await seed(client, warmup, streamLength!)
      const warm = await relay.drain(new Latencies())
      await seed(client, entries!, streamLength!)

      const latencies = new Latencies()
      const cpu = process.cpuUsage()
      const start = performance.now()
      const drained = await relay.drain(latencies)
      const elapsedMs = performance.now() - start
      const { user, system } = process.cpuUsage(cpu)

      const info = await jsm.streams.info(target.stream)
      return {
        events: drained.published,
        operations: latencies.samples.length,
        elapsedMs,
        latencies: latencies.summary(),
        cpuMs: (user + system) / 1000,
        counters: {
          published: drained.published,
          duplicates: drained.duplicates,
          warmupPublished: warm.published,
          warmupDuplicates: warm.duplicates,
          streamMessages: info.state.messages
        }
      }
    } finally {
      await relay.close()
    }
  } finally {
    await jsm.streams.delete(target.stream).catch(() => false)
    await nc.close()
    await client.end()
  }
}

// ---------------------------------------------------------------------------
// The raw-SQL relay
// ---------------------------------------------------------------------------

const CLAIM = {
  name: "bench_outbox_claim",
  text: `SELECT id, event_id, event_type, aggregate_id, aggregate_type, version, global_position, tenant_id, actor_id,
                occurred_at, event_data::text AS payload_json
           FROM event_outbox
          WHERE status = 'pending'
          ORDER BY global_position
          LIMIT $1
            FOR UPDATE SKIP LOCKED`
}

const MARK = {
  name: "bench_outbox_mark",
  text: "UPDATE event_outbox SET status = 'published', published_at = now() WHERE id = ANY($1::uuid[])"
}

interface EntryRow {
  readonly id: string
  readonly event_id: string
  readonly event_type: string
  readonly aggregate_id: string
  readonly aggregate_type: string
  readonly version: number
  readonly global_position: string
  readonly tenant_id: string | null
  readonly actor_id: string | null
  readonly occurred_at: Date
  readonly payload_json: string
}

const encoder = new TextEncoder()
const token = (name: string) => (name === "" ? "_" : name.replace(/[^A-Za-z0-9_-]/g, "_"))

/**
 * Plain `pg` + `@nats-io/jetstream`, the cheapest correct relay: a batch is one
 * transaction that locks the oldest pending entries (`FOR UPDATE SKIP LOCKED`, so
 * that relays could share the work), publishes them, marks the acknowledged ones
 * published and commits. A stream's entries go one after the other, each after the
 * ack of the one before (order per aggregate even when a publish fails), streams
 * concurrently. A failed publish rolls the batch back: its entries stay pending
 * and go out again, and JetStream drops what it already has (same `Nats-Msg-Id`).
 */
export const raw: Runner = (context) =>
  measure(context, async (target) => {
    const client = new pg.Client({ connectionString: target.url, application_name: "eventfold-bench-raw" })
    await client.connect()
    const nc = await Nats.connect({ servers: target.servers, name: "eventfold-bench-raw" })
    const js = Jet.jetstream(nc)

    const publish = async (row: EntryRow) => {
      const h = Nats.headers()
      h.set("Eventfold-Event-Id", row.event_id)
      h.set("Eventfold-Event-Type", row.event_type)
      h.set("Eventfold-Aggregate-Id", row.aggregate_id)
      h.set("Eventfold-Aggregate-Type", row.aggregate_type)
      h.set("Eventfold-Version", String(row.version))
      h.set("Eventfold-Global-Position", row.global_position)
      h.set("Eventfold-Timestamp", row.occurred_at.toISOString())
      if (row.tenant_id !== null) h.set("Eventfold-Tenant-Id", row.tenant_id)
      if (row.actor_id !== null) h.set("Eventfold-Actor-Id", row.actor_id)
      h.set("Content-Type", "application/json")
      const ack = await js.publish(
        `${target.subjectPrefix}.${token(row.aggregate_type)}.${token(row.event_type)}`,
        encoder.encode(row.payload_json),
        { msgID: row.event_id, headers: h, expect: { streamName: target.stream } }
      )
      return ack.duplicate
    }

    /** One batch; the number of entries it published (0: nothing was pending). */
    const batch = async (): Promise<Drained> => {
      await client.query("BEGIN")
      try {
        const { rows } = await client.query<EntryRow>({ ...CLAIM, values: [target.batchSize] })
        const streams = new Map<string, Array<EntryRow>>()
        for (const row of rows) {
          const key = `${row.aggregate_type}\u0000${row.aggregate_id}`
          const entries = streams.get(key)
          if (entries === undefined) streams.set(key, [row])
          else entries.push(row)
        }
        let duplicates = 0
        await Promise.all(
          Array.from(streams.values(), async (entries) => {
            for (const row of entries) if (await publish(row)) duplicates++
          })
        )
        if (rows.length > 0) await client.query({ ...MARK, values: [rows.map((row) => row.id)] })
        await client.query("COMMIT")
        return { published: rows.length, duplicates }
      } catch (error) {
        await client.query("ROLLBACK").catch(() => undefined)
        throw error
      }
    }

    return {
      drain: async (latencies) => {
        let published = 0
        let duplicates = 0
        for (;;) {
          const t = performance.now()
          const done = await batch()
          if (done.published === 0) return { published, duplicates }
          latencies.time(t)
          published += done.published
          duplicates += done.duplicates
        }
      },
      close: async () => {
        await nc.close()
        await client.end()
      }
    }
  })

/**
 * The settled horizon of the PostgreSQL log, shared by every subscription of one
 * store (one watcher, one LISTEN connection, however many subscribers).
 *
 * Why: `global_position` comes from a sequence when a row is inserted, but
 * transactions commit in another order. A reader that has seen position 11 may
 * later see 10 commit. So readers only go up to the *settled horizon*: a position
 * below which every transaction that took a position has ended.
 *
 * How: `eventfold_log_horizon()` reads, in this order, (1) `L`, the last value the
 * sequence handed out, and (2) `W`, the transactions that hold a write lock
 * (`RowExclusiveLock`) on `events`, which every inserting transaction takes before
 * it draws a position and keeps until it ends. A transaction that drew a position
 * up to `L` has either ended (and, having released its locks, is visible to any
 * later snapshot) or is in `W`. So once every transaction of `W` has ended, all of
 * `1..L` is settled. The watcher keeps the pairs `(L, W)` it has read and, at each
 * refresh, moves the horizon to the newest `L` whose `W` has fully ended.
 *
 * Delivery stays in `global_position` order (`readAll`'s order, and each stream's
 * version order), unlike a cursor over (transaction id, position), which delivers a
 * stream's v2 before its v1 when v2's transaction got its id first.
 *
 * Cost: one small query (the sequence and `pg_locks`) per refresh, shared by all
 * subscribers (metrics `horizonChecks`, `horizonCheckDuration`). Refreshes happen on
 * NOTIFY from appends (coalesced); while positions wait, on a delay that starts at
 * `settleInterval` and grows with the wait, up to `pollInterval`; every
 * `settleInterval` while the log keeps moving (new positions at three refreshes in a
 * row, each within a few intervals of the last); and at least every `pollInterval`.
 * Readers wait only for transactions that wrote to `events`: a long transaction
 * elsewhere (a report, a vacuum, another database) never holds them back, unlike a
 * filter on the snapshot's xmin. A transaction that appended and stays open does: after `stallThreshold` the watcher logs which session it is (pid, transaction
 * start, state, query) and publishes a stall; `eventfold_log_writers` shows the same
 * from SQL.
 *
 * Notifications: NOTIFY serializes the commits of the transactions that send it (a
 * lock on the notification queue, held through the commit's flush). So appends notify
 * only while a watcher waits for it (its row in `eventfold_listeners` says so): a
 * watcher waits when nothing is pending and the log is quiet, and when something has
 * been pending for long; while the log keeps moving it polls, so that busy appends
 * never notify (W7, a subscriber following 8 writers: 0.65x of naive polling's
 * throughput with a flag flipped at every lull, 0.80x polling). After it raises its
 * flag it refreshes once more, which catches a writer that read the flag just
 * before: still running, it is pending; committed, it is settled. Notifications only
 * ever wake; the guarantee never depends on them.
 *
 * Assumptions: the sequence is not cached per session (`CACHE 1`, the BIGSERIAL
 * default); subscriptions read the primary (a standby's `pg_locks` does not show the
 * primary's writers).
 */

import * as SqlClient from "@effect/sql/SqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import type { EventStoreError } from "@eventfold/core/Errors"
import type * as Subscription from "@eventfold/core/Subscription"
import { Metrics } from "@eventfold/core/Telemetry"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as RcRef from "effect/RcRef"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import * as Pg from "pg"
import { Int8 } from "./eventRows.js"

/**
 * How subscriptions watch the log.
 */
export interface WatchOptions {
  /** Refresh at least this often even without notifications. Default 1 second. */
  readonly pollInterval?: Duration.DurationInput
  /** While positions wait for their transactions, refresh this often at first. Default 5 ms. */
  readonly settleInterval?: Duration.DurationInput
  /** Report (log and publish) when readers have been held back this long. Default 5 seconds. */
  readonly stallThreshold?: Duration.DurationInput
  /** Wake on LISTEN/NOTIFY (needs `PgClient`). Default true. */
  readonly listen?: boolean
}

/** The channel appends notify (by the statement trigger of migration 8), at commit. */
export const channel = "eventfold_events"

const HorizonRow = Schema.Struct({
  last_position: Int8,
  writers: Schema.Array(Schema.String),
  writer_pids: Schema.Array(Schema.Number)
})
const decodeHorizon = Schema.decodeUnknown(Schema.Array(HorizonRow))
const HolderRow = Schema.Struct({
  pid: Schema.Number,
  xact_start: Schema.NullOr(Schema.DateFromSelf),
  state: Schema.NullOr(Schema.String),
  query: Schema.NullOr(Schema.String),
  application_name: Schema.NullOr(Schema.String),
  age_ms: Schema.NullOr(Schema.Union(Schema.Number, Schema.NumberFromString))
})
const decodeHolders = Schema.decodeUnknown(Schema.Array(HolderRow))

/** The metrics of subscriptions (see `Telemetry.Metrics` for what each means). */
export const metrics = {
  horizonChecks: Metric.counter(Metrics.horizonChecks, { incremental: true }),
  horizonCheckDuration: Metric.timerWithBoundaries(
    Metrics.horizonCheckDuration,
    [0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250]
  ),
  heldBack: Metric.gauge(Metrics.heldBack),
  notifications: Metric.counter(Metrics.notifications, { incremental: true })
}
const { heldBack, horizonCheckDuration, horizonChecks, notifications: wakeups } = metrics

interface Pending {
  /** The last position taken when `writers` were read. */
  readonly last: bigint
  /** Virtual transaction id → pid (0 for a prepared transaction). */
  readonly writers: ReadonlyMap<string, number>
  readonly at: number
}

const MAX_PENDING = 1024

/** Refreshes in a row that saw new positions after which the log counts as busy, and is polled. */
const BUSY = 3

/**
 * The settlement rule, apart from I/O so that it can be read (and tested) alone.
 * Returns the new horizon and pending list after a refresh that saw `last` and `writers`.
 */
export const settle = (
  settled: bigint,
  pending: ReadonlyArray<Pending>,
  last: bigint,
  writers: ReadonlyMap<string, number>,
  now: number
): { readonly settled: bigint; readonly pending: ReadonlyArray<Pending> } => {
  let horizon = settled
  let rest = pending
  if (writers.size === 0) return { settled: last > horizon ? last : horizon, pending: [] }
  // The newest entry none of whose writers still runs: everything up to its `last` has ended.
  for (let i = rest.length - 1; i >= 0; i--) {
    const entry = rest[i]!
    let ended = true
    for (const writer of entry.writers.keys()) {
      if (writers.has(writer)) {
        ended = false
        break
      }
    }
    if (ended) {
      if (entry.last > horizon) horizon = entry.last
      rest = rest.slice(i + 1)
      break
    }
  }
  const newest = rest.length > 0 ? rest[rest.length - 1]!.last : horizon
  if (last > newest) rest = [...rest, { last, writers, at: now }]
  if (rest.length > MAX_PENDING) {
    // Merging two neighbours waits for both sets of writers: later, never wrong.
    const [a, b, ...tail] = rest
    rest = [{ last: b!.last, writers: new Map([...a!.writers, ...b!.writers]), at: a!.at }, ...tail]
  }
  return { settled: horizon, pending: rest }
}

/**
 * Wake-ups of the refresher, coalesced: `signal` ends the current wait, or the next
 * one if nobody waits; `wait` ends on a signal or after `delay` milliseconds. One
 * Deferred per wait, replaced once it is done: a timed wait on a Queue.take cost
 * about 0.3 ms of CPU each time the timer won (interrupting the take), against 0.1 ms
 * racing a Deferred (measured on an idle machine); a busy log is polled, so the timer
 * wins at almost every refresh.
 */
const makeWake = Effect.gen(function* () {
  let next = yield* Deferred.make<void>()
  const signal = Effect.suspend(() => Deferred.succeed(next, undefined))
  const wait = (delay: number | undefined) =>
    Effect.suspend(() => {
      const current = next
      return (
        delay === undefined
          ? Deferred.await(current)
          : Effect.race(Deferred.await(current), Effect.sleep(Duration.millis(delay)))
      ).pipe(
        Effect.zipRight(Deferred.isDone(current)),
        // A signal after the timer is covered by the refresh that follows the wait.
        Effect.flatMap((done) =>
          done && next === current
            ? Effect.map(Deferred.make<void>(), (fresh) => {
                next = fresh
              })
            : Effect.void
        )
      )
    })
  return { signal, wait }
})

/**
 * Makes the shared watcher: started by the first subscriber, stopped after the last.
 */
export const makeWatcher = (options: WatchOptions = {}) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const pg = yield* Effect.serviceOption(PgClient.PgClient)
    const pollInterval = Duration.decode(options.pollInterval ?? "1 second")
    const settleInterval = Duration.decode(options.settleInterval ?? "5 millis")
    const stallMillis = Duration.toMillis(options.stallThreshold ?? "5 seconds")
    const pollMillis = Duration.toMillis(pollInterval)
    const settleMillis = Duration.toMillis(settleInterval)
    const listenConfig = options.listen === false ? Option.none() : Option.map(pg, (client) => client.config)

    const acquire = Effect.gen(function* () {
      const state = yield* SubscriptionRef.make<Subscription.Horizon>({ settled: -1n, stall: Option.none() })
      const { signal, wait } = yield* makeWake

      let settled = -1n
      let pending: ReadonlyArray<Pending> = []
      let stall: Subscription.Stall | undefined
      let reportedAt = 0
      // How many refreshes in a row, each within a few settle intervals of the one before,
      // saw new positions: a log that keeps moving is polled, and its appends need not
      // notify (see `waits` below).
      let lastSeen = -1n
      let lastRefreshAt = 0
      let moving = 0

      // Appends notify only while some subscriber waits (a row of eventfold_listeners with
      // waiting = true): NOTIFY serializes commits. This watcher waits when it listens and
      // no position is pending; otherwise it refreshes every settleInterval anyway.
      const listenerId = crypto.randomUUID()
      let listenerPid: number | undefined
      let flagged: boolean | undefined
      const flag = (waiting: boolean) =>
        Effect.gen(function* () {
          if (listenerPid === undefined) {
            yield* sql`DELETE FROM eventfold_listeners WHERE listener_id = ${listenerId}::uuid`
          } else {
            yield* sql`INSERT INTO eventfold_listeners (listener_id, pid, waiting)
                       VALUES (${listenerId}::uuid, ${listenerPid}, ${waiting})
                       ON CONFLICT (listener_id) DO UPDATE
                          SET pid = EXCLUDED.pid, waiting = EXCLUDED.waiting, updated_at = now()`
          }
          flagged = waiting
          // Writers that read the flag before it was set did not notify: a refresh after
          // it catches them (running: pending; committed: settled).
          if (waiting) yield* signal
        })
      yield* Effect.addFinalizer(() =>
        sql`DELETE FROM eventfold_listeners WHERE listener_id = ${listenerId}::uuid`.pipe(
          Effect.catchAll((error) => Effect.logDebug("subscriptions: removing the listener row failed", error))
        )
      )

      const holders = (entry: Pending, writers: ReadonlyMap<string, number>) =>
        Effect.gen(function* () {
          const blocking = [...entry.writers.keys()].filter((w) => writers.has(w))
          const pids = blocking.map((w) => writers.get(w)!).filter((pid) => pid !== 0)
          const rows =
            pids.length === 0
              ? []
              : yield* sql`SELECT pid, xact_start, state, query, application_name,
                                  (extract(epoch FROM now() - xact_start) * 1000)::float8 AS age_ms
                             FROM pg_stat_activity WHERE pid = ANY(${pids}::int[])`.pipe(Effect.flatMap(decodeHolders))
          return blocking.map((transaction): Subscription.Holder => {
            const pid = writers.get(transaction)!
            const row = rows.find((r) => r.pid === pid)
            return {
              pid: pid === 0 ? null : pid,
              transaction,
              transactionStart: row?.xact_start ?? null,
              state: pid === 0 ? "prepared" : (row?.state ?? null),
              query: row?.query ?? null,
              applicationName: row?.application_name ?? null,
              transactionAgeMillis: row?.age_ms ?? null
            }
          })
        })

      const refresh = Effect.gen(function* () {
        const [row] = yield* sql`SELECT last_position, writers, writer_pids FROM eventfold_log_horizon()`.pipe(
          Effect.flatMap(decodeHorizon),
          Metric.trackDuration(horizonCheckDuration)
        )
        yield* Metric.increment(horizonChecks)
        if (row === undefined) return
        const now = Date.now()
        moving = row.last_position > lastSeen ? (now - lastRefreshAt <= 4 * settleMillis ? moving + 1 : 1) : 0
        lastSeen = row.last_position
        lastRefreshAt = now
        const writers = new Map(row.writers.map((w, i) => [w, row.writer_pids[i] ?? 0] as const))
        const before = settled
        const next = settle(settled, pending, row.last_position, writers, now)
        settled = next.settled
        pending = next.pending
        const oldest = pending[0]
        const waited = oldest === undefined ? 0 : now - oldest.at
        yield* Metric.set(heldBack, waited)
        let publish = settled !== before
        if (oldest !== undefined && waited >= stallMillis) {
          if (stall === undefined || now - reportedAt >= stallMillis) {
            const list = yield* holders(oldest, writers)
            stall = {
              position: settled,
              waitingUpTo: pending[pending.length - 1]!.last,
              since: new Date(oldest.at),
              heldForMillis: waited,
              holders: list
            }
            reportedAt = now
            publish = true
            yield* Effect.logWarning(
              `subscriptions held back for ${(waited / 1000).toFixed(1)} s at position ${settled} (positions up to ${stall.waitingUpTo} wait) by ${list
                .map(
                  (h) =>
                    `pid ${h.pid ?? "-"} (transaction ${h.transaction}, open ${h.transactionAgeMillis === null ? "?" : (h.transactionAgeMillis / 1000).toFixed(1)} s, ${h.state ?? "?"}): ${JSON.stringify((h.query ?? "").slice(0, 200))}`
                )
                .join("; ")}`
            )
          }
        } else if (stall !== undefined) {
          yield* Effect.logInfo(
            `subscriptions resumed at position ${settled} after ${((now - stall.since.getTime()) / 1000).toFixed(1)} s held back`
          )
          stall = undefined
          publish = true
        }
        if (publish) yield* SubscriptionRef.set(state, { settled, stall: Option.fromNullable(stall) })
      })

      // The refresher: one refresh per wake-up, wake-ups coalesced; while positions
      // wait, or the log keeps moving, also on a delay (a transaction that rolls back
      // notifies nobody, and a busy log does not notify at all).
      const refresher = Effect.gen(function* () {
        // While positions wait, refresh on a delay that grows with how long they have
        // waited (a stall of minutes is not polled every 10 ms), up to the poll interval.
        const oldest = pending[0]
        const delay =
          oldest !== undefined
            ? Math.min(pollMillis, Math.max(settleMillis, Math.round((Date.now() - oldest.at) / 10)))
            : moving >= BUSY
              ? settleMillis
              : undefined
        yield* wait(delay)
        // A failing refresh (server down) backs off; subscribers keep their horizon meanwhile.
        yield* refresh.pipe(
          Effect.tapError((error) => Effect.logWarning("subscriptions: reading the log horizon failed", error)),
          Effect.retry(Schedule.exponential("50 millis").pipe(Schedule.either(Schedule.spaced("5 seconds"))))
        )
        // Waiting for notifications: when nothing is pending and the log is quiet, or when
        // something has been pending for long. Not while the log keeps moving: it is polled
        // then, and a flag flipped at every lull cost an UPDATE each time and made every
        // append in between notify (8 writers: about 100 flips and 1,000 notifications a
        // second, where polling makes neither).
        const head = pending[0]
        const waits =
          listenerPid !== undefined && (head === undefined ? moving < BUSY : Date.now() - head.at > 40 * settleMillis)
        if (waits !== flagged) {
          yield* flag(waits).pipe(
            Effect.catchAll((error) => Effect.logWarning("subscriptions: updating the listener row failed", error))
          )
        }
      }).pipe(Effect.forever)

      // Acquired uninterruptibly (see below): the fibers must be interruptible again.
      yield* Effect.forkScoped(Effect.interruptible(refresher))
      yield* Effect.forkScoped(Effect.interruptible(Effect.repeat(signal, Schedule.spaced(pollInterval))))
      if (Option.isNone(listenConfig)) {
        yield* Effect.logInfo(
          `subscriptions: no LISTEN (${Option.isNone(pg) ? "no PgClient in context" : "disabled"}); polling every ${Duration.format(pollInterval)}`
        )
      } else {
        const connected = (pid: number) =>
          Effect.gen(function* () {
            listenerPid = pid
            flagged = undefined
            // Rows of listeners whose session is gone would make every append notify.
            yield* sql`DELETE FROM eventfold_listeners l
                        WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.pid)`.pipe(
              Effect.catchAll((error) => Effect.logDebug("subscriptions: removing stale listener rows failed", error))
            )
            yield* signal
          })
        yield* Effect.forkScoped(
          listen(listenConfig.value, Effect.zipRight(signal, Metric.increment(wakeups)), connected).pipe(
            Effect.tapError((error) =>
              Effect.sync(() => {
                listenerPid = undefined
              }).pipe(
                Effect.zipRight(signal),
                Effect.zipRight(
                  Effect.logWarning("subscriptions: LISTEN connection lost; polling until it is back", error)
                )
              )
            ),
            Effect.retry(Schedule.exponential("100 millis").pipe(Schedule.either(Schedule.spaced("5 seconds")))),
            Effect.interruptible
          )
        )
      }
      return state
    })

    const scope = yield* Scope.make()
    // Uninterruptible: an acquisition interrupted halfway would leave its fibers running.
    const watcher = yield* RcRef.make({ acquire: Effect.uninterruptible(acquire) }).pipe(Scope.extend(scope))

    /** The horizon for one subscriber; the watcher runs while someone follows it. */
    const horizon: Stream.Stream<Subscription.Horizon, EventStoreError> = Effect.map(RcRef.get(watcher), (state) =>
      state.changes.pipe(Stream.filter((h) => h.settled >= 0n))
    ).pipe(Stream.unwrapScoped)

    return { horizon }
  })

class ListenError extends Schema.TaggedError<ListenError>()("ListenError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * LISTEN on a connection of its own (outside the pool, as LISTEN must hold its
 * session). Calls `notified` on each notification and `connected` once listening
 * (notifications may have been missed meanwhile). Fails when the connection is lost.
 */
const listen = (
  config: PgClient.PgClientConfig,
  notified: Effect.Effect<void>,
  connected: (pid: number) => Effect.Effect<void>
): Effect.Effect<never, ListenError> =>
  Effect.scoped(
    Effect.gen(function* () {
      const run = Runtime.runFork(yield* Effect.runtime<never>())
      const { client, pid } = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: async () => {
            const client = new Pg.Client({
              ...(config.url === undefined ? {} : { connectionString: Redacted.value(config.url) }),
              ...(config.host === undefined ? {} : { host: config.host }),
              ...(config.port === undefined ? {} : { port: config.port }),
              ...(config.database === undefined ? {} : { database: config.database }),
              ...(config.username === undefined ? {} : { user: config.username }),
              ...(config.password === undefined ? {} : { password: Redacted.value(config.password) }),
              ...(config.ssl === undefined ? {} : { ssl: config.ssl }),
              application_name: `${config.applicationName ?? "eventfold"} (listen)`
            })
            // Registered before connecting (an error without a listener would crash the
            // process); once listening, the loop below turns errors into a failure.
            client.on("error", (error) => run(Effect.logDebug("subscriptions: LISTEN connection error", error)))
            await client.connect()
            await client.query(`LISTEN ${Pg.escapeIdentifier(channel)}`)
            const { rows } = await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")
            return { client, pid: rows[0]?.pid ?? 0 }
          },
          catch: (cause) => new ListenError({ message: "cannot LISTEN for appends", cause })
        }),
        ({ client }) =>
          Effect.tryPromise(() => client.end()).pipe(
            Effect.timeout("1 second"),
            Effect.catchAll((error) => Effect.logDebug("subscriptions: closing the LISTEN connection failed", error))
          )
      )
      yield* connected(pid)
      return yield* Effect.async<never, ListenError>((resume) => {
        const onNotification = (message: Pg.Notification) => {
          if (message.channel === channel) run(notified)
        }
        const onError = (cause: Error) => resume(Effect.fail(new ListenError({ message: cause.message, cause })))
        const onEnd = () => resume(Effect.fail(new ListenError({ message: "the LISTEN connection ended" })))
        client.on("notification", onNotification)
        client.on("error", onError)
        client.on("end", onEnd)
        return Effect.sync(() => {
          client.off("notification", onNotification)
          client.off("error", onError)
          client.off("end", onEnd)
        })
      })
    })
  )

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
 * filter on the snapshot's xmin. A transaction that appended and stays open does:
 * after `stallThreshold` the watcher logs which session it is (pid, transaction start,
 * state, query) and publishes a stall; `eventfold_log_writers` shows the same from
 * SQL. (`PgPool`'s `idleInTransactionTimeout` ends such a transaction on the server.)
 *
 * Notifications: NOTIFY serializes the commits of the transactions that send it (a
 * lock on the notification queue, held through the commit's flush). So appends notify
 * only while a watcher waits for it (its row in `eventfold_listeners` says so): a
 * watcher waits when nothing is pending and the log is quiet, and when something has
 * been pending for long; while the log keeps moving it polls, so that busy appends
 * never notify. After it raises its flag it refreshes once more, which catches a
 * writer that read the flag just before: still running, it is pending; committed, it
 * is settled. Notifications only ever wake; the guarantee never depends on them.
 *
 * Failures: a refresh that fails (the server is down) is retried with backoff while
 * subscribers keep the horizon they have; a lost LISTEN connection is logged and
 * listened again by `reconnect`, polling meanwhile.
 *
 * The watcher's state is one record, changed only by the pure functions of
 * `horizon.ts`, which are tested alone; the fibers here do the I/O.
 *
 * Assumptions: the sequence is not cached per session (`CACHE 1`, the BIGSERIAL
 * default); subscriptions read the primary (a standby's `pg_locks` does not show the
 * primary's writers).
 */

import type * as PgClient from "@effect/sql-pg/PgClient"
import type * as Subscription from "@eventfold/core/Subscription"
import { Metrics } from "@eventfold/core/Telemetry"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as RcRef from "effect/RcRef"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import type { WatchOptions } from "../PgEventStore.js"
import { Count, Int8 } from "./eventRows.js"
import { initialState, nextDelay, observe, type Pending, type Settings, waitsForNotifications } from "./horizon.js"
import * as Driver from "./pgDriver.js"

/** The default of {@link WatchOptions.reconnect}. */
export const defaultReconnect: Schedule.Schedule<unknown, unknown> = Schedule.exponential("100 millis").pipe(
  Schedule.either(Schedule.spaced("5 seconds")),
  Schedule.upTo("5 minutes")
)

/**
 * The channel appends notify (by the statement trigger of migration 8), at commit, with
 * the schema of the events as payload (migration 14).
 */
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
  age_ms: Schema.NullOr(Count)
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

// ---------------------------------------------------------------------------
// The watcher (I/O)
// ---------------------------------------------------------------------------

/**
 * Wake-ups of the refresher, coalesced: `signal` ends the current wait, or the next
 * one if nobody waits; `wait` ends on a signal or after `delay` milliseconds. One
 * Deferred per wait, replaced once it is done: a timed wait on a Queue.take cost
 * about 0.3 ms of CPU each time the timer won (interrupting the take), against 0.1 ms
 * racing a Deferred; a busy log is polled, so the timer wins at almost every refresh.
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

const warn = (message: string) => (error: unknown) => Effect.logWarning(message, error)

/**
 * Makes the shared watcher in the current scope: started by the first subscriber,
 * stopped after the last, and closed with the scope.
 */
export const makeWatcher = (
  executor: Driver.Executor,
  listenConfig: Option.Option<PgClient.PgClientConfig>,
  options: WatchOptions = {}
): Effect.Effect<{ readonly horizon: Stream.Stream<Subscription.Horizon> }, never, Scope.Scope> =>
  Effect.gen(function* () {
    const sql = executor.sql
    const pollInterval = Duration.decode(options.pollInterval ?? "1 second")
    const settings: Settings = {
      pollMillis: Duration.toMillis(pollInterval),
      settleMillis: Duration.toMillis(options.settleInterval ?? "5 millis"),
      stallMillis: Duration.toMillis(options.stallThreshold ?? "5 seconds")
    }
    const reconnect = options.reconnect ?? defaultReconnect
    const listening = options.listen === false ? Option.none() : listenConfig

    const acquire = Effect.gen(function* () {
      const horizon = yield* SubscriptionRef.make<Subscription.Horizon>({ settled: -1n, stall: Option.none() })
      const state = yield* Ref.make(initialState)
      const { signal, wait } = yield* makeWake

      // Appends notify only while some watcher waits (a row of eventfold_listeners with
      // waiting = true): NOTIFY serializes commits.
      const listenerId = crypto.randomUUID()
      const flag = (pid: number | undefined, waiting: boolean) =>
        Effect.gen(function* () {
          if (pid === undefined) {
            yield* sql`DELETE FROM eventfold_listeners WHERE listener_id = ${listenerId}::uuid`
          } else {
            yield* sql`INSERT INTO eventfold_listeners (listener_id, pid, waiting)
                       VALUES (${listenerId}::uuid, ${pid}, ${waiting})
                       ON CONFLICT (listener_id) DO UPDATE
                          SET pid = EXCLUDED.pid, waiting = EXCLUDED.waiting, updated_at = now()`
          }
          yield* Ref.update(state, (s) => ({ ...s, flagged: waiting }))
          // Writers that read the flag before it was set did not notify: a refresh after
          // it catches them (running: pending; committed: settled).
          if (waiting) yield* signal
        })
      yield* Effect.addFinalizer(() =>
        sql`DELETE FROM eventfold_listeners WHERE listener_id = ${listenerId}::uuid`.pipe(
          Effect.catchAll(warn("subscriptions: removing the listener row failed"))
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
        const writers = new Map(row.writers.map((w, i) => [w, row.writer_pids[i] ?? 0] as const))
        const before = yield* Ref.get(state)
        const { heldMillis, report, state: next } = observe(before, row.last_position, writers, now, settings)
        yield* Ref.set(state, next)
        yield* Metric.set(heldBack, heldMillis)
        const current = yield* SubscriptionRef.get(horizon)
        switch (report._tag) {
          case "Stalled": {
            const list = yield* holders(report.oldest, writers)
            const stall: Subscription.Stall = {
              position: next.settled,
              waitingUpTo: next.pending[next.pending.length - 1]!.last,
              since: new Date(report.oldest.at),
              heldForMillis: report.heldMillis,
              holders: list
            }
            yield* SubscriptionRef.set(horizon, { settled: next.settled, stall: Option.some(stall) })
            return yield* Effect.logWarning(
              `subscriptions held back for ${(report.heldMillis / 1000).toFixed(1)} s at position ${next.settled} (positions up to ${stall.waitingUpTo} wait) by ${list
                .map(
                  (h) =>
                    `pid ${h.pid ?? "-"} (transaction ${h.transaction}, open ${h.transactionAgeMillis === null ? "?" : (h.transactionAgeMillis / 1000).toFixed(1)} s, ${h.state ?? "?"}): ${JSON.stringify((h.query ?? "").slice(0, 200))}`
                )
                .join("; ")}`
            )
          }
          case "Resumed":
            yield* SubscriptionRef.set(horizon, { settled: next.settled, stall: Option.none() })
            return yield* Effect.logInfo(
              `subscriptions resumed at position ${next.settled} after ${((now - report.since) / 1000).toFixed(1)} s held back`
            )
          case "None":
            if (next.settled !== current.settled) {
              yield* SubscriptionRef.set(horizon, { settled: next.settled, stall: current.stall })
            }
        }
      })

      // The refresher: one refresh per wake-up, wake-ups coalesced; while positions
      // wait, or the log keeps moving, also on a delay (a transaction that rolls back
      // notifies nobody, and a busy log does not notify at all).
      const refresher = Effect.gen(function* () {
        yield* wait(nextDelay(yield* Ref.get(state), Date.now(), settings))
        // A failing refresh (server down) backs off; subscribers keep their horizon meanwhile.
        yield* refresh.pipe(
          Effect.tapError(warn("subscriptions: reading the log horizon failed")),
          Effect.retry(Schedule.exponential("50 millis").pipe(Schedule.either(Schedule.spaced("5 seconds"))))
        )
        const current = yield* Ref.get(state)
        const waits = waitsForNotifications(current, Date.now(), settings)
        if (waits !== current.flagged) {
          yield* flag(current.listenerPid, waits).pipe(
            Effect.catchAll(warn("subscriptions: updating the listener row failed"))
          )
        }
      }).pipe(Effect.forever)

      // Acquired uninterruptibly (see below): the fibers must be interruptible again.
      yield* Effect.forkScoped(Effect.interruptible(refresher))
      yield* Effect.forkScoped(Effect.interruptible(Effect.repeat(signal, Schedule.spaced(pollInterval))))
      if (Option.isNone(listening)) {
        yield* Effect.logInfo(
          `subscriptions: no LISTEN (${Option.isNone(listenConfig) ? "no PgClient in context" : "disabled"}); polling every ${Duration.format(pollInterval)}`
        )
      } else {
        const connected = (pid: number) =>
          Effect.gen(function* () {
            yield* Ref.update(state, (s) => ({ ...s, listenerPid: pid, flagged: undefined }))
            // Rows of listeners whose session is gone would make every append notify.
            yield* sql`DELETE FROM eventfold_listeners l
                        WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = l.pid)`.pipe(
              Effect.catchAll(warn("subscriptions: removing stale listener rows failed"))
            )
            yield* signal
          })
        const lost = (error: Driver.DriverError) =>
          Ref.update(state, (s) => ({ ...s, listenerPid: undefined })).pipe(
            Effect.zipRight(signal),
            Effect.zipRight(
              Effect.logWarning(`subscriptions: LISTEN connection lost (${error.message}); polling until it is back`)
            )
          )
        // The schema of the store's events (migration 14's notifications name it): appends to
        // another store of the database, in another schema, wake nobody here.
        const ownSchema = sql<{ readonly schema: string }>`SELECT n.nspname AS schema
                              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE c.oid = to_regclass('events')`.pipe(
          Effect.map((rows) => rows[0]?.schema),
          Effect.catchAll((error) =>
            Effect.as(
              warn("subscriptions: looking up the schema of events failed; every notification wakes")(error),
              undefined
            )
          )
        )
        yield* Effect.flatMap(ownSchema, (schema) =>
          Driver.listen(listening.value, channel, connected).pipe(
            Stream.filter((payload) => Driver.notifies(payload, schema)),
            Stream.runForEach(() => Effect.zipRight(signal, Metric.increment(wakeups)))
          )
        ).pipe(
          Effect.tapError(lost),
          // Listening again never gives up: polling covers the gaps meanwhile.
          Effect.retry(reconnect.pipe(Schedule.andThen(Schedule.spaced("5 seconds")))),
          Effect.interruptible,
          Effect.forkScoped
        )
      }
      return horizon
    })

    // Uninterruptible: an acquisition interrupted halfway would leave its fibers running.
    const watcher = yield* RcRef.make({ acquire: Effect.uninterruptible(acquire) })

    /**
     * The horizon for one subscriber; the watcher runs while someone follows it. Before its
     * first settled position (none until the transactions open at its first refresh end),
     * only a stall is worth telling: a subscriber held back from the start hears of it.
     */
    const horizon: Stream.Stream<Subscription.Horizon> = Effect.map(RcRef.get(watcher), (state) =>
      state.changes.pipe(Stream.filter((h) => h.settled >= 0n || Option.isSome(h.stall)))
    ).pipe(Stream.unwrapScoped)

    return { horizon }
  })

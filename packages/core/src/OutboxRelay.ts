/**
 * The outbox relay: a background fiber that claims outbox entries, publishes them
 * through the `Publisher`, and records what became of them. It works on any
 * {@link Outbox} (memory, PostgreSQL) and any `Publisher` (memory, NATS JetStream).
 *
 * One batch ({@link Service.runOnce}):
 * 1. **claim**: up to `batchSize` entries at the head of their aggregates, leased to
 *    this relay for `lease` (in PostgreSQL: one short statement with
 *    `FOR UPDATE SKIP LOCKED`; no lock or transaction stays open afterwards);
 * 2. **publish**: aggregates concurrently, each one's entries in version order, each
 *    after the broker acknowledged the one before, stopping at its first failure;
 * 3. **settle**, in one step: acknowledged entries become `published`; a rejected
 *    entry spends one attempt (`retry_count` + 1, `last_error`) and is retried after
 *    the `retrySchedule`'s delay, or becomes `failed` when `retryBudget` attempts are
 *    spent; entries not tried, or not reached because the broker was unreachable,
 *    are handed back without spending an attempt.
 *
 * **Delivery** is at least once: a relay that stops between the broker's ack and
 * the settle, or whose lease runs out, leads to a second publish of the same
 * message, which carries the same event id (JetStream's `Nats-Msg-Id`) so the
 * broker drops it.
 *
 * **Order per aggregate** holds across retries, restarts and several relays: an
 * entry is claimed only together with every earlier unpublished entry of its
 * aggregate, so one relay at a time holds an aggregate; it publishes version n+1
 * only after the broker acknowledged version n, and stops at a failure, handing
 * back the rest. A later claim can reach n+1 only once n is published; a failed n
 * holds n+1 back (see `Outbox`). When a lease expires under a relay that is still
 * publishing, the next relay starts again from the oldest unpublished entry and
 * follows the same rule, so the first copy of n+1 the broker stores still follows
 * the first copy of n, and later copies are dropped as duplicates.
 *
 * **Wake-ups**: the fiber runs a batch when the outbox signals new entries (LISTEN/
 * NOTIFY in PostgreSQL, sent at commit), every `pollInterval` as a fallback, when a
 * retry is due, and straight away as long as claims find entries. While the
 * broker or the database is unreachable it backs off with `backoff`; while the
 * publisher says its broker is not ready (see `Publisher.Status`), it claims nothing
 * and waits for it, and `stats` shows the broker's state.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberRef from "effect/FiberRef"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as ScheduleDecision from "effect/ScheduleDecision"
import * as ScheduleIntervals from "effect/ScheduleIntervals"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import {
  type Entry,
  Outbox,
  type OutboxError,
  type Service as OutboxService,
  type Stats as OutboxStats,
  type Settlement
} from "./Outbox.js"
import {
  awaitReady,
  Outcome,
  type PublishError,
  Publisher,
  type Service as PublisherService,
  type Status
} from "./Publisher.js"
import * as Settings from "./Settings.js"
import { Attributes, metricsEnabled, outboxMetrics, Spans } from "./Telemetry.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Entries per claim. Default 100. */
  readonly batchSize?: number
  /** How often to look for work when no signal came (missed notifications, expired leases). Default 5 seconds. */
  readonly pollInterval?: Duration.DurationInput
  /** How long claimed entries stay reserved for this relay. Must exceed a batch's publish time. Default 30 seconds. */
  readonly lease?: Duration.DurationInput
  /** Failed attempts (broker rejections) after which an entry is marked `failed`. Default 5. */
  readonly retryBudget?: number
  /**
   * The delays between the attempts of one entry: attempt n waits for the schedule's
   * n-th delay. An entry whose schedule ends is marked `failed` even within budget.
   * Default: exponential from 1 second, doubling, jittered, at most 5 minutes.
   */
  readonly retrySchedule?: Schedule.Schedule<unknown, unknown>
  /**
   * How the relay waits while the broker or the database is unreachable, and
   * while notifications are lost. When it ends, the next poll tries again.
   * Default: exponential from 100 ms, at most 5 seconds, for as long as it lasts.
   */
  readonly backoff?: Schedule.Schedule<unknown, unknown>
  /** This relay's id in `claimed_by`. Default: a random one per relay. */
  readonly owner?: string
  /**
   * Whether to start the background fiber. With `false`, nothing runs until you
   * call `runOnce` or `drain` (benchmarks, tests, a scheduled job). Default true.
   */
  readonly start?: boolean
  /**
   * Batches in flight at once. With more than one, a batch is claimed and settled
   * while others are being published; batches never share an aggregate (leases), so
   * order per aggregate is kept. Default 1.
   */
  readonly workers?: number
}

/**
 * What one batch did.
 *
 * @since 0.1.0
 * @category models
 */
export interface BatchReport {
  readonly claimed: number
  /** Acknowledged by the broker (duplicates included). */
  readonly published: number
  /** Acknowledged as duplicates: the broker had the event id already. */
  readonly duplicates: number
  /** Attempts rejected by the broker (each spent one attempt of the entry's budget). */
  readonly failed: number
  /** Of those, entries whose budget is now spent: marked `failed`. */
  readonly exhausted: number
  /** Handed back without an attempt spent (behind a failure, or the broker was unreachable). */
  readonly released: number
}

/**
 * The outbox's figures and the link to the broker.
 *
 * @since 0.1.0
 * @category models
 */
export interface Stats extends OutboxStats {
  readonly broker: Status
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** This relay's id, as stored in `claimed_by`. */
  readonly owner: string
  /**
   * Claims, publishes and settles one batch. Fails with the `PublishError` when the
   * broker was unreachable (after handing the entries back), or with the
   * `OutboxError` of the storage.
   */
  readonly runOnce: Effect.Effect<BatchReport, OutboxError | PublishError>
  /** Runs batches until a claim comes back empty; returns the totals. */
  readonly drain: Effect.Effect<BatchReport, OutboxError | PublishError>
  /** Asks the background fiber to run a batch now. */
  readonly wake: Effect.Effect<void>
  readonly stats: Effect.Effect<Stats, OutboxError>
  readonly retryFailed: OutboxService["retryFailed"]
  readonly park: OutboxService["park"]
  readonly deletePublished: OutboxService["deletePublished"]
}

/**
 * @since 0.1.0
 * @category models
 */
export class OutboxRelay extends Context.Tag("@eventfold/core/OutboxRelay")<OutboxRelay, Service>() {}

/**
 * The defaults of {@link Options}.
 *
 * @since 0.1.0
 * @category models
 */
export const defaults = {
  batchSize: 100,
  pollInterval: Duration.seconds(5),
  lease: Duration.seconds(30),
  retryBudget: 5,
  retrySchedule: Schedule.exponential("1 second", 2).pipe(
    Schedule.union(Schedule.spaced("5 minutes")),
    Schedule.jittered
  ) as Schedule.Schedule<unknown, unknown>,
  backoff: Schedule.exponential("100 millis", 2).pipe(
    Schedule.union(Schedule.spaced("5 seconds"))
  ) as Schedule.Schedule<unknown, unknown>
} as const

const emptyReport: BatchReport = { claimed: 0, published: 0, duplicates: 0, failed: 0, exhausted: 0, released: 0 }

const addReports = (a: BatchReport, b: BatchReport): BatchReport => ({
  claimed: a.claimed + b.claimed,
  published: a.published + b.published,
  duplicates: a.duplicates + b.duplicates,
  failed: a.failed + b.failed,
  exhausted: a.exhausted + b.exhausted,
  released: a.released + b.released
})

/**
 * The delay before attempt `attempt + 1`: the schedule's `attempt`-th delay, or none
 * when the schedule ends before.
 */
const retryDelay = (schedule: Schedule.Schedule<unknown, unknown>, attempt: number) =>
  Effect.gen(function* () {
    let now = yield* Clock.currentTimeMillis
    let state = schedule.initial
    let delay = Duration.zero
    for (let i = 0; i < attempt; i++) {
      const [next, , decision] = yield* schedule.step(now, undefined, state)
      if (ScheduleDecision.isDone(decision)) return Option.none<Duration.Duration>()
      const start = ScheduleIntervals.start(decision.intervals)
      delay = Duration.millis(Math.max(0, start - now))
      now = Math.max(now, start)
      state = next
    }
    return Option.some(delay)
  })

/**
 * What a relay records while metrics are on (`Telemetry.outboxMetrics`): its publishes,
 * tagged as OpenTelemetry's messaging metrics are, and the outbox's backlog, sampled from
 * `Outbox.stats` at most once per poll interval (the statistics read the whole table).
 */
const makeMeasures = (outbox: OutboxService, publisher: PublisherService, pollInterval: Duration.Duration) => {
  const labels = [
    MetricLabel.make(Attributes.messagingSystem, publisher.system),
    MetricLabel.make(Attributes.messagingOperationName, "publish"),
    MetricLabel.make(Attributes.messagingOperationType, "send"),
    ...(publisher.destination === undefined
      ? []
      : [MetricLabel.make(Attributes.messagingDestination, publisher.destination)])
  ]
  const sent = Metric.taggedWithLabels(outboxMetrics.sent, labels)
  const duration = Metric.taggedWithLabels(outboxMetrics.duration, labels)
  const failed = Metric.taggedWithLabels(outboxMetrics.failed, labels)

  const publish = (self: Effect.Effect<ReadonlyArray<Outcome>, PublishError>) =>
    Effect.flatMap(Clock.currentTimeNanos, (start) =>
      Effect.onExit(self, (exit) =>
        Effect.flatMap(Clock.currentTimeNanos, (end): Effect.Effect<void> => {
          const seconds = Number(end - start) / 1e9
          if (Exit.isSuccess(exit)) {
            // Messages not attempted (Skipped) were not sent, and are not counted.
            let acknowledged = 0
            const refused = new Map<string, number>()
            for (const outcome of exit.value) {
              if (outcome._tag === "Published") acknowledged++
              else if (outcome._tag === "Failed") {
                refused.set(outcome.error.reason, (refused.get(outcome.error.reason) ?? 0) + 1)
              }
            }
            return Effect.all(
              [
                Metric.update(duration, seconds),
                acknowledged === 0 ? Effect.void : Metric.update(sent, acknowledged),
                ...[...refused].map(([reason, count]) =>
                  Metric.update(Metric.tagged(sent, Attributes.errorType, reason), count)
                )
              ],
              { discard: true }
            )
          }
          // Stopped (the relay closing): no operation to speak of.
          if (Cause.isInterruptedOnly(exit.cause)) return Effect.void
          const errorType = Option.match(Cause.failureOption(exit.cause), {
            onNone: () => "_OTHER",
            onSome: (error) => error.reason
          })
          return Metric.update(Metric.tagged(duration, Attributes.errorType, errorType), seconds)
        })
      )
    )

  const pending = outboxMetrics.pending
  const oldestPendingAge = outboxMetrics.oldestPendingAge
  const intervalMillis = Duration.toMillis(pollInterval)
  let sampledAt: number | undefined
  const sampleOutbox = Effect.flatMap(Clock.currentTimeMillis, (now) => {
    if (sampledAt !== undefined && now - sampledAt < intervalMillis) return Effect.void
    // Taken before the read, so that the workers of one relay do not all sample at once.
    sampledAt = now
    return outbox.stats.pipe(
      Effect.flatMap((stats) =>
        Effect.zipRight(
          Metric.set(pending, stats.pending),
          Metric.set(
            oldestPendingAge,
            Option.match(stats.oldestPendingAge, { onNone: () => 0, onSome: (age) => Duration.toMillis(age) / 1000 })
          )
        )
      ),
      Effect.catchAll((error) =>
        Effect.logDebug("OutboxRelay: the outbox's figures could not be read for its metrics", error)
      )
    )
  })

  return { publish, failed, sampleOutbox }
}

/**
 * Builds a relay over the `Outbox` and `Publisher` in context and, unless
 * `start: false`, starts its background fiber in the scope. Closing the scope
 * stops the fiber and hands back the relay's leased entries.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<Service, never, Outbox | Publisher | Scope.Scope> =>
  Effect.gen(function* () {
    const outbox = yield* Outbox
    const publisher = yield* Publisher
    const owner = options.owner ?? `relay-${crypto.randomUUID()}`
    const batchSize = options.batchSize ?? defaults.batchSize
    const lease = Duration.decode(options.lease ?? defaults.lease)
    const pollInterval = Duration.decode(options.pollInterval ?? defaults.pollInterval)
    const retryBudget = options.retryBudget ?? defaults.retryBudget
    const retrySchedule = options.retrySchedule ?? defaults.retrySchedule
    const backoff = options.backoff ?? defaults.backoff
    if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
      return yield* Effect.dieMessage(`OutboxRelay: batchSize must be a positive integer, got ${batchSize}`)
    }
    if (!Number.isSafeInteger(retryBudget) || retryBudget < 1) {
      return yield* Effect.dieMessage(`OutboxRelay: retryBudget must be a positive integer, got ${retryBudget}`)
    }

    const workers = options.workers ?? 1
    if (!Number.isSafeInteger(workers) || workers < 1) {
      return yield* Effect.dieMessage(`OutboxRelay: workers must be a positive integer, got ${workers}`)
    }
    // One signal per worker: a wake-up reaches every idle worker.
    const signals = yield* Effect.all(Array.from({ length: workers }, () => Queue.sliding<void>(1)))
    const wake = Effect.forEach(signals, (signal) => Queue.offer(signal, undefined), { discard: true })
    const timers = yield* FiberSet.make()
    const measures = makeMeasures(outbox, publisher, pollInterval)

    const publishAndSettle = (entries: ReadonlyArray<Entry>, measured: boolean) =>
      Effect.gen(function* () {
        const messages = entries.map((entry) => entry.message)
        const publish = publisher.publish(messages)
        const outcomes = yield* (measured ? measures.publish(publish) : publish).pipe(
          // Nothing of the batch was attempted: the head entry of each aggregate failed with the error.
          Effect.catchAll((error) => {
            const heads = new Set<string>()
            return Effect.succeed(
              messages.map((message) => {
                const key = `${message.aggregateType}\u0000${message.aggregateId}`
                if (heads.has(key)) return Outcome.Skipped()
                heads.add(key)
                return Outcome.Failed({ error })
              })
            )
          })
        )
        const settlement: {
          published: Array<string>
          failed: Array<Settlement["failed"][number]>
          released: Array<Settlement["released"][number]>
        } = { published: [], failed: [], released: [] }
        let duplicates = 0
        let exhausted = 0
        let unavailable: PublishError | undefined
        for (let i = 0; i < entries.length; i++) {
          const entry = entries[i]!
          const outcome = outcomes[i] ?? Outcome.Skipped()
          switch (outcome._tag) {
            case "Published":
              settlement.published.push(entry.id)
              if (outcome.duplicate) duplicates++
              break
            case "Skipped":
              settlement.released.push({ id: entry.id })
              break
            case "Failed": {
              const error = outcome.error
              if (error.reason === "Unavailable") {
                unavailable ??= error
                settlement.released.push({ id: entry.id, error: error.message })
                break
              }
              const attempts = entry.retryCount + 1
              const delay = attempts >= retryBudget ? Option.none() : yield* retryDelay(retrySchedule, attempts)
              if (Option.isNone(delay)) exhausted++
              settlement.failed.push({ id: entry.id, error: error.message, retryAfter: Option.getOrNull(delay) })
            }
          }
        }
        yield* outbox.settle({ owner, ...settlement })
        if (measured && exhausted > 0) yield* Metric.update(measures.failed, exhausted)

        const exhaustedIds = settlement.failed.filter((f) => f.retryAfter === null).map((f) => f.id)
        if (exhaustedIds.length > 0) {
          const byId = new Map(entries.map((entry) => [entry.id, entry.message] as const))
          yield* Effect.logError(
            "OutboxRelay: retry budget spent, entries marked failed; later events of their aggregates are held",
            exhaustedIds.map((id) => {
              const message = byId.get(id)!
              return `${message.aggregateType} ${message.aggregateId} v${message.version} (event ${message.eventId})`
            })
          )
        }
        // Run again when the earliest retry is due.
        const nextRetry = settlement.failed
          .flatMap((f) => (f.retryAfter === null ? [] : [Duration.toMillis(f.retryAfter)]))
          .reduce((min, ms) => Math.min(min, ms), Number.POSITIVE_INFINITY)
        if (Number.isFinite(nextRetry)) {
          yield* FiberSet.run(timers, Effect.zipRight(Effect.sleep(Duration.millis(nextRetry)), wake))
        }

        const report: BatchReport = {
          claimed: entries.length,
          published: settlement.published.length,
          duplicates,
          failed: settlement.failed.length,
          exhausted,
          released: settlement.released.length
        }
        yield* Effect.annotateCurrentSpan({
          [Attributes.outboxPublished]: report.published,
          [Attributes.outboxFailed]: report.failed,
          [Attributes.outboxReleased]: report.released
        })
        if (unavailable !== undefined) return yield* Effect.fail(unavailable)
        return report
      })

    const runOnce: Service["runOnce"] = Effect.gen(function* () {
      const measured = yield* FiberRef.get(metricsEnabled)
      if (measured) yield* measures.sampleOutbox
      const entries = yield* outbox.claim({ owner, limit: batchSize, lease })
      yield* Effect.annotateCurrentSpan(Attributes.outboxClaimed, entries.length)
      if (entries.length === 0) return emptyReport
      return yield* publishAndSettle(entries, measured).pipe(
        // Stopped mid-batch: hand the entries back now rather than when the lease ends.
        // What was published already goes out again, with the same event ids.
        Effect.onInterrupt(() =>
          outbox
            .release(
              owner,
              entries.map((entry) => entry.id)
            )
            .pipe(
              Effect.catchAll((error) =>
                Effect.logWarning("OutboxRelay: could not hand back entries; their lease will expire", error)
              )
            )
        )
      )
    }).pipe(
      Effect.withSpan(Spans.relayBatch, {
        attributes: { [Attributes.outboxOwner]: owner, [Attributes.messagingSystem]: publisher.system }
      })
    )

    const drainOne = Effect.iterate(
      { total: emptyReport, done: false },
      {
        while: (state) => !state.done,
        body: (state) =>
          Effect.map(runOnce, (report) => ({ total: addReports(state.total, report), done: report.claimed === 0 }))
      }
    ).pipe(Effect.map((state) => state.total))
    const drain: Service["drain"] = Effect.all(
      Array.from({ length: workers }, () => drainOne),
      {
        concurrency: workers
      }
    ).pipe(Effect.map((reports) => reports.reduce(addReports, emptyReport)))

    const service: Service = {
      owner,
      runOnce,
      drain,
      wake,
      stats: Effect.zipWith(outbox.stats, publisher.status, (stats, broker) => ({ ...stats, broker })),
      retryFailed: outbox.retryFailed,
      park: outbox.park,
      deletePublished: outbox.deletePublished
    }

    if (options.start === false) return service

    // Added before the fiber starts, so it runs after the fiber is interrupted.
    yield* Effect.addFinalizer(() =>
      outbox
        .release(owner)
        .pipe(
          Effect.catchAll((error) =>
            Effect.logWarning("OutboxRelay: could not hand back entries on stop; their lease will expire", error)
          )
        )
    )

    // While the broker is not ready, claim nothing: wait until it is (it says when). Inside
    // the retried unit, so that a batch that found the broker gone waits for it too.
    const whenReady = Effect.flatMap(publisher.status, (status) =>
      status._tag === "Ready" ? Effect.void : awaitReady(publisher)
    )
    const cycle = Effect.zipRight(whenReady, runOnce).pipe(
      // A defect (a bug in a publisher, say) must not end the relay silently either.
      Effect.sandbox,
      Effect.tapError((cause) =>
        Effect.logWarning(
          Option.match(Cause.failureOption(cause), {
            onNone: () => "OutboxRelay: a batch died unexpectedly; its entries return when their lease ends",
            onSome: (error) =>
              error._tag === "PublishError"
                ? "OutboxRelay: broker unreachable, entries handed back; backing off"
                : "OutboxRelay: outbox storage failed; backing off"
          }),
          cause
        )
      ),
      Effect.retry(backoff),
      // A backoff that ends leaves the rest to the next poll.
      Effect.orElseSucceed(() => emptyReport)
    )
    // While claims find work, go on at once; after an empty one, wait for a signal.
    const loop = (signal: Queue.Queue<void>) =>
      Effect.forever(Effect.flatMap(cycle, (report) => (report.claimed === 0 ? Queue.take(signal) : Effect.void)))
    const poll = wake.pipe(Effect.repeat(Schedule.spaced(pollInterval)))
    const listen = outbox.wakeups.pipe(
      Stream.runForEach(() => wake),
      // Whatever ends the listener (a failure or a defect of the storage's client), poll and listen again.
      Effect.sandbox,
      Effect.tapError((cause) =>
        Effect.logWarning("OutboxRelay: notifications lost, relying on polling until they are back", cause)
      ),
      Effect.retry(backoff),
      Effect.ignore,
      Effect.repeat(Schedule.spaced(pollInterval))
    )
    const background = (effect: Effect.Effect<unknown>) =>
      Effect.forkScoped(Effect.annotateLogs(effect, Attributes.outboxOwner, owner))
    yield* background(listen)
    yield* background(poll)
    for (const signal of signals) yield* background(loop(signal))
    return service
  })

/**
 * The relay as a layer: its fiber runs while the layer lives.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<OutboxRelay, never, Outbox | Publisher> =>
  Layer.scoped(OutboxRelay, make(options))

/**
 * Settings from the environment: `OUTBOX_BATCH_SIZE`, `OUTBOX_POLL_INTERVAL`,
 * `OUTBOX_LEASE` (durations such as "5s" or "5 seconds"; a plain number is in
 * milliseconds), `OUTBOX_RETRY_BUDGET`, and
 * `OUTBOX_RETRY_DELAY` / `OUTBOX_RETRY_MAX_DELAY` (the first delay of the
 * exponential retry schedule and its cap). Values in `defaults` apply where the
 * environment says nothing.
 *
 * @since 0.1.0
 * @category constructors
 */
export const config = (defaultOptions: Options = {}): Config.Config<Options> =>
  Settings.overDefaults(
    {
      batchSize: Config.integer("OUTBOX_BATCH_SIZE"),
      pollInterval: Settings.duration("OUTBOX_POLL_INTERVAL", { unit: "millis" }),
      lease: Settings.duration("OUTBOX_LEASE", { unit: "millis" }),
      retryBudget: Config.integer("OUTBOX_RETRY_BUDGET"),
      retryDelay: Settings.duration("OUTBOX_RETRY_DELAY", { unit: "millis" }),
      retryMaxDelay: Settings.duration("OUTBOX_RETRY_MAX_DELAY", { unit: "millis" })
    },
    defaultOptions
  ).pipe(
    Config.map(({ retryDelay, retryMaxDelay, ...options }): Options => {
      if (retryDelay === undefined && retryMaxDelay === undefined) return options
      return {
        ...options,
        retrySchedule: Schedule.exponential(retryDelay ?? Duration.seconds(1), 2).pipe(
          Schedule.union(Schedule.spaced(retryMaxDelay ?? Duration.minutes(5))),
          Schedule.jittered
        )
      }
    })
  )

/**
 * The relay with settings from {@link config}.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  defaultOptions: Options = {}
): Layer.Layer<OutboxRelay, ConfigError.ConfigError, Outbox | Publisher> =>
  Layer.unwrapEffect(Effect.map(config(defaultOptions), layer))

import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as PubSub from "effect/PubSub"
import * as Stream from "effect/Stream"
import type { Backend } from "../EventStore.js"
import type { ClaimOptions, Entry, ListOptions, ParkOptions, Row, Service, Settlement, Stats } from "../Outbox.js"
// A value import of the module that imports this one: used only when called, never at load.
import { inputError } from "../Outbox.js"

interface MutableRow {
  id: string
  retryCount: number
  message: Entry["message"]
  status: Row["status"]
  lastError: string | null
  createdAt: number
  publishedAt: number | null
  claimedBy: string | null
  leaseUntil: number | null
  nextAttemptAt: number | null
  parked: { readonly at: number; readonly by: string; readonly reason: string } | null
}

const aggregateKey = (row: MutableRow) => `${row.message.aggregateType}\u0000${row.message.aggregateId}`

const toRow = (row: MutableRow): Row => ({
  id: row.id,
  retryCount: row.retryCount,
  message: row.message,
  status: row.status,
  lastError: row.lastError,
  createdAt: new Date(row.createdAt),
  publishedAt: row.publishedAt === null ? null : new Date(row.publishedAt),
  claimedBy: row.claimedBy,
  leaseUntil: row.leaseUntil === null ? null : new Date(row.leaseUntil),
  nextAttemptAt: row.nextAttemptAt === null ? null : new Date(row.nextAttemptAt),
  parked: row.parked === null ? null : { ...row.parked, at: new Date(row.parked.at) }
})

/**
 * The memory outbox. Rows are kept in append order, which is global-position
 * order and, per aggregate, version order; every operation is one synchronous
 * step, so operations are atomic with respect to each other.
 */
export const make = Effect.gen(function* () {
  const rows: Array<MutableRow> = []
  const byId = new Map<string, MutableRow>()
  const eventIds = new Set<string>()
  const signal = yield* PubSub.sliding<void>(1)
  const appendLock = yield* Effect.makeSemaphore(1)

  const leased = (row: MutableRow, now: number) => row.leaseUntil !== null && row.leaseUntil >= now
  const due = (row: MutableRow, now: number) => row.nextAttemptAt === null || row.nextAttemptAt <= now

  const claim = (options: ClaimOptions) =>
    Effect.map(Clock.currentTimeMillis, (now): ReadonlyArray<Entry> => {
      const claimed: Array<Entry> = []
      // An aggregate whose earliest unpublished row is not taken by this claim is blocked from there on.
      const blocked = new Set<string>()
      for (const row of rows) {
        if (claimed.length >= options.limit) break
        if (row.status === "published" || row.status === "parked") continue
        const key = aggregateKey(row)
        if (blocked.has(key)) continue
        if (row.status === "failed" || leased(row, now) || !due(row, now)) {
          blocked.add(key)
          continue
        }
        row.claimedBy = options.owner
        row.leaseUntil = now + Duration.toMillis(options.lease)
        claimed.push({ id: row.id, retryCount: row.retryCount, message: row.message })
      }
      return claimed
    })

  const settle = (settlement: Settlement) =>
    Effect.map(Clock.currentTimeMillis, (now) => {
      const ours = (id: string) => {
        const row = byId.get(id)
        return row !== undefined && row.claimedBy === settlement.owner && row.status === "pending" ? row : undefined
      }
      for (const id of settlement.published) {
        const row = byId.get(id)
        if (row === undefined) continue
        row.status = "published"
        row.publishedAt ??= now
        row.claimedBy = null
        row.leaseUntil = null
      }
      for (const failure of settlement.failed) {
        const row = ours(failure.id)
        if (row === undefined) continue
        row.retryCount += 1
        row.lastError = failure.error
        if (failure.retryAfter === null) row.status = "failed"
        else row.nextAttemptAt = now + Duration.toMillis(failure.retryAfter)
        row.claimedBy = null
        row.leaseUntil = null
      }
      for (const release of settlement.released) {
        const row = ours(release.id)
        if (row === undefined) continue
        if (release.error !== undefined) row.lastError = release.error
        row.claimedBy = null
        row.leaseUntil = null
      }
    })

  const release = (owner: string, ids?: ReadonlyArray<string>) =>
    Effect.sync(() => {
      const only = ids === undefined ? undefined : new Set(ids)
      let count = 0
      for (const row of rows) {
        if (row.claimedBy !== owner || row.status !== "pending") continue
        if (only !== undefined && !only.has(row.id)) continue
        row.claimedBy = null
        row.leaseUntil = null
        count++
      }
      return count
    })

  const stats = Effect.map(Clock.currentTimeMillis, (now): Stats => {
    let pending = 0
    let published = 0
    let failed = 0
    let held = 0
    let parked = 0
    let inFlight = 0
    let oldest: number | undefined
    const failedAggregates = new Set<string>()
    for (const row of rows) {
      if (row.status === "published") published++
      else if (row.status === "parked") parked++
      else if (row.status === "failed") {
        failed++
        failedAggregates.add(aggregateKey(row))
      } else {
        pending++
        if (failedAggregates.has(aggregateKey(row))) held++
        if (leased(row, now)) inFlight++
        if (oldest === undefined || row.createdAt < oldest) oldest = row.createdAt
      }
    }
    return {
      pending,
      published,
      failed,
      held,
      parked,
      inFlight,
      oldestPendingAt: oldest === undefined ? Option.none() : Option.some(new Date(oldest)),
      oldestPendingAge: oldest === undefined ? Option.none() : Option.some(Duration.millis(Math.max(0, now - oldest)))
    }
  })

  const retryFailed = (options?: { readonly eventIds?: ReadonlyArray<string> }) =>
    Effect.suspend(() => {
      const invalid = inputError("retryFailed", { eventIds: options?.eventIds })
      return invalid === undefined ? Effect.void : Effect.fail(invalid)
    }).pipe(
      Effect.zipRight(
        Effect.sync(() => {
          const only =
            options?.eventIds === undefined ? undefined : new Set(options.eventIds.map((id) => id.toLowerCase()))
          let count = 0
          for (const row of rows) {
            // A parked entry is put back only when named.
            if (row.status !== "failed" && !(row.status === "parked" && only !== undefined)) continue
            if (only !== undefined && !only.has(row.message.eventId)) continue
            row.status = "pending"
            row.retryCount = 0
            row.nextAttemptAt = null
            row.parked = null
            count++
          }
          return count
        })
      ),
      Effect.tap((count) => (count > 0 ? PubSub.publish(signal, undefined) : Effect.void))
    )

  const park = (options: ParkOptions) =>
    Effect.suspend(() => {
      const invalid = inputError("park", options)
      return invalid === undefined ? Clock.currentTimeMillis : Effect.fail(invalid)
    }).pipe(
      Effect.map((now) => {
        const only = new Set(options.eventIds.map((id) => id.toLowerCase()))
        let count = 0
        for (const row of rows) {
          if (row.status !== "failed" || !only.has(row.message.eventId)) continue
          row.status = "parked"
          row.parked = { at: now, by: options.by, reason: options.reason }
          count++
        }
        return count
      }),
      Effect.tap((count) => (count > 0 ? PubSub.publish(signal, undefined) : Effect.void))
    )

  const deletePublished = (olderThan: Duration.DurationInput) =>
    Effect.map(Clock.currentTimeMillis, (now) => {
      const limit = now - Duration.toMillis(Duration.decode(olderThan))
      let count = 0
      for (let i = rows.length - 1; i >= 0; i--) {
        const row = rows[i]!
        if (row.status === "published" && row.publishedAt !== null && row.publishedAt < limit) {
          rows.splice(i, 1)
          byId.delete(row.id)
          count++
        }
      }
      return count
    })

  const list = (options: ListOptions = {}) =>
    Effect.sync(() =>
      rows
        .filter(
          (row) =>
            (options.status === undefined || row.status === options.status) &&
            (options.aggregateId === undefined || row.message.aggregateId === options.aggregateId.toLowerCase())
        )
        .slice(0, options.limit ?? 1000)
        .map(toRow)
    )

  const outbox: Service = {
    claim,
    settle,
    release,
    stats,
    retryFailed,
    park,
    deletePublished,
    list,
    wakeups: Stream.fromPubSub(signal)
  }

  const withOutbox = (backend: Backend): Backend => ({
    ...backend,
    forTenant: (tenantId) => withOutbox(backend.forTenant(tenantId)),
    append: (input) =>
      appendLock.withPermits(1)(
        backend.append(input).pipe(
          Effect.tap((result) =>
            Effect.flatMap(Clock.currentTimeMillis, (now) => {
              // An idempotent replay returns the original result: its entries exist already.
              if (input.events.some((event) => eventIds.has(event.eventId))) return Effect.void
              const firstVersion = result.version - input.events.length + 1
              input.events.forEach((event, i) => {
                const row: MutableRow = {
                  id: crypto.randomUUID(),
                  retryCount: 0,
                  message: {
                    eventId: event.eventId,
                    eventType: event.eventType,
                    aggregateId: input.stream.aggregateId,
                    aggregateType: input.stream.aggregateType,
                    version: firstVersion + i,
                    globalPosition: result.firstPosition + BigInt(i),
                    tenantId: input.tenantId,
                    actorId: input.actorId,
                    timestamp: event.timestamp,
                    metadata: input.metadata,
                    payloadJson: event.payloadJson
                  },
                  status: "pending",
                  lastError: null,
                  createdAt: now,
                  publishedAt: null,
                  claimedBy: null,
                  leaseUntil: null,
                  nextAttemptAt: null,
                  parked: null
                }
                rows.push(row)
                byId.set(row.id, row)
                eventIds.add(event.eventId)
              })
              return PubSub.publish(signal, undefined)
            })
          )
        )
      )
  })

  return { outbox, withOutbox }
})

import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import { concurrencyError, DuplicateEventError, TenantMismatchError } from "../Errors.js"
import type { AppendResult, Backend, PreparedAppend, ReadAllOptions, StoredEvent } from "../EventStore.js"
import * as ExpectedVersion from "../ExpectedVersion.js"
import * as Subscription from "../Subscription.js"

const PAGE = 512

interface State {
  /** The global log; index i holds position i + 1. */
  readonly log: Array<StoredEvent>
  readonly streams: Map<string, Array<StoredEvent>>
  readonly byId: Map<string, StoredEvent>
  /** Completed (and replaced) by every append: subscribers wait on it. */
  appended: Deferred.Deferred<void>
  /** Each stored event's payload as the JSON text it was appended as. */
  readonly payloadJson: WeakMap<StoredEvent, string>
}

const key = (aggregateType: string, aggregateId: string) => `${aggregateType}\u0000${aggregateId}`

/**
 * The memory backend. Appends are checked and applied in one synchronous step, so
 * they are atomic with respect to each other, as PostgreSQL's are.
 */
export const make = (): Backend => {
  const state: State = {
    log: [],
    streams: new Map(),
    byId: new Map(),
    appended: Deferred.unsafeMake(FiberId.none),
    payloadJson: new WeakMap()
  }
  return bound(state, undefined)
}

/** The backend over `state`, seeing every tenant (`tenant` undefined) or one. */
const bound = (state: State, tenant: string | undefined): Backend => {
  /** Whether an event is visible in this scope. */
  const visible = (event: StoredEvent) => tenant === undefined || event.tenantId === tenant
  const payloadJson = state.payloadJson

  // The fiber's clock stamps `createdAt`, as it stamps timestamps: under a TestClock both are its time.
  const append: Backend["append"] = (input: PreparedAppend) =>
    Effect.clockWith((clock): ReturnType<Backend["append"]> => {
      const streamKey = key(input.stream.aggregateType, input.stream.aggregateId)
      const events = state.streams.get(streamKey) ?? []
      const actual = events.length

      // A stream's tenant is fixed by its first append: it never holds two tenants' events.
      if (
        (events[0] !== undefined && events[0].tenantId !== input.tenantId) ||
        (tenant !== undefined && input.tenantId !== tenant)
      ) {
        return Effect.fail(
          new TenantMismatchError({
            aggregateId: input.stream.aggregateId,
            aggregateType: input.stream.aggregateType,
            tenantId: input.tenantId,
            reason:
              events[0] !== undefined && events[0].tenantId !== input.tenantId
                ? "StreamOfAnotherTenant"
                : "OutsideScope"
          })
        )
      }

      const replay = idempotentReplay(state, input)
      if (replay !== undefined) return replay

      if (!ExpectedVersion.isSatisfiedBy(input.expectedVersion, actual)) {
        return Effect.fail(
          concurrencyError({
            aggregateId: input.stream.aggregateId,
            aggregateType: input.stream.aggregateType,
            expectedVersion: input.expectedVersion,
            actualVersion: actual
          })
        )
      }
      const createdAt = new Date(clock.unsafeCurrentTimeMillis())
      const firstPosition = BigInt(state.log.length + 1)
      input.events.forEach((event, i) => {
        const stored: StoredEvent = {
          eventId: event.eventId,
          eventType: event.eventType,
          aggregateId: input.stream.aggregateId,
          aggregateType: input.stream.aggregateType,
          version: actual + i + 1,
          tenantId: input.tenantId,
          actorId: input.actorId,
          timestamp: event.timestamp,
          globalPosition: firstPosition + BigInt(i),
          createdAt,
          metadata: input.metadata,
          // Parsed from the JSON text, as jsonb would: the stored payload is a copy.
          payload: JSON.parse(event.payloadJson)
        }
        payloadJson.set(stored, event.payloadJson)
        state.log.push(stored)
        events.push(stored)
        state.byId.set(event.eventId, stored)
      })
      state.streams.set(streamKey, events)
      const appended = state.appended
      state.appended = Deferred.unsafeMake(FiberId.none)
      Deferred.unsafeDone(appended, Exit.void)
      return Effect.succeed<AppendResult>({
        version: actual + input.events.length,
        firstPosition,
        lastPosition: firstPosition + BigInt(input.events.length - 1)
      })
    })

  /**
   * Each read gets a payload of its own, as from PostgreSQL (the registry may build the event
   * from it), parsed from its text: JSON.parse takes any depth, structuredClone overflows the stack.
   */
  const owned = (event: StoredEvent): StoredEvent => ({ ...event, payload: JSON.parse(payloadJson.get(event)!) })

  const readStream: Backend["readStream"] = (stream, options) =>
    Stream.suspend(() => {
      const events = state.streams.get(key(stream.aggregateType, stream.aggregateId)) ?? []
      const to = options.toVersion ?? Number.MAX_SAFE_INTEGER
      const selected = events.filter((e) => e.version >= options.fromVersion && e.version <= to && visible(e))
      if (options.direction === "backward") selected.reverse()
      return Stream.fromIterable(selected.map(owned)).pipe(Stream.rechunk(PAGE))
    })

  const readStreamEvents: Backend["readStreamEvents"] = (stream, fromVersion) =>
    readStream(stream, { direction: "forward", fromVersion })

  const readAll: Backend["readAll"] = (options) =>
    Stream.suspend(() => {
      const matches = matcher(options, visible)
      const forward = options.direction === "forward"
      const limit = options.limit ?? Number.POSITIVE_INFINITY
      const start = forward ? (options.after ?? 0n) : (options.before ?? BigInt(state.log.length + 1))
      // Pages by position, like the SQL store: a long read sees events appended meanwhile.
      return Stream.paginateChunkEffect({ cursor: start, taken: 0 }, ({ cursor, taken }) =>
        Effect.sync(() => {
          const page: Array<StoredEvent> = []
          const want = Math.min(PAGE, limit - taken)
          let position = cursor
          let end = want <= 0
          while (!end && page.length < want) {
            const next = forward ? position + 1n : position - 1n
            end =
              next < 1n ||
              next > BigInt(state.log.length) ||
              (options.before !== undefined && next >= options.before) ||
              (options.after !== undefined && next <= options.after)
            if (end) break
            position = next
            const event = state.log[Number(next) - 1]!
            if (matches(event)) page.push(owned(event))
          }
          const done = end || taken + page.length >= limit
          return [
            Chunk.unsafeFromArray(page),
            done ? Option.none() : Option.some({ cursor: position, taken: taken + page.length })
          ] as const
        })
      )
    })

  // Appends are atomic here, so the whole log is always settled: the horizon is its end.
  const waitBeyond = (seen: bigint): Effect.Effect<bigint> =>
    Effect.suspend(() => {
      // Taken before looking, so that an append in between still wakes us.
      const appended = state.appended
      const end = BigInt(state.log.length)
      return end > seen ? Effect.succeed(end) : Effect.zipRight(Deferred.await(appended), waitBeyond(seen))
    })

  const subscribe: Backend["subscribe"] = (options) => {
    const matches = matcher(options, visible)
    return Subscription.follow(
      {
        horizon: Stream.unfoldEffect(-1n, (seen) =>
          Effect.map(waitBeyond(seen), (end) => Option.some([{ settled: end, stall: Option.none() }, end] as const))
        ),
        read: ({ after, upTo, limit }) =>
          Effect.sync(() => {
            const page: Array<StoredEvent> = []
            const end = Math.min(Number(upTo), state.log.length)
            for (let i = Number(after); i < end && page.length < limit; i++) {
              const event = state.log[i]!
              if (matches(event)) page.push(owned(event))
            }
            return page
          })
      },
      options
    )
  }

  return {
    name: "memory",
    append,
    readStream,
    readStreamEvents,
    readAll,
    subscribe,
    forTenant: (tenantId) => bound(state, tenantId)
  }
}

/**
 * Re-appending event ids that are already stored at the same stream positions
 * returns the original result; an id stored anywhere else is a duplicate.
 */
const idempotentReplay = (state: State, input: PreparedAppend) => {
  const found = input.events.map((e) => state.byId.get(e.eventId))
  if (found.every((e) => e === undefined)) return undefined
  const first = found[0]
  const samePlaces =
    first !== undefined &&
    found.every(
      (stored, i) =>
        stored !== undefined &&
        stored.aggregateId === input.stream.aggregateId &&
        stored.aggregateType === input.stream.aggregateType &&
        stored.version === first.version + i
    ) &&
    ExpectedVersion.isSatisfiedBy(input.expectedVersion, first.version - 1)
  if (samePlaces) {
    const last = found[found.length - 1]!
    return Effect.succeed<AppendResult>({
      version: last.version,
      firstPosition: first.globalPosition,
      lastPosition: last.globalPosition
    })
  }
  const duplicate = input.events.find((_, i) => found[i] !== undefined)!
  return Effect.fail(
    new DuplicateEventError({
      eventId: duplicate.eventId,
      aggregateId: input.stream.aggregateId,
      aggregateType: input.stream.aggregateType
    })
  )
}

const matcher = (options: ReadAllOptions, visible: (event: StoredEvent) => boolean) => {
  const aggregateTypes = options.aggregateTypes && new Set(options.aggregateTypes)
  const eventTypes = options.eventTypes && new Set(options.eventTypes)
  return (event: StoredEvent) =>
    visible(event) &&
    (options.tenantId === undefined || event.tenantId === options.tenantId) &&
    (aggregateTypes === undefined || aggregateTypes.has(event.aggregateType)) &&
    (eventTypes === undefined || eventTypes.has(event.eventType)) &&
    (options.since === undefined || event.timestamp.getTime() >= options.since.getTime()) &&
    (options.until === undefined || event.timestamp.getTime() < options.until.getTime())
}

/**
 * The reads of the PostgreSQL store, in keyset pages (by version, by global position):
 * constant memory, and no connection held between pages. A page that fails for a
 * transient reason outside a caller's transaction (no connection, a connection lost)
 * is read again as `retry` says: a read has no effect, and the cursor stays where the
 * last page ended, so nothing is skipped or repeated.
 */
import * as EventStore from "@eventfold/core/EventStore"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as EventRows from "./eventRows.js"
import * as Driver from "./pgDriver.js"
import * as ReadSql from "./readSql.js"
import { retryFailures } from "./retry.js"

export interface Options {
  readonly pageSize: number
  readonly foldPageSize: number
  readonly retry: Schedule.Schedule<unknown, unknown>
}

/**
 * The reads over `executor`. In a tenant scope (`executor.tenantId`), every read also
 * filters by the tenant in SQL, so that the scope holds on a connection that row-level
 * security does not bind (a superuser, a table owner).
 */
export const make = (executor: Driver.Executor, options: Options) => {
  const { foldPageSize, pageSize } = options
  const tenantId = executor.tenantId
  /** Filters of the log in a tenant scope: the scope's tenant (core refuses a filter naming another). */
  const scoped = <O extends { readonly tenantId?: string | undefined }>(filters: O): O =>
    tenantId === null ? filters : { ...filters, tenantId }

  /** One page, decoded by `parseRow`; failures as the store's, after the retries. */
  const read = <A>(
    statement: Driver.Statement,
    values: ReadonlyArray<unknown>,
    parseRow: (row: Driver.Row) => A,
    retry: Schedule.Schedule<unknown, unknown> = options.retry
  ): Effect.Effect<ReadonlyArray<A>, Driver.DriverError> =>
    Effect.flatMap(executor.inTransaction, (transaction) =>
      retryFailures(
        executor.run(statement, values, parseRow),
        retry,
        (error) => !transaction && Driver.isTransient(error)
      )
    )

  /** A page of stored events. */
  const page = (query: ReadSql.EventQuery, order: string, limit: number) =>
    read(query.statement(order, limit), query.values, EventRows.decodeRow)

  const readStream: EventStore.Backend["readStream"] = (stream, readOptions) => {
    const forward = readOptions.direction === "forward"
    const to = readOptions.toVersion ?? 2147483647
    return Stream.paginateChunkEffect(forward ? readOptions.fromVersion : to, (cursor) =>
      Effect.suspend(() => {
        const [query, order] = ReadSql.streamPage(
          stream,
          forward,
          cursor,
          forward ? to : readOptions.fromVersion,
          tenantId
        )
        return page(query, order, pageSize)
      }).pipe(
        Effect.mapError(EventStore.storeError("readStream")),
        Effect.map((events) => {
          const last = events[events.length - 1]
          return [
            Chunk.unsafeFromArray(events),
            events.length < pageSize || last === undefined
              ? Option.none()
              : Option.some(forward ? last.version + 1 : last.version - 1)
          ] as const
        })
      )
    )
  }

  const readStreamEvents: EventStore.Backend["readStreamEvents"] = (stream, fromVersion) =>
    Stream.paginateChunkEffect(fromVersion, (cursor) =>
      read(
        tenantId === null ? ReadSql.READ_STREAM_EVENTS : ReadSql.READ_STREAM_EVENTS_TENANT,
        tenantId === null
          ? [stream.aggregateId, stream.aggregateType, cursor, foldPageSize]
          : [stream.aggregateId, stream.aggregateType, cursor, foldPageSize, tenantId],
        EventRows.decodeStreamRow
      ).pipe(
        Effect.mapError(EventStore.storeError("readStreamEvents")),
        Effect.map((events) => {
          const last = events[events.length - 1]
          return [
            Chunk.unsafeFromArray(events),
            events.length < foldPageSize || last === undefined ? Option.none() : Option.some(last.version + 1)
          ] as const
        })
      )
    )

  const readAll: EventStore.Backend["readAll"] = (readOptions) => {
    const forward = readOptions.direction === "forward"
    const limit = readOptions.limit ?? Number.POSITIVE_INFINITY
    const start: bigint | undefined = forward ? (readOptions.after ?? 0n) : readOptions.before
    return Stream.paginateChunkEffect({ cursor: start, taken: 0 }, ({ cursor, taken }) => {
      const size = Math.min(pageSize, limit - taken)
      if (size <= 0) return Effect.succeed([Chunk.empty<EventStore.StoredEvent>(), Option.none()] as const)
      const [query, order] = ReadSql.logPage(scoped(readOptions), cursor)
      return page(query, order, size).pipe(
        Effect.mapError(EventStore.storeError("readAll")),
        Effect.map((events) => {
          const last = events[events.length - 1]
          return [
            Chunk.unsafeFromArray(events),
            events.length < size || last === undefined || taken + events.length >= limit
              ? Option.none()
              : Option.some({ cursor: last.globalPosition, taken: taken + events.length })
          ] as const
        })
      )
    })
  }

  /** A subscription's page: positions in (after, upTo], filtered; retried as `retry` says. */
  const subscriptionPage = (
    filters: Parameters<typeof ReadSql.subscriptionPage>[0],
    range: { readonly after: bigint; readonly upTo: bigint; readonly limit: number },
    retry: Schedule.Schedule<unknown, unknown>
  ) =>
    Effect.suspend(() => {
      const [query, order] = ReadSql.subscriptionPage(scoped(filters), range.after, range.upTo)
      return read(query.statement(order, range.limit), query.values, EventRows.decodeRow, retry)
    })

  return { readStream, readStreamEvents, readAll, subscriptionPage }
}

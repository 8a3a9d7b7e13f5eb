/**
 * The rules of the settled horizon (see `pgSubscription.ts` for why and how): the
 * watcher's state as one record, and the pure functions that change it after each
 * refresh and decide when to refresh next. No I/O here, so that every rule is tested
 * alone (test/horizon.test.ts).
 */

export interface Pending {
  /** The last position taken when `writers` were read. */
  readonly last: bigint
  /** Virtual transaction id → pid (0 for a prepared transaction). */
  readonly writers: ReadonlyMap<string, number>
  readonly at: number
}

/** The watcher's timing, in milliseconds. */
export interface Settings {
  readonly settleMillis: number
  readonly pollMillis: number
  readonly stallMillis: number
}

/** Everything the watcher knows, as one record. */
export interface State {
  /** Every transaction that took a position up to here has ended (-1 before the first refresh). */
  readonly settled: bigint
  /** Positions taken beyond `settled`, each with the writers that were running when it was read, oldest first. */
  readonly pending: ReadonlyArray<Pending>
  /** The last position seen, and when. */
  readonly lastSeen: bigint
  readonly lastRefreshAt: number
  /** Refreshes in a row, each soon after the one before, that saw new positions. */
  readonly moving: number
  /** Set while a stall is reported: when the wait began and when it was last reported. */
  readonly stalled: { readonly since: number; readonly reportedAt: number } | undefined
  /** The LISTEN session's pid while it listens. */
  readonly listenerPid: number | undefined
  /** What the listener row says now (undefined: not known, to be written). */
  readonly flagged: boolean | undefined
}

export const initialState: State = {
  settled: -1n,
  pending: [],
  lastSeen: -1n,
  lastRefreshAt: 0,
  moving: 0,
  stalled: undefined,
  listenerPid: undefined,
  flagged: undefined
}

const MAX_PENDING = 1024

/** Refreshes in a row that saw new positions after which the log counts as busy, and is polled. */
const BUSY = 3

/**
 * The settlement rule: the new horizon and pending list after a refresh that saw
 * `last` and `writers`.
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
      // Every waiting entry is beyond the horizon: entries are added only past the newest one.
      horizon = entry.last
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

/** What a refresh calls for besides the new state. */
export type Report =
  | { readonly _tag: "None" }
  /** Readers have been held back for `heldMillis` by the writers of `oldest`: report who. */
  | { readonly _tag: "Stalled"; readonly oldest: Pending; readonly heldMillis: number }
  /** A reported stall ended; it began at `since`. */
  | { readonly _tag: "Resumed"; readonly since: number }

/** A refresh saw `last` and `writers` at `now`. */
export const observe = (
  state: State,
  last: bigint,
  writers: ReadonlyMap<string, number>,
  now: number,
  settings: Settings
): { readonly state: State; readonly report: Report; readonly heldMillis: number } => {
  const moving =
    last > state.lastSeen ? (now - state.lastRefreshAt <= 4 * settings.settleMillis ? state.moving + 1 : 1) : 0
  const { pending, settled } = settle(state.settled, state.pending, last, writers, now)
  const oldest = pending[0]
  const heldMillis = oldest === undefined ? 0 : now - oldest.at
  const next = { ...state, settled, pending, lastSeen: last, lastRefreshAt: now, moving }
  if (oldest !== undefined && heldMillis >= settings.stallMillis) {
    if (state.stalled === undefined || now - state.stalled.reportedAt >= settings.stallMillis) {
      return {
        state: { ...next, stalled: { since: oldest.at, reportedAt: now } },
        report: { _tag: "Stalled", oldest, heldMillis },
        heldMillis
      }
    }
    return { state: next, report: { _tag: "None" }, heldMillis }
  }
  if (state.stalled !== undefined) {
    return {
      state: { ...next, stalled: undefined },
      report: { _tag: "Resumed", since: state.stalled.since },
      heldMillis
    }
  }
  return { state: next, report: { _tag: "None" }, heldMillis }
}

/**
 * How long to wait before the next refresh when no notification comes: while
 * positions wait, a delay that grows with their wait (a stall of minutes is not polled
 * every few milliseconds), up to the poll interval; while the log keeps moving, the
 * settle interval; otherwise until a wake-up (the poll ticker wakes at least every
 * poll interval).
 */
export const nextDelay = (state: State, now: number, settings: Settings): number | undefined => {
  const oldest = state.pending[0]
  if (oldest !== undefined) {
    return Math.min(settings.pollMillis, Math.max(settings.settleMillis, Math.round((now - oldest.at) / 10)))
  }
  return state.moving >= BUSY ? settings.settleMillis : undefined
}

/**
 * Whether the watcher waits for notifications (and appends should send them): it
 * listens, and nothing is pending while the log is quiet, or something has been
 * pending for long. Not while the log keeps moving: it is polled then, and a flag
 * flipped at every lull cost an UPDATE each time and made every append in between
 * notify.
 */
export const waitsForNotifications = (state: State, now: number, settings: Settings): boolean => {
  if (state.listenerPid === undefined) return false
  const oldest = state.pending[0]
  return oldest === undefined ? state.moving < BUSY : now - oldest.at > 40 * settings.settleMillis
}

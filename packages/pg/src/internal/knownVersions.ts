/**
 * What this process saw of recent streams: the last version it saw committed, so
 * that an append that expects exactly that version (or an older one) need not read
 * the stream's last version first, and whether an append to the stream lost a race.
 * Events are never removed from a stream, so a version seen committed stays stored,
 * and whether the next one is free is the unique constraint's to say (see
 * appendSql.ts).
 *
 * Only committed facts are recorded: appends and reads outside a caller's
 * transaction (one that rolls back would leave a version here that is not stored,
 * and an append trusting it would leave a gap). A version is only ever raised, so
 * another process's appends cannot make an entry wrong, only old; an old entry
 * costs the append its probe, or a lost race, never a wrong outcome.
 *
 * Bounded: past `capacity` streams the one recorded first is forgotten (a Map keeps
 * insertion order), and forgetting one costs its next append a probe.
 */

/**
 * What is known of a stream's version `n`: nothing ("unknown"), that it is stored
 * ("known"), or that it is stored and appends to the stream have lost races
 * ("contended").
 */
export type Knowledge = "unknown" | "known" | "contended"

export interface KnownVersions {
  /** Whether `version` of the stream is known to be stored (0, no version, always is). */
  readonly knows: (aggregateId: string, aggregateType: string, version: number) => Knowledge
  /** The stream's version `version` is committed. */
  readonly saw: (aggregateId: string, aggregateType: string, version: number) => void
  /** An append to the stream lost a race, or met a version it did not expect; the stream is at `version`. */
  readonly lostRace: (aggregateId: string, aggregateType: string, version: number) => void
}

interface Entry {
  version: number
  contended: boolean
}

const none: KnownVersions = {
  knows: (_id, _type, version) => (version === 0 ? "known" : "unknown"),
  saw: () => {},
  lostRace: () => {}
}

export const make = (capacity: number): KnownVersions => {
  if (capacity <= 0) return none
  const entries = new Map<string, Entry>()
  const record = (aggregateId: string, aggregateType: string, version: number, contended: boolean) => {
    // Stream ids are checked UUIDs (36 characters), so id and type side by side name one stream.
    const key = aggregateId + aggregateType
    const entry = entries.get(key)
    if (entry !== undefined) {
      if (version > entry.version) entry.version = version
      if (contended) entry.contended = true
      return
    }
    entries.set(key, { version, contended })
    if (entries.size > capacity) entries.delete(entries.keys().next().value!)
  }
  return {
    knows: (aggregateId, aggregateType, version) => {
      const entry = entries.get(aggregateId + aggregateType)
      if (entry === undefined) return version === 0 ? "known" : "unknown"
      return version > entry.version ? "unknown" : entry.contended ? "contended" : "known"
    },
    saw: (aggregateId, aggregateType, version) => record(aggregateId, aggregateType, version, false),
    lostRace: (aggregateId, aggregateType, version) => record(aggregateId, aggregateType, version, true)
  }
}

/**
 * The last version this process saw committed of recent streams, so that an append
 * that expects exactly that version (or an older one) need not read the stream's
 * last version first: events are never removed from a stream, so a version seen
 * committed stays stored, and whether the next one is free is the unique
 * constraint's to say (see appendSql.ts).
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
export interface KnownVersions {
  /** Whether `version` of the stream is known to be stored (0, no version, always is). */
  readonly knows: (aggregateId: string, aggregateType: string, version: number) => boolean
  /** The stream's version `version` is committed. */
  readonly saw: (aggregateId: string, aggregateType: string, version: number) => void
}

const none: KnownVersions = { knows: (_id, _type, version) => version === 0, saw: () => {} }

export const make = (capacity: number): KnownVersions => {
  if (capacity <= 0) return none
  const versions = new Map<string, number>()
  // Stream ids are checked UUIDs (36 characters), so id and type side by side name one stream.
  return {
    knows: (aggregateId, aggregateType, version) =>
      version === 0 || version <= (versions.get(aggregateId + aggregateType) ?? 0),
    saw: (aggregateId, aggregateType, version) => {
      const key = aggregateId + aggregateType
      const known = versions.get(key)
      if (known !== undefined) {
        if (version > known) versions.set(key, version)
        return
      }
      versions.set(key, version)
      if (versions.size > capacity) versions.delete(versions.keys().next().value!)
    }
  }
}

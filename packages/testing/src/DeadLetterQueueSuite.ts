/**
 * The DeadLetterQueue contract (DESIGN §2), run against every backend: a failure is
 * recorded once per (event, projection); a repeated failure adds its attempts, keeps
 * when it first failed, and reopens a resolved letter; letters are listed by
 * projection and status, read, resolved, retried.
 *
 * @since 0.1.0
 */

import { assert, describe, layer } from "@effect/vitest"
import { DeadLetterQueue, EventMetadata, type EventStore } from "@eventfold/core"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { ConformanceBackend } from "./ConformanceBackend.js"
import { registry } from "./SubscriptionSuite.js"

const uuid = () => crypto.randomUUID()

/** A stored event as a runner hands it to the queue. */
const stored = (position: bigint): EventStore.StoredEvent => ({
  eventId: uuid(),
  eventType: "NoteWritten",
  aggregateId: uuid(),
  aggregateType: "Cart",
  version: 1,
  tenantId: null,
  actorId: null,
  timestamp: new Date("2024-01-02T03:04:05.000Z"),
  globalPosition: position,
  createdAt: new Date("2024-01-02T03:04:05.000Z"),
  metadata: EventMetadata.empty,
  payload: { text: "hello" }
})

/**
 * Registers the DeadLetterQueue conformance tests (vitest, through `@effect/vitest`) against the
 * backend the layer provides (the first argument names the `describe` block).
 *
 * @since 0.1.0
 * @category constructors
 */
export const suite = (label: string, backend: Layer.Layer<ConformanceBackend>) =>
  layer(backend, { excludeTestServices: true, timeout: "120 seconds" })(
    `DeadLetterQueue conformance: ${label}`,
    (it) => {
      const withQueue = <A, E>(f: (queue: DeadLetterQueue.Service) => Effect.Effect<A, E>) =>
        Effect.flatMap(ConformanceBackend, (b) =>
          Effect.flatMap(DeadLetterQueue.DeadLetterQueue, f).pipe(Effect.provide(b.services(registry)))
        )

      describe("add", () => {
        it.effect("records the event, its error and attempts as failed", () =>
          withQueue((queue) =>
            Effect.gen(function* () {
              const projection = `p-${uuid()}`
              const event = stored(7n)
              const letter = yield* queue.add(projection, event, { message: "boom", stacktrace: "at x", attempts: 3 })
              assert.deepInclude(letter, {
                projection,
                eventId: event.eventId,
                eventType: "NoteWritten",
                globalPosition: 7n,
                errorMessage: "boom",
                errorStacktrace: "at x",
                retryCount: 3,
                status: "failed",
                resolvedAt: null,
                resolvedBy: null
              })
              assert.deepStrictEqual(Option.getOrThrow(yield* queue.get(letter.id)), letter)
            })
          )
        )

        it.effect(
          "a repeated failure adds its attempts, keeps the first failure's time, and reopens a resolved letter",
          () =>
            withQueue((queue) =>
              Effect.gen(function* () {
                const projection = `p-${uuid()}`
                const event = stored(8n)
                const first = yield* queue.add(projection, event, { message: "first", attempts: 3 })
                const resolved = yield* queue.resolve(first.id, { by: "ops" })
                assert.deepInclude(resolved, { status: "resolved", resolvedBy: "ops" })
                assert.isNotNull(resolved.resolvedAt)
                const again = yield* queue.add(projection, event, { message: "second", attempts: 2 })
                assert.strictEqual(again.id, first.id)
                assert.deepInclude(again, {
                  retryCount: 5,
                  errorMessage: "second",
                  status: "failed",
                  resolvedAt: null,
                  resolvedBy: null
                })
                assert.strictEqual(again.firstFailedAt.getTime(), first.firstFailedAt.getTime())
                assert.isAtLeast(again.lastFailedAt.getTime(), first.lastFailedAt.getTime())
                // The same event in another projection is a letter of its own.
                const other = yield* queue.add(`q-${uuid()}`, event, { message: "other", attempts: 1 })
                assert.notStrictEqual(other.id, first.id)
                assert.strictEqual(other.retryCount, 1)
              })
            )
        )
      })

      describe("what an event holds never fails it", () => {
        /** An object nested `depth` deep: `{"a":{"a":...}}`, built without recursion. */
        const nested = (depth: number) => {
          const root: Record<string, unknown> = {}
          let current = root
          for (let i = 1; i < depth; i++) {
            const next: Record<string, unknown> = {}
            current.a = next
            current = next
          }
          return root
        }
        /** How deep a JSON value goes (an object of one key per level, as `nested` builds). */
        const depthOf = (value: unknown) => {
          let depth = 0
          for (
            let current = value;
            typeof current === "object" && current !== null;
            current = Object.values(current)[0]
          )
            depth++
          return depth
        }
        const identifies = (letter: DeadLetterQueue.DeadLetter, event: EventStore.StoredEvent) => {
          assert.deepInclude(letter, {
            eventId: event.eventId,
            eventType: event.eventType,
            globalPosition: event.globalPosition
          })
          assert.deepInclude(letter.eventData as object, {
            event_id: event.eventId,
            event_type: event.eventType,
            aggregate_id: event.aggregateId,
            global_position: String(event.globalPosition)
          })
        }

        it.effect("a payload nested 10,000 deep is kept cut at maxPayloadDepth, with a note", () =>
          withQueue((queue) =>
            Effect.gen(function* () {
              const event = { ...stored(30n), payload: { sku: nested(10_000), quantity: 1 } }
              const letter = yield* queue.add(`p-${uuid()}`, event, { message: "boom", attempts: 1 })
              identifies(letter, event)
              const data = letter.eventData as {
                payload: { sku: unknown; quantity: unknown }
                payload_truncated: string
              }
              assert.include(data.payload_truncated, `deeper than ${DeadLetterQueue.maxPayloadDepth} levels`)
              assert.strictEqual(data.payload.quantity, 1)
              // The payload is level 1, its sku level 2: the cut leaves maxPayloadDepth levels of objects.
              assert.strictEqual(depthOf(data.payload.sku), DeadLetterQueue.maxPayloadDepth - 1)
              assert.deepStrictEqual(Option.getOrThrow(yield* queue.get(letter.id)), letter)
            })
          )
        )

        it.effect("a payload over maxPayloadLength is kept as the start of its JSON, with a note", () =>
          withQueue((queue) =>
            Effect.gen(function* () {
              // The payload's JSON starts with {"text":" (9 characters): the first emoji's high
              // surrogate is at index 4095, where a cut of payloadPreviewLength characters would split it.
              const text = "x".repeat(4_086).concat("😀").repeat(300)
              const event = { ...stored(31n), payload: { text } }
              const letter = yield* queue.add(`p-${uuid()}`, event, { message: "boom", attempts: 1 })
              identifies(letter, event)
              const data = letter.eventData as { payload: unknown; payload_truncated: string; payload_preview: string }
              assert.isNull(data.payload)
              assert.include(data.payload_truncated, `${JSON.stringify({ text }).length} characters`)
              assert.isTrue(JSON.stringify({ text }).startsWith(data.payload_preview))
              assert.isAtLeast(data.payload_preview.length, DeadLetterQueue.payloadPreviewLength - 1)
              assert.notMatch(data.payload_preview, /[\ud800-\udbff]$/, "the preview ends inside a surrogate pair")
              assert.deepStrictEqual(Option.getOrThrow(yield* queue.get(letter.id)), letter)
            })
          )
        )

        it.effect("a payload that is no JSON at all (a bigint) is left out, with a note", () =>
          withQueue((queue) =>
            Effect.gen(function* () {
              const event = { ...stored(32n), payload: { amount: 10n } }
              const letter = yield* queue.add(`p-${uuid()}`, event, { message: "boom", attempts: 1 })
              identifies(letter, event)
              assert.deepInclude(letter.eventData as object, { payload: null })
              assert.include((letter.eventData as { payload_truncated: string }).payload_truncated, "not representable")
            })
          )
        )
      })

      describe("list, resolve, retry", () => {
        it.effect("lists by projection and status, oldest first, in pages", () =>
          withQueue((queue) =>
            Effect.gen(function* () {
              const projection = `p-${uuid()}`
              const letters = []
              for (let i = 0; i < 5; i++) {
                letters.push(yield* queue.add(projection, stored(BigInt(10 + i)), { message: `e${i}`, attempts: 1 }))
              }
              yield* queue.add(`q-${uuid()}`, stored(99n), { message: "elsewhere", attempts: 1 })
              yield* queue.resolve(letters[1]!.id)
              yield* queue.markRetrying(letters[2]!.id)
              const ids = (found: ReadonlyArray<DeadLetterQueue.DeadLetter>) => found.map((l) => l.id)
              assert.deepStrictEqual(ids(yield* queue.list({ projection })), ids(letters))
              assert.deepStrictEqual(
                ids(yield* queue.list({ projection, status: "failed" })),
                ids([letters[0]!, letters[3]!, letters[4]!])
              )
              assert.deepStrictEqual(
                ids(yield* queue.list({ projection, status: ["retrying", "resolved"] })),
                ids([letters[1]!, letters[2]!])
              )
              const page = yield* queue.list({ projection, limit: 2 })
              assert.deepStrictEqual(ids(page), ids(letters.slice(0, 2)))
              assert.deepStrictEqual(
                ids(yield* queue.list({ projection, afterId: page[1]!.id, limit: 2 })),
                ids(letters.slice(2, 4))
              )
            })
          )
        )

        it.effect("resolveEvent resolves the open letter of an event once; a retry that fails is recorded", () =>
          withQueue((queue) =>
            Effect.gen(function* () {
              const projection = `p-${uuid()}`
              const event = stored(20n)
              const letter = yield* queue.add(projection, event, { message: "boom", attempts: 2 })
              const retrying = yield* queue.markRetrying(letter.id)
              assert.strictEqual(retrying.status, "retrying")
              const failed = yield* queue.recordFailure(letter.id, { message: "still", attempts: 4 })
              assert.deepInclude(failed, { status: "failed", errorMessage: "still", retryCount: 6 })
              assert.isTrue(yield* queue.resolveEvent(projection, event.eventId, { by: "runner" }))
              assert.isFalse(yield* queue.resolveEvent(projection, event.eventId, { by: "runner" }))
              assert.deepInclude(Option.getOrThrow(yield* queue.get(letter.id)), {
                status: "resolved",
                resolvedBy: "runner"
              })
              const missing = 999_999_999n
              assert.isTrue(Option.isNone(yield* queue.get(missing)))
              for (const operation of [
                queue.resolve(missing),
                queue.markRetrying(missing),
                queue.recordFailure(missing, { message: "x", attempts: 1 })
              ]) {
                assert.deepInclude(yield* Effect.flip(operation), { _tag: "DeadLetterNotFoundError", id: missing })
              }
            })
          )
        )
      })
    }
  )

/**
 * The projection runner, run against every backend: handlers for decoded event
 * types, checkpoints, retries and the dead-letter queue (continue and stop
 * policies, retry, resolve), progress on sparse matches, one active runner with
 * takeover, rebuild with progress, reset.
 *
 * @since 0.1.0
 */

import { assert, describe, layer } from "@effect/vitest"
import {
  CheckpointStore,
  DeadLetterQueue,
  EventMetadata,
  type EventStore,
  ExpectedVersion,
  Projection,
  Telemetry
} from "@eventfold/core"
import * as Arr from "effect/Array"
import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import type * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { type Service as BackendService, ConformanceBackend } from "./ConformanceBackend.js"
import { eventually } from "./internal/eventually.js"
import { recorded } from "./internal/metrics.js"
import { recordingSpans } from "./internal/spans.js"
import { ItemAdded, NoteWritten, registry } from "./SubscriptionSuite.js"

const uuid = () => crypto.randomUUID()
const item = (sku: string, quantity = 1): EventStore.EventToAppend => ({ event: ItemAdded.make({ sku, quantity }) })
const note = (text: string): EventStore.EventToAppend => ({ event: NoteWritten.make({ text }) })

/**
 * Fast run options for tests: two retries, short intervals.
 *
 * @since 0.1.0
 * @category utils
 */
export const fast: Projection.RunOptions = {
  retry: Schedule.recurs(2),
  progressInterval: "100 millis",
  takeover: Schedule.spaced("100 millis"),
  restart: Schedule.spaced("100 millis")
}

/**
 * Registers the projection runner conformance tests (vitest, through `@effect/vitest`) against the
 * backend the layer provides (the first argument names the `describe` block).
 *
 * @since 0.1.0
 * @category constructors
 */
export const suite = (label: string, backend: Layer.Layer<ConformanceBackend>) =>
  layer(backend, { excludeTestServices: true, timeout: "120 seconds" })(`Projection runner: ${label}`, (it) => {
    /** Runs `f` with the runner's services of this backend, in a scope. */
    const withRunner = <A, E>(
      f: (
        store: EventStore.Service,
        backend: BackendService
      ) => Effect.Effect<A, E, Projection.Requirements | Scope.Scope>
    ) =>
      Effect.flatMap(ConformanceBackend, (b) =>
        Effect.gen(function* () {
          const store = yield* b.store(registry)
          return yield* f(store, b)
        }).pipe(Effect.scoped, Effect.provide(b.services(registry)))
      )

    /** A projection of quantities per sku, kept in a Ref; `fail` decides which skus fail. */
    const quantities = (
      name: string,
      aggregateType: string,
      fail: Ref.Ref<(sku: string) => boolean> | undefined = undefined
    ) =>
      Effect.gen(function* () {
        const model = yield* Ref.make(new Map<string, number>())
        const calls = yield* Ref.make(0)
        const projection = Projection.make({
          name,
          aggregateTypes: [aggregateType],
          handlers: [
            Projection.on(ItemAdded, (event) =>
              Effect.gen(function* () {
                yield* Ref.update(calls, (n) => n + 1)
                const failing = fail === undefined ? false : (yield* Ref.get(fail))(event.event.sku)
                if (failing) return yield* Effect.fail(new Error(`cannot project ${event.event.sku}`))
                yield* Ref.update(model, (m) =>
                  new Map(m).set(event.event.sku, (m.get(event.event.sku) ?? 0) + event.event.quantity)
                )
              })
            )
          ],
          reset: Ref.set(model, new Map())
        })
        return { projection, model, calls }
      })

    describe("running", () => {
      it.effect("handles decoded events of its types in order, and saves its checkpoint", () =>
        withRunner((store) =>
          Effect.gen(function* () {
            const aggregateType = `Proj${uuid().slice(0, 8)}`
            const name = `proj-${uuid()}`
            const { projection, model } = yield* quantities(name, aggregateType)
            const s = { aggregateId: uuid(), aggregateType }
            yield* store.append(s, [item("a", 2), note("ignored"), item("b", 1)], {
              expectedVersion: ExpectedVersion.noStream
            })
            const runner = yield* Projection.start(projection, fast)
            const last = yield* store.append(s, [item("a", 3)], { expectedVersion: ExpectedVersion.exact(3) })
            yield* eventually(Ref.get(model), (m) => m.get("a") === 5)
            assert.deepStrictEqual([...(yield* Ref.get(model))].sort(), [
              ["a", 5],
              ["b", 1]
            ])
            const checkpoints = yield* CheckpointStore.CheckpointStore
            const checkpoint = yield* eventually(checkpoints.get(name), (c) =>
              Option.exists(c, (c) => c.position >= last.lastPosition)
            )
            assert.deepInclude(Option.getOrThrow(checkpoint), { eventType: "ItemAdded", eventsProcessed: 3n })
            const status = yield* runner.status
            assert.deepInclude(status, { projection: name, state: "active", handled: 3, deadLettered: 0 })
            assert.strictEqual(status.position, last.lastPosition)
          })
        )
      )

      it.effect("read-your-writes: awaiting the checkpoint at an append's position, the read model holds it", () =>
        withRunner((store) =>
          Effect.gen(function* () {
            const aggregateType = `Ryw${uuid().slice(0, 8)}`
            const name = `ryw-${uuid()}`
            const { projection, model } = yield* quantities(name, aggregateType)
            yield* Projection.start(projection, fast)
            const s = { aggregateId: uuid(), aggregateType }
            for (let i = 1; i <= 3; i++) {
              const appended = yield* store.append(s, [item("a", i)], { expectedVersion: ExpectedVersion.exact(i - 1) })
              yield* CheckpointStore.awaitPosition(name, appended.lastPosition, { timeout: "10 seconds" })
              // No waiting on the model itself: once the checkpoint has passed, the write is there.
              assert.strictEqual((yield* Ref.get(model)).get("a"), (i * (i + 1)) / 2)
            }
          })
        )
      )

      it.effect("records progress past events it does not handle", () =>
        withRunner((store) =>
          Effect.gen(function* () {
            const aggregateType = `Sparse${uuid().slice(0, 8)}`
            const name = `sparse-${uuid()}`
            const { projection } = yield* quantities(name, aggregateType)
            const s = { aggregateId: uuid(), aggregateType }
            yield* store.append(s, [item("only")], { expectedVersion: ExpectedVersion.noStream })
            const last = yield* store.append(
              s,
              Arr.makeBy(30, (i) => note(`n${i}`)),
              {
                expectedVersion: ExpectedVersion.exact(1)
              }
            )
            yield* Projection.start(projection, fast)
            const checkpoints = yield* CheckpointStore.CheckpointStore
            yield* eventually(checkpoints.get(name), (c) => Option.exists(c, (c) => c.position >= last.lastPosition))
          })
        )
      )
    })

    describe("causality and traces", () => {
      it.effect("what a handler appends is caused by the event it handles; the batch's span links to the append", () =>
        withRunner((store) =>
          Effect.gen(function* () {
            const aggregateType = `Pm${uuid().slice(0, 8)}`
            const name = `pm-${uuid()}`
            const reactions = { aggregateId: uuid(), aggregateType: `${aggregateType}Reaction` }
            // A process manager: each item added is answered by a note in another stream.
            const projection = Projection.make({
              name,
              aggregateTypes: [aggregateType],
              handlers: [
                Projection.on(ItemAdded, (event) =>
                  Effect.asVoid(
                    store.append(reactions, [note(`saw ${event.event.sku}`)], {
                      expectedVersion: ExpectedVersion.any
                    })
                  )
                )
              ]
            })
            const s = { aggregateId: uuid(), aggregateType }
            const [appended, spans] = yield* recordingSpans(
              Effect.gen(function* () {
                yield* Projection.start(projection, fast)
                yield* store
                  .append(s, [item("a")], { expectedVersion: ExpectedVersion.noStream })
                  .pipe(EventMetadata.withCommand({ commandId: "cmd-pm", correlationId: "req-pm" }))
                yield* store.append(s, [item("b")], { expectedVersion: ExpectedVersion.exact(1) })
                return yield* eventually(
                  Effect.map(Stream.runCollect(store.readStream(reactions)), Chunk.toReadonlyArray),
                  (r) => r.length === 2
                )
              })
            )
            const [a, b] = yield* Effect.map(Stream.runCollect(store.readStream(s)), Chunk.toReadonlyArray)
            const [forA, forB] = appended
            // The reaction to a is caused by a, in the command's correlation; b had none, so it starts its own.
            assert.deepInclude(forA!.metadata, { correlationId: "req-pm", causationId: a!.eventId })
            assert.deepInclude(forB!.metadata, { correlationId: b!.eventId, causationId: b!.eventId })
            // The batch that handled a continues a's trace by a link to the append's span.
            const appendSpan = spans.find(
              (span) =>
                span.name === "EventStore.append" && `00-${span.traceId}-${span.spanId}-01` === a!.metadata.traceparent
            )
            assert.isDefined(appendSpan)
            const linked = spans.filter(
              (span) =>
                span.name === "Projection.handleBatch" && span.links.some((l) => l.span.spanId === appendSpan!.spanId)
            )
            assert.isAtLeast(linked.length, 1)
            assert.strictEqual(linked[0]!.links[0]!.span.traceId, appendSpan!.traceId)
          })
        )
      )
    })

    describe("metrics", () => {
      it.effect(
        "the lag, in events of the projection's selection after its checkpoint, is sampled while metrics are on",
        () =>
          withRunner((store) =>
            Effect.gen(function* () {
              const aggregateType = `Lag${uuid().slice(0, 8)}`
              const name = `lag-${uuid()}`
              // The handler holds the batch at the "gate" event until the test opens it.
              const reached = yield* Deferred.make<void>()
              const open = yield* Deferred.make<void>()
              const gated = (name: string) =>
                Projection.make({
                  name,
                  aggregateTypes: [aggregateType],
                  handlers: [
                    Projection.on(ItemAdded, (event) =>
                      event.event.sku === "gate"
                        ? Effect.zipRight(Deferred.succeed(reached, undefined), Deferred.await(open))
                        : Effect.void
                    )
                  ]
                })
              const projection = gated(name)
              const s = { aggregateId: uuid(), aggregateType }
              yield* store.append(s, [item("a"), item("gate"), note("not selected"), item("b"), item("c")], {
                expectedVersion: ExpectedVersion.noStream
              })
              const lag = Effect.map(
                Metric.value(Metric.tagged(Telemetry.projectionMetrics.lag, Telemetry.Attributes.projection, name)),
                (gauge) => gauge.value
              )
              yield* Projection.start(projection, fast).pipe(Effect.locally(Telemetry.metricsEnabled, true))
              yield* Deferred.await(reached)
              // Stuck in its first batch: nothing saved, its four ItemAdded events behind.
              yield* eventually(lag, (n) => n === 4, { what: "a lag of four events" })
              yield* Deferred.succeed(open, undefined)
              yield* eventually(lag, (n) => n === 0, { what: "no lag once the batch is done" })

              // Off: the same projection under another name records nothing.
              const unmeasured = gated(`lag-off-${uuid()}`)
              yield* Projection.start(unmeasured, fast)
              const checkpoints = yield* CheckpointStore.CheckpointStore
              yield* eventually(
                checkpoints.lag(unmeasured.name, { aggregateTypes: [aggregateType] }),
                (l) => l.eventsBehind === 0
              )
              assert.isFalse(
                yield* recorded(Telemetry.Metrics.projectionLag, { [Telemetry.Attributes.projection]: unmeasured.name })
              )
            })
          )
      )
    })

    describe("dead letters", () => {
      it.effect(
        "after its retries an event is dead-lettered with its position; the runner goes on; retry and resolve",
        () =>
          withRunner((store) =>
            Effect.gen(function* () {
              const aggregateType = `Dlq${uuid().slice(0, 8)}`
              const name = `dlq-${uuid()}`
              const fail = yield* Ref.make<(sku: string) => boolean>((sku) => sku.startsWith("bad"))
              const { projection, model, calls } = yield* quantities(name, aggregateType, fail)
              const s = { aggregateId: uuid(), aggregateType }
              const appended = yield* store.append(s, [item("ok1"), item("bad1", 4), item("ok2"), item("bad2")], {
                expectedVersion: ExpectedVersion.noStream
              })
              const runner = yield* Projection.start(projection, fast)
              yield* eventually(Ref.get(model), (m) => m.has("ok2"))
              const deadLetters = yield* DeadLetterQueue.DeadLetterQueue
              const letters = yield* eventually(deadLetters.list({ projection: name }), (l) => l.length === 2)
              const [first, second] = letters
              assert.deepInclude(first!, {
                projection: name,
                eventType: "ItemAdded",
                status: "failed",
                retryCount: 3,
                globalPosition: appended.firstPosition + 1n
              })
              assert.include(first!.errorMessage, "cannot project bad1")
              assert.deepInclude(first!.eventData as object, { event_type: "ItemAdded", aggregate_type: aggregateType })
              assert.deepStrictEqual((first!.eventData as { payload: unknown }).payload, { sku: "bad1", quantity: 4 })
              // 1 + 2 retries for each bad event, once for each good one.
              assert.strictEqual(yield* Ref.get(calls), 8)
              assert.strictEqual((yield* runner.status).deadLettered, 2)

              // A retry that still fails: failed again, with the attempts counted.
              const again = yield* Projection.retryDeadLetter(projection, first!.id, fast)
              assert.deepInclude(again, { status: "failed", retryCount: 6 })
              // Fixed: the retry runs the handler and resolves the dead letter.
              yield* Ref.set(fail, () => false)
              const fixed = yield* Projection.retryDeadLetter(projection, first!.id, fast)
              assert.deepInclude(fixed, { status: "resolved", resolvedBy: "retry" })
              assert.strictEqual((yield* Ref.get(model)).get("bad1"), 4)
              // Resolved by hand, without running the handler.
              const manual = yield* deadLetters.resolve(second!.id, { by: "operator" })
              assert.deepInclude(manual, { status: "resolved", resolvedBy: "operator" })
              assert.isFalse((yield* Ref.get(model)).has("bad2"))
              assert.strictEqual((yield* deadLetters.list({ projection: name, status: "failed" })).length, 0)
              assert.strictEqual((yield* deadLetters.list({ projection: name, status: "resolved" })).length, 2)
              const missing = yield* Effect.flip(deadLetters.resolve(123456789n))
              assert.strictEqual(missing._tag, "DeadLetterNotFoundError")
            })
          )
      )

      it.effect(
        "an event written by another program with a payload nested 10,000 deep is dead-lettered; the runner reaches the head",
        () =>
          withRunner((store, b) =>
            Effect.gen(function* () {
              const aggregateType = `Deep${uuid().slice(0, 8)}`
              const name = `deep-${uuid()}`
              const { projection, model } = yield* quantities(name, aggregateType)
              const s = { aggregateId: uuid(), aggregateType }
              yield* store.append(s, [item("before")], { expectedVersion: ExpectedVersion.noStream })
              // Deep in a field the schema declares (its decode error would print it), and deep beside the fields.
              const deep = `${'{"a":'.repeat(10_000)}1${"}".repeat(10_000)}`
              const inField = yield* b.writeForeign({
                ...s,
                version: 2,
                eventType: "ItemAdded",
                payloadJson: `{"sku":${deep},"quantity":1}`
              })
              const beside = yield* b.writeForeign({
                ...s,
                version: 3,
                eventType: "ItemAdded",
                payloadJson: `{"extra":${deep}}`
              })
              const last = yield* store.append(s, [item("after")], { expectedVersion: ExpectedVersion.exact(3) })
              yield* Projection.start(projection, fast)
              const checkpoints = yield* CheckpointStore.CheckpointStore
              yield* eventually(
                checkpoints.get(name),
                (c) => Option.exists(c, (c) => c.position >= last.lastPosition),
                {
                  what: "the checkpoint to reach the head of the log"
                }
              )
              assert.deepStrictEqual([...(yield* Ref.get(model)).keys()].sort(), ["after", "before"])
              const deadLetters = yield* DeadLetterQueue.DeadLetterQueue
              const letters = yield* deadLetters.list({ projection: name })
              assert.deepStrictEqual(
                letters.map((l) => [l.globalPosition, l.eventType, (l.eventData as { event_type: string }).event_type]),
                [
                  [inField, "ItemAdded", "ItemAdded"],
                  [beside, "ItemAdded", "ItemAdded"]
                ]
              )
              for (const letter of letters) {
                assert.deepInclude(letter.eventData as object, {
                  event_id: letter.eventId,
                  global_position: String(letter.globalPosition)
                })
                assert.include((letter.eventData as { payload_truncated: string }).payload_truncated, "deeper than")
              }
            })
          )
      )

      it.effect("with onDeadLetter: stop, the runner stops before the event; once fixed it resumes there", () =>
        withRunner((store) =>
          Effect.gen(function* () {
            const aggregateType = `Stop${uuid().slice(0, 8)}`
            const name = `stop-${uuid()}`
            const fail = yield* Ref.make<(sku: string) => boolean>((sku) => sku === "poison")
            const { projection, model } = yield* quantities(name, aggregateType, fail)
            const s = { aggregateId: uuid(), aggregateType }
            const appended = yield* store.append(s, [item("a"), item("poison"), item("b")], {
              expectedVersion: ExpectedVersion.noStream
            })
            const runner = yield* Projection.start(projection, { ...fast, onDeadLetter: "stop" })
            const error = yield* Effect.flip(runner.join)
            assert.deepInclude(error, {
              _tag: "ProjectionStoppedError",
              projection: name,
              globalPosition: appended.firstPosition + 1n
            })
            assert.strictEqual((yield* runner.status).state, "stopped")
            assert.deepStrictEqual([...(yield* Ref.get(model)).keys()], ["a"])
            const checkpoints = yield* CheckpointStore.CheckpointStore
            assert.strictEqual(Option.getOrThrow(yield* checkpoints.get(name)).position, appended.firstPosition)
            const deadLetters = yield* DeadLetterQueue.DeadLetterQueue
            assert.strictEqual((yield* deadLetters.list({ projection: name, status: "failed" })).length, 1)

            yield* Ref.set(fail, () => false)
            yield* Projection.start(projection, { ...fast, onDeadLetter: "stop" })
            yield* eventually(Ref.get(model), (m) => m.has("b"))
            assert.deepStrictEqual([...(yield* Ref.get(model)).keys()].sort(), ["a", "b", "poison"])
            // Handled by the runner at last: its dead letter is resolved.
            const letters = yield* eventually(deadLetters.list({ projection: name }), (l) =>
              l.every((d) => d.status === "resolved")
            )
            assert.strictEqual(letters[0]!.resolvedBy, "runner")
          })
        )
      )
    })

    describe("one active runner", () => {
      it.effect("a second runner waits as a standby and takes over when the first stops", () =>
        withRunner((store, b) =>
          Effect.gen(function* () {
            const aggregateType = `Ha${uuid().slice(0, 8)}`
            const name = `ha-${uuid()}`
            const { projection, model } = yield* quantities(name, aggregateType)
            const s = { aggregateId: uuid(), aggregateType }
            yield* store.append(s, [item("x")], { expectedVersion: ExpectedVersion.noStream })
            const firstFiber = yield* Effect.fork(
              Effect.scoped(
                Effect.flatMap(Projection.start(projection, fast), (r) =>
                  Effect.zipRight(
                    eventually(r.status, (s) => s.state === "active"),
                    Effect.never
                  )
                )
              )
            )
            yield* eventually(Ref.get(model), (m) => m.get("x") === 1)
            // Counts the standby's failed attempts at the lock (PostgreSQL polls it; memory waits on it).
            const attempts = yield* Ref.make(0)
            const second = yield* Projection.start(projection, {
              ...fast,
              takeover: Schedule.spaced("100 millis").pipe(Schedule.tapInput(() => Ref.update(attempts, (n) => n + 1)))
            })
            yield* eventually(second.status, (s) => s.state === "standby", { what: "the second runner to stand by" })
            if (b.lockPolls) {
              yield* eventually(Ref.get(attempts), (n) => n >= 2, { what: "two failed attempts at the lock" })
            }
            assert.strictEqual((yield* second.status).state, "standby")
            assert.strictEqual((yield* Ref.get(model)).get("x"), 1)
            yield* Fiber.interrupt(firstFiber)
            yield* eventually(second.status, (s) => s.state === "active")
            yield* store.append(s, [item("x", 2)], { expectedVersion: ExpectedVersion.exact(1) })
            yield* eventually(Ref.get(model), (m) => m.get("x") === 3)
          })
        )
      )
    })

    describe("rebuild", () => {
      it.effect("resets the checkpoint and the read model, replays to the end, reporting progress", () =>
        withRunner((store) =>
          Effect.gen(function* () {
            const aggregateType = `Rebuild${uuid().slice(0, 8)}`
            const name = `rebuild-${uuid()}`
            const { projection, model } = yield* quantities(name, aggregateType)
            const s = { aggregateId: uuid(), aggregateType }
            yield* store.append(
              s,
              Arr.makeBy(50, (i) => item(`sku${i % 5}`, 1)),
              { expectedVersion: ExpectedVersion.noStream }
            )
            yield* Effect.scoped(
              Effect.gen(function* () {
                yield* Projection.start(projection, fast)
                yield* eventually(Ref.get(model), (m) => [...m.values()].reduce((a, b) => a + b, 0) === 50)
              })
            )
            // The read model drifts (e.g. a bug fixed since); a rebuild makes it right again.
            yield* Ref.set(model, new Map([["drift", 99]]))
            const reports: Array<Projection.RebuildProgress> = []
            const done = yield* Projection.rebuild(projection, {
              ...fast,
              reportInterval: "50 millis",
              onProgress: (p) => Effect.sync(() => reports.push(p))
            })
            assert.isTrue(done.done)
            assert.isTrue(done.position >= done.target)
            assert.strictEqual(done.eventsProcessed, 50n)
            assert.isTrue(reports.length >= 1)
            assert.isFalse(reports.slice(0, -1).some((r) => r.done))
            assert.deepStrictEqual(
              [...(yield* Ref.get(model))].sort(),
              Arr.makeBy(5, (i) => [`sku${i}`, 10])
            )
          })
        )
      )

      it.effect("reset clears the read model and moves the checkpoint to the start; a runner then replays", () =>
        withRunner((store) =>
          Effect.gen(function* () {
            const aggregateType = `Reset${uuid().slice(0, 8)}`
            const name = `reset-${uuid()}`
            const { projection, model, calls } = yield* quantities(name, aggregateType)
            const s = { aggregateId: uuid(), aggregateType }
            const appended = yield* store.append(s, [item("a", 2), item("b", 3)], {
              expectedVersion: ExpectedVersion.noStream
            })
            const checkpoints = yield* CheckpointStore.CheckpointStore
            yield* Effect.scoped(
              Effect.gen(function* () {
                yield* Projection.start(projection, fast)
                yield* eventually(checkpoints.get(name), (c) =>
                  Option.exists(c, (c) => c.position >= appended.lastPosition)
                )
              })
            )
            yield* Projection.reset(projection)
            assert.deepStrictEqual([...(yield* Ref.get(model))], [])
            assert.deepInclude(Option.getOrThrow(yield* checkpoints.get(name)), {
              position: 0n,
              eventsProcessed: 0n,
              eventId: null
            })
            yield* Ref.set(calls, 0)
            yield* Effect.scoped(
              Effect.gen(function* () {
                yield* Projection.start(projection, fast)
                yield* eventually(Ref.get(model), (m) => m.get("a") === 2 && m.get("b") === 3)
              })
            )
            // Each event once more: the replay started from the start, not from the old checkpoint.
            assert.strictEqual(yield* Ref.get(calls), 2)
          })
        )
      )
    })
  })

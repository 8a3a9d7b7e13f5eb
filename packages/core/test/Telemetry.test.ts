import { assert, describe, it } from "@effect/vitest"
import {
  Aggregate,
  AggregateRepository,
  Event,
  EventRegistry,
  EventStore,
  ExpectedVersion,
  Telemetry
} from "@eventfold/core"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as Tracer from "effect/Tracer"

const Secret = Event.make("SecretSet", { value: Schema.String })
const Vault = Aggregate.make({
  type: "Vault",
  events: [Secret],
  initialState: () => ({ value: "" }),
  evolve: (_, event) => ({ value: event.value })
})

/** Records every span the program starts, with its attributes, by wrapping the running tracer. */
const recording = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    const spans: Array<{ name: string; attributes: Map<string, unknown> }> = []
    const inner = yield* Effect.tracer
    const tracer = Tracer.make({
      span: (name, ...rest) => {
        const span = inner.span(name, ...rest)
        const attributes = new Map<string, unknown>(span.attributes)
        spans.push({ name, attributes })
        const attribute = span.attribute.bind(span)
        span.attribute = (key, value) => {
          attributes.set(key, value)
          attribute(key, value)
        }
        return span
      },
      context: (f, fiber) => inner.context(f, fiber)
    })
    yield* Effect.withTracer(effect, tracer)
    return spans
  })

describe("Telemetry", () => {
  it.effect("every public operation has a span named Service.method, attributes from Telemetry, no payloads", () =>
    Effect.gen(function* () {
      const spans = yield* recording(
        Effect.gen(function* () {
          const store = yield* EventStore.EventStore
          const repo = yield* AggregateRepository.make(Vault)
          const id = crypto.randomUUID()
          yield* repo.save(Aggregate.apply(Vault, Aggregate.empty(Vault, id), [Secret.make({ value: "hunter2" })]))
          yield* repo.load(id)
          yield* store.append(
            { aggregateId: id, aggregateType: "Vault" },
            [{ event: Secret.make({ value: "hunter3" }) }],
            {
              expectedVersion: ExpectedVersion.exact(1)
            }
          )
          yield* Stream.runDrain(store.readAll())
        }).pipe(Effect.provide(EventStore.layerMemory({ registry: EventRegistry.make(Secret) })))
      )

      const names = new Set(spans.map((s) => s.name))
      for (const name of [
        Telemetry.Spans.append,
        Telemetry.Spans.readStream,
        Telemetry.Spans.readAll,
        Telemetry.Spans.repositoryLoad,
        Telemetry.Spans.repositorySave
      ]) {
        assert.isTrue(names.has(name), `missing span ${name}`)
      }
      const append = spans.find((s) => s.name === Telemetry.Spans.append)!
      assert.strictEqual(append.attributes.get(Telemetry.Attributes.aggregateType), "Vault")
      assert.strictEqual(append.attributes.get(Telemetry.Attributes.eventCount), 1)
      assert.strictEqual(append.attributes.get(Telemetry.Attributes.backend), "memory")
      const known = new Set<string>(Object.values(Telemetry.Attributes))
      for (const span of spans.filter((s) => s.name.includes("."))) {
        for (const [key, value] of span.attributes) {
          if (key.startsWith("code.")) continue
          assert.isTrue(known.has(key), `attribute ${key} of ${span.name} is not a Telemetry key`)
          assert.notInclude(String(value), "hunter")
        }
      }
    })
  )
})

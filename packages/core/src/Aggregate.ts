/**
 * Aggregates as data and functions: an initial state, an `evolve` that folds one
 * event into the state, and commands that decide which events a request produces.
 * No base class, no mutable instance: a {@link Root} is a value.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import type * as Event from "./Event.js"

/**
 * The definition of an aggregate type.
 *
 * @since 0.1.0
 * @category models
 */
export interface Aggregate<State, E extends Event.Any> {
  /** Stored as `aggregate_type`. */
  readonly type: string
  /** The event definitions this aggregate emits and folds. */
  readonly events: ReadonlyArray<Event.AnyEventType>
  readonly eventTypes: ReadonlySet<string>
  readonly initialState: (id: string) => State
  readonly evolve: (state: State, event: E) => State
}

/**
 * An aggregate instance: its state at `version`, and the events decided since it
 * was loaded (`pending`), which `save` appends.
 *
 * @since 0.1.0
 * @category models
 */
export interface Root<State, E extends Event.Any> {
  readonly id: string
  readonly type: string
  readonly state: State
  /** The version including pending events. */
  readonly version: number
  /** The version stored when this root was loaded or last saved. */
  readonly persistedVersion: number
  readonly pending: ReadonlyArray<{ readonly eventId: string; readonly event: E }>
  /**
   * The global position of the last event saved through this root (set by
   * `AggregateRepository.save`): what a request awaits a projection to pass to read its
   * own writes (`CheckpointStore.awaitPosition`). Absent until it saves something.
   */
  readonly lastPosition?: bigint
}

/**
 * Defines an aggregate.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <const Events extends ReadonlyArray<Event.AnyEventType>, State>(definition: {
  readonly type: string
  readonly events: Events
  readonly initialState: (id: string) => State
  readonly evolve: (state: State, event: Event.Type<Events[number]>) => State
}): Aggregate<State, Event.Type<Events[number]>> => ({
  ...definition,
  eventTypes: new Set(definition.events.map((e) => e.type))
})

/**
 * A new instance at version 0, nothing stored yet.
 *
 * @since 0.1.0
 * @category constructors
 */
export const empty = <State, E extends Event.Any>(aggregate: Aggregate<State, E>, id: string): Root<State, E> => ({
  id,
  type: aggregate.type,
  state: aggregate.initialState(id),
  version: 0,
  persistedVersion: 0,
  pending: []
})

/**
 * Whether an event is one of this aggregate's (by its type).
 *
 * @since 0.1.0
 * @category utils
 */
export const isEventOf =
  <State, E extends Event.Any>(aggregate: Aggregate<State, E>) =>
  (event: Event.Any): event is E =>
    aggregate.eventTypes.has(event._tag)

/**
 * Applies newly decided events: the state evolves and the events become pending.
 *
 * @since 0.1.0
 * @category combinators
 */
export const apply = <State, E extends Event.Any>(
  aggregate: Aggregate<State, E>,
  root: Root<State, E>,
  events: ReadonlyArray<E>
): Root<State, E> => {
  let state = root.state
  const pending = [...root.pending]
  for (const event of events) {
    state = aggregate.evolve(state, event)
    pending.push({ eventId: crypto.randomUUID(), event })
  }
  return { ...root, state, version: root.version + events.length, pending }
}

/**
 * A command: from the current root and an input, decide the events (or fail with a
 * domain error). The result is pipeable on an effect of a root:
 *
 * @example
 * ```ts
 * const ship = Aggregate.command(Order, (state, input: { trackingNumber: string }) =>
 *   state.status !== "created"
 *     ? Effect.fail(new OrderError({ message: "Cannot ship order in current state" }))
 *     : Effect.succeed([OrderShipped.make({ tracking_number: input.trackingNumber })]))
 *
 * const shipped = yield* repo.load(orderId).pipe(ship({ trackingNumber: "TRACK-1" }))
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const command =
  <State, E extends Event.Any, Input, Err = never, R = never>(
    aggregate: Aggregate<State, E>,
    decide: (state: State, input: Input, root: Root<State, E>) => Effect.Effect<ReadonlyArray<NoInfer<E>>, Err, R>
  ) =>
  (input: Input) =>
  <E2, R2>(self: Effect.Effect<Root<State, E>, E2, R2>): Effect.Effect<Root<State, E>, Err | E2, R | R2> =>
    Effect.flatMap(self, (root) =>
      Effect.map(decide(root.state, input, root), (events) => apply(aggregate, root, events))
    )

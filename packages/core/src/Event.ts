/**
 * Domain events: defined with `effect/Schema`, stored as their encoded fields.
 *
 * An event value is a tagged struct (`{ _tag: "OrderCreated", customer_id, total }`).
 * The tag is stored in the `event_type` column and the other fields, encoded, are the
 * stored payload, flat and verbatim: `payload->>'customer_id'` is the customer id.
 *
 * @since 0.1.0
 */
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import * as PlainStruct from "./internal/plainStruct.js"

/**
 * Any event value: a struct tagged with its event type.
 *
 * @since 0.1.0
 * @category models
 */
export interface Any {
  readonly _tag: string
}

/**
 * The definition of one event type.
 *
 * `schema` is the tagged struct users construct and match on; `payload` is the
 * codec between the stored JSON payload and the event's fields. When an event's
 * stored shape changes over the years, `upcasts` decode the older shapes into
 * today's type (stored events are never rewritten; new events are always written
 * in the current shape).
 *
 * @since 0.1.0
 * @category models
 */
export interface EventType<Tag extends string, Fields extends Schema.Struct.Fields>
  extends Schema.TaggedStruct<Tag, Fields> {
  readonly type: Tag
  /** Encodes an event's fields to the stored payload (always the current shape). */
  readonly payload: Schema.Schema<
    Schema.Schema.Type<Schema.Struct<Fields>>,
    Schema.Schema.Encoded<Schema.Struct<Fields>>
  >
  /** Decodes a stored payload: the current shape first, then each upcast in order. */
  readonly decodePayload: Schema.Schema<Schema.Schema.Type<Schema.Struct<Fields>>, unknown>
}

/**
 * Any event definition, whatever its fields: what registries and aggregates accept.
 * Structural, so that every `EventType<Tag, Fields>` is one (schemas are invariant in
 * their types, so `EventType<string, any>` would not do).
 *
 * @since 0.1.0
 * @category models
 */
export interface AnyEventType {
  readonly type: string
  readonly Type: Any
  // biome-ignore lint/suspicious/noExplicitAny: the fields of an arbitrary event are unknown here
  readonly payload: Schema.Schema<any, any>
  // biome-ignore lint/suspicious/noExplicitAny: the fields of an arbitrary event are unknown here
  readonly decodePayload: Schema.Schema<any, unknown>
}

/**
 * The event value type of a definition.
 *
 * @since 0.1.0
 * @category models
 */
export type Type<T extends AnyEventType> = T["Type"]

/**
 * Options of {@link make}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options<Fields extends Schema.Struct.Fields> {
  /**
   * Schemas that decode older stored shapes of this event into today's fields.
   * Each one's `Type` must be the current fields; its `Encoded` side is the old payload.
   */
  // biome-ignore lint/suspicious/noExplicitAny: an upcast reads an old shape we know nothing about
  readonly upcasts?: ReadonlyArray<Schema.Schema<Schema.Schema.Type<Schema.Struct<Fields>>, any>>
}

/**
 * Defines an event type: its name (stored as `event_type`) and its fields.
 *
 * @example
 * ```ts
 * const OrderCreated = Event.make("OrderCreated", { customer_id: Schema.String, total: Schema.Number })
 * const event = OrderCreated.make({ customer_id: "c-1", total: 10 })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <const Tag extends string, Fields extends Schema.Struct.Fields>(
  type: Tag,
  fields: Fields,
  options?: Options<Fields>
): EventType<Tag, Fields> => {
  // Event fields are plain data: their schemas need no services, so R is never.
  const payload: EventType<Tag, Fields>["payload"] = Schema.Struct(fields) as unknown as EventType<
    Tag,
    Fields
  >["payload"]
  const upcasts = options?.upcasts ?? []
  // Decoding accepts the current shape or any older one an upcast knows.
  const decodePayload = (upcasts.length === 0 ? payload : Schema.Union(payload, ...upcasts)) as EventType<
    Tag,
    Fields
  >["decodePayload"]
  const schema = Schema.TaggedStruct(type, fields)
  return Object.assign(schema, { type, payload, decodePayload, make: fastMake(schema) as typeof schema.make })
}

/**
 * The schema's own `make`, without its per-call setup: Schema looks up every field's
 * constructor default and derives the validator on each call (about 2.7 us for an
 * event of seven fields); here both are found once. Same defaults, same validation,
 * same ParseError, same `disableValidation` option.
 */
const fastMake = (
  schema: Schema.Schema.Any & { readonly fields: Schema.Struct.Fields }
): ((props: object, options?: Schema.MakeOptions) => unknown) => {
  const defaults: Array<readonly [key: PropertyKey, value: () => unknown]> = []
  for (const key of Reflect.ownKeys(schema.fields)) {
    const field: unknown = schema.fields[key as string]
    if (Schema.isPropertySignature(field)) {
      const ast = field.ast
      const value = ast._tag === "PropertySignatureDeclaration" ? ast.defaultValue : ast.to.defaultValue
      if (value !== undefined) defaults.push([key, value])
    }
  }
  // A plain struct is checked in one loop; Schema validates anything else, and explains
  // what the loop rejects.
  const plain = PlainStruct.compile(schema.ast)
  let validate: ((input: unknown) => unknown) | undefined
  return (props, options) => {
    const out: Record<PropertyKey, unknown> = { ...props }
    for (const [key, value] of defaults) if (out[key] === undefined) out[key] = value()
    if (options === true || (typeof options === "object" && options.disableValidation === true)) return out
    const checked = plain?.(out)
    if (checked !== undefined) return checked
    validate ??= ParseResult.validateSync(schema)
    return validate(out)
  }
}

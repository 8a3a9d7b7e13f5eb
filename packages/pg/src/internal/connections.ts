/**
 * The handle on a pool's connections that `PgPool` hands to the event store. Kept in
 * a module of its own, apart from the driver module that imports `pg`: public
 * declarations name this type, and must not make users install `@types/pg`.
 *
 * @internal
 */

/**
 * The connections of a pool `PgPool` made, as the `prepared` executor needs them. Opaque
 * outside `pgDriver.ts`, so that no public type names the driver's.
 */
export interface Connections {
  readonly _tag: "Connections"
}

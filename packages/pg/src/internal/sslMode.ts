/**
 * libpq's `sslmode` values, apart from the module that plans TLS with `node:tls`: the
 * public declarations name this type, and must not need `@types/node`'s `tls`.
 *
 * @internal
 */

/** libpq's `sslmode` values, from the weakest to the strictest. */
export const sslModes = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] as const

/** How a connection uses TLS (libpq's `sslmode`). */
export type SslMode = (typeof sslModes)[number]

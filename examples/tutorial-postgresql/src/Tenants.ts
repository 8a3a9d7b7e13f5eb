/**
 * Tenant isolation (README, "Tenant isolation"): the request path runs on a role that
 * row-level security binds, inside a tenant scope; the components that need every
 * tenant (migrations, the outbox relay's table, projections) run on a role the policies
 * do not bind, each over a pool of its own. Type-checked with the examples; the README's
 * snippets come from here.
 */
import { AggregateRepository, EventStore } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgOutbox, PgPool, PgProjection } from "@eventfold/pg"
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { createOrder, Order, registry } from "./Order.js"

// The application's pool logs in as a tenant-bound role (NOSUPERUSER NOBYPASSRLS, not the
// tables' owner, given PgMigrations.tenantRoleGrants). Without a tenant scope it sees no rows.
const AppPool = Layer.unwrapEffect(
  Effect.map(Config.redacted("APP_DATABASE_URL"), (url) => PgPool.layer({ url, poolSize: 10 }))
)
// Migrations, the relay's outbox and projections need every tenant: a role with BYPASSRLS
// (or the tables' owner), on a pool of its own. Each component takes the SqlClient it is given.
const OpsPool = Layer.unwrapEffect(
  Effect.map(Config.redacted("OPS_DATABASE_URL"), (url) => PgPool.layer({ url, poolSize: 4 }))
)

export const StoreLive = PgEventStore.layerPrepared({ registry, outbox: true }).pipe(Layer.provideMerge(AppPool))
export const OpsLive = Layer.mergeAll(PgOutbox.layer(), PgProjection.layer()).pipe(
  Layer.provideMerge(Layer.effectDiscard(PgMigrations.run)),
  Layer.provide(OpsPool)
)

/** A request for one tenant: everything the store reads or appends in it is that tenant's. */
export const placeOrder = (tenantId: string, customerId: string) =>
  Effect.gen(function* () {
    const repo = yield* AggregateRepository.make(Order)
    const order = yield* repo
      .create(crypto.randomUUID())
      .pipe(createOrder({ customerId, total: 10 }), Effect.flatMap(repo.save))
    // Another tenant's order does not load (StreamNotFoundError), and saving over it
    // fails with TenantMismatchError: a stream never holds two tenants' events.
    return order.id
  }).pipe(EventStore.withTenant(tenantId))

/** A store scoped once, for a process or a layer graph that serves one tenant. */
export const TenantStoreLive = (tenantId: string) => EventStore.layerTenant(tenantId).pipe(Layer.provide(StoreLive))

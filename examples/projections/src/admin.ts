/**
 * The eventfold commands as this application's own `orders-admin` command: the
 * standalone ones, plus those that run the order-summary projection's code (rebuild it
 * with progress, reset its read model, retry a dead letter through its handler).
 *
 * Run with: npm run admin -w @eventfold/example-projections -- --help
 * (DATABASE_URL names the server; without it, the embedded PostgreSQL of `npm start`.)
 */
import * as Path from "node:path"
import { Cli } from "@eventfold/cli"
import { PgEventStore, PgPool, PgProjection } from "@eventfold/pg"
import { EmbeddedPostgres } from "@eventfold/pg-embedded"
import * as Layer from "effect/Layer"
import { orderSummary, registry } from "./Orders.js"

// The pool of the rest of the application, here with no server needed in development.
const PoolLive = EmbeddedPostgres.layerPoolConfig(
  { dataDir: Path.resolve(import.meta.dirname, "../../../.data/pg"), persistent: true },
  PgPool.config({ applicationName: "orders-admin", poolSize: 2 })
)

Cli.runMain(
  Cli.make({
    name: "orders-admin",
    projections: [orderSummary],
    // The standalone commands' services, and what running the projection needs: built
    // only for the command that runs (help needs no database).
    layer: Layer.mergeAll(Cli.layer, PgEventStore.layer({ registry }), PgProjection.layer()).pipe(
      Layer.provideMerge(PoolLive)
    )
  })
)

/**
 * The standalone `eventfold` binary: the database-only command tree over a pool from
 * the environment (bin/eventfold.js starts this, built or from source).
 */
import * as Cli from "../Cli.js"

Cli.runMain(Cli.make({ layer: Cli.layerFromEnv() }))

// Writes sql/schema.sql from the migrations (the single source of the schema).
import * as Fs from "node:fs"
import * as Path from "node:path"
import { schemaSql } from "../src/PgMigrations.js"

const target = Path.join(import.meta.dirname, "..", "sql", "schema.sql")
Fs.writeFileSync(target, schemaSql())
console.log(`wrote ${target}`)

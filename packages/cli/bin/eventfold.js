#!/usr/bin/env node
// The `eventfold` command. Installed from npm, it runs the built JavaScript in dist/.
// In a checkout of the Eventfold repository (no node_modules in its path) it runs the
// TypeScript sources in this same process, through tsx and the repository's
// `@eventfold/source` export condition: `npm ci && npx eventfold` needs no build, and
// always runs the code as it is. One process either way, so signals and exit codes are
// the command's own.
import { existsSync, realpathSync } from "node:fs"
import { register } from "node:module"
import { dirname, join, sep } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

const root = join(dirname(realpathSync(fileURLToPath(import.meta.url))), "..")
const built = join(root, "dist", "internal", "main.js")
const source = join(root, "src", "internal", "main.ts")
const installed = root.split(sep).includes("node_modules")

if (installed || !existsSync(source)) {
  await import(pathToFileURL(built).href)
} else {
  const { register: registerTsx } = await import("tsx/esm/api")
  registerTsx()
  // Resolves the workspace packages to their sources, as `--conditions=@eventfold/source` does.
  const condition = `export async function resolve(specifier, context, next) {
  return next(specifier, { ...context, conditions: [...context.conditions, "@eventfold/source"] })
}`
  register(`data:text/javascript,${encodeURIComponent(condition)}`)
  await import(pathToFileURL(source).href)
}

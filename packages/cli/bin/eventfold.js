#!/usr/bin/env node
// The `eventfold` command. Installed from npm, it runs the built JavaScript in dist/.
// In a checkout of the Eventfold repository (no node_modules in its path, no dist/
// needed) it runs the TypeScript sources through tsx, so that `npm ci && npx eventfold`
// works without a build and always runs the code as it is.
import { spawn } from "node:child_process"
import { existsSync, realpathSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(realpathSync(fileURLToPath(import.meta.url))), "..")
const built = join(root, "dist", "internal", "main.js")
const source = join(root, "src", "internal", "main.ts")
const installed = root.split(/[\\/]/).includes("node_modules")

if (installed || !existsSync(source)) {
  await import(built)
} else {
  const child = spawn(
    process.execPath,
    ["--conditions=@eventfold/source", "--import", "tsx", source, ...process.argv.slice(2)],
    { stdio: "inherit" }
  )
  // The child gets the terminal's signals itself; on a signal sent to this process only, pass it on.
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => child.kill(signal))
  child.on("exit", (code, signal) => {
    if (signal !== null) process.kill(process.pid, signal)
    else process.exit(code ?? 1)
  })
}

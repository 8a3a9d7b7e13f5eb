/**
 * `Cli.make` declares the services its commands need in its signatures, over one
 * implementation: this file fails to type-check (`npm run check`) when a command comes to
 * need a service the signatures do not declare. And `--version` is the package's.
 */
import * as Fs from "node:fs"
import { assert, describe, it } from "@effect/vitest"
import type { Projection } from "@eventfold/core"
import type * as Effect from "effect/Effect"
import { type Environment, version } from "../src/Cli.js"
import type { tree } from "../src/internal/commands.js"

/** The services the tree's commands need, as its type says (projections' own: none). */
type TreeRequirements = Effect.Effect.Context<ReturnType<ReturnType<typeof tree<never>>["handler"]>>

const declared: [TreeRequirements] extends [Environment | Projection.Requirements] ? true : never = true

describe("Cli.make's signatures", () => {
  it("declare every service the commands need", () => {
    assert.isTrue(declared)
  })
})

describe("eventfold --version", () => {
  it("is the version of the package", () => {
    const manifest = JSON.parse(Fs.readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
      readonly version: string
    }
    assert.strictEqual(version, manifest.version)
  })
})

/**
 * The README's TypeScript is code that compiles: every ```ts block is an excerpt of a
 * source file that `npm run check` type-checks (an example, a package's source or
 * test), its lines found there in the same order. A line `// ...` in a block stands for
 * what the excerpt leaves out; a leading `export` is ignored on both sides. Signature
 * sketches that are not TypeScript are fenced as `text`.
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import { assert, describe, it } from "@effect/vitest"

const root = Path.resolve(import.meta.dirname, "../..")
const skipped = new Set(["node_modules", "dist", ".data", ".git", "mutation"])

/** The type-checked TypeScript sources of the repository. */
const sources = (): ReadonlyArray<readonly [file: string, lines: ReadonlyArray<string>]> => {
  const files: Array<string> = []
  const walk = (dir: string) => {
    for (const entry of Fs.readdirSync(dir, { withFileTypes: true })) {
      if (skipped.has(entry.name)) continue
      const path = Path.join(dir, entry.name)
      if (entry.isDirectory()) walk(path)
      else if (entry.name.endsWith(".ts") && !entry.name.endsWith(".d.ts")) files.push(path)
    }
  }
  for (const dir of ["examples", "packages", "test"]) walk(Path.join(root, dir))
  return files.map((file) => [Path.relative(root, file), lines(Fs.readFileSync(file, "utf8"))] as const)
}

const lines = (text: string): Array<string> =>
  text
    .split("\n")
    .map((line) => line.trim().replace(/^export /, ""))
    .filter((line) => line !== "")

/** Whether `excerpt` is in `source`, line after line, with anything between. */
const contains = (source: ReadonlyArray<string>, excerpt: ReadonlyArray<string>): boolean => {
  let next = 0
  for (const line of source) {
    if (line === excerpt[next]) next++
    if (next === excerpt.length) return true
  }
  return false
}

describe("README", () => {
  const readme = Fs.readFileSync(Path.join(root, "README.md"), "utf8")
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1]!)
  const files = sources()

  it("has TypeScript blocks to check", () => {
    assert.isAtLeast(blocks.length, 10)
  })

  blocks.forEach((block, index) => {
    const excerpt = lines(block).filter((line) => line !== "// ...")
    it(`block ${index + 1} (${excerpt[0]}) is an excerpt of a type-checked file`, () => {
      const found = files.find(([, source]) => contains(source, excerpt))
      assert.isDefined(found, `no source file holds, in this order:\n${excerpt.join("\n")}`)
    })
  })
})

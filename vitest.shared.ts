import { fileURLToPath } from "node:url"
import { defaultClientConditions, defaultServerConditions } from "vite"
import { defineConfig } from "vitest/config"

// Workspace packages are tested from their TypeScript sources (the "@eventfold/source" export condition).
// Tests run in vite's SSR environment, which resolves with `ssr.resolve.conditions` (plain
// `resolve.conditions` only applies to the client environment); both get the condition, in front of
// vite's defaults, so the two never disagree.
const source = "@eventfold/source"

export const shared = defineConfig({
  resolve: { conditions: [source, ...defaultClientConditions] },
  ssr: { resolve: { conditions: [source, ...defaultServerConditions], externalConditions: [source] } },
  test: {
    include: ["test/**/*.test.ts", "**/*.test.ts"],
    exclude: ["**/node_modules/**", "**/dist/**"],
    testTimeout: 60_000,
    hookTimeout: 120_000
  }
})

/** The `globalSetup` that provides `inject("databaseUrl")`, for the projects that need PostgreSQL. */
export const databaseSetup = fileURLToPath(new URL("./test/support/globalSetup.ts", import.meta.url))

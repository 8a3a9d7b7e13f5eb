import { defineConfig } from "vitest/config"

// Workspace packages are tested from their TypeScript sources (the "@eventfold/source" export condition).
const conditions = ["@eventfold/source", "module", "node", "import", "default"]

export const shared = defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions, externalConditions: ["@eventfold/source"] } },
  test: {
    include: ["test/**/*.test.ts", "**/*.test.ts"],
    exclude: ["**/node_modules/**", "**/dist/**"],
    testTimeout: 60_000,
    hookTimeout: 120_000
  }
})

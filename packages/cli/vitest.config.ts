import { defineProject, mergeConfig } from "vitest/config"
import { databaseSetup, shared } from "../../vitest.shared.js"

export default mergeConfig(shared, defineProject({ test: { name: "cli", globalSetup: [databaseSetup] } }))

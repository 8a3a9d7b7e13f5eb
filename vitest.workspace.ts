// The test projects of the monorepo: the root vitest.config.ts passes this list as `test.projects`.
export default ["packages/*", "test"]

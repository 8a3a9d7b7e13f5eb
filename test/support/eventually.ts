/** The conformance suites' `eventually`, for the repository's other tests (see @eventfold/testing). */
export * from "../../packages/testing/src/internal/eventually.js"

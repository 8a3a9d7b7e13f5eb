/** The conformance suites' span recorder, for the repository's other tests (see @eventfold/testing). */
export * from "../../packages/testing/src/internal/spans.js"

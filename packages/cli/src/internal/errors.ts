/**
 * How a command ends: the exit codes scripts rely on, and the one line that says why.
 */
import * as ValidationError from "@effect/cli/ValidationError"
import { redactCredentials } from "@eventfold/core/Settings"
import * as Cause from "effect/Cause"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"

/**
 * The exit codes of `eventfold`, the same for every command.
 *
 * @since 0.1.0
 * @category models
 */
export const ExitCode = {
  /** Done. */
  ok: 0,
  /** The operation failed: the database refused it, a query failed, a retry failed again. */
  failure: 1,
  /** The command line is wrong: unknown command, missing or malformed argument. */
  usage: 2,
  /** No database: none is configured, the configuration is invalid, or the server cannot be reached. */
  unavailable: 3,
  /** What was named does not exist: a dead letter, a stream, a projection. */
  notFound: 4,
  /** The schema is not up to date: migrations are pending (or unknown to this version). */
  pending: 5,
  /** Interrupted (Ctrl-C, SIGTERM). */
  interrupted: 130
} as const

/**
 * A command's own failure, with the exit code it ends with.
 *
 * @since 0.1.0
 * @category errors
 */
export class CliError extends Schema.TaggedError<CliError>()("CliError", {
  exitCode: Schema.Number,
  message: Schema.String,
  /** The command already printed what went wrong: no further line. */
  printed: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  cause: Schema.optional(Schema.Defect)
}) {}

/** The exit code a failure ends with. */
const exitCodeOf = (error: unknown): number => {
  if (ValidationError.isValidationError(error)) return ExitCode.usage
  if (typeof error !== "object" || error === null || !("_tag" in error)) return ExitCode.failure
  switch (error._tag) {
    case "CliError":
      return (error as CliError).exitCode
    case "ServerNotConfiguredError":
    case "ConfigError":
    case "EmbeddedPostgresError":
      return ExitCode.unavailable
    case "DeadLetterNotFoundError":
      return ExitCode.notFound
    default:
      return ExitCode.failure
  }
}

/** One line: no stack, no newline, no credentials. */
const line = (text: string): string =>
  redactCredentials(text)
    .replace(/\s*[\r\n]+\s*/g, " ")
    .trim()

const messageOf = (error: unknown): string => {
  if (error instanceof Error || (typeof error === "object" && error !== null && "message" in error)) {
    const message = String((error as { readonly message: unknown }).message)
    if (message !== "") return message
  }
  if (typeof error === "object" && error !== null && "_tag" in error) return String(error._tag)
  return String(error)
}

/**
 * What a failed command prints (nothing for a usage error: @effect/cli has printed it
 * with the usage) and the code it exits with.
 */
export const explain = (
  cause: Cause.Cause<unknown>,
  name: string
): { readonly exitCode: number; readonly line: string | null } => {
  if (Cause.isInterruptedOnly(cause)) return { exitCode: ExitCode.interrupted, line: `${name}: interrupted` }
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    const error = failure.value
    const exitCode = exitCodeOf(error)
    if (ValidationError.isValidationError(error)) return { exitCode, line: null }
    if (error instanceof CliError && error.printed) return { exitCode, line: null }
    return { exitCode, line: `${name}: ${line(messageOf(error))}` }
  }
  const defect = Cause.dieOption(cause)
  return {
    exitCode: ExitCode.failure,
    line: `${name}: unexpected error: ${line(Option.match(defect, { onNone: () => "unknown", onSome: messageOf }))}`
  }
}

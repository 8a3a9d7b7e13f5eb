/**
 * How a command ends: the exit codes scripts rely on, and the one line that says why.
 */
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as ValidationError from "@effect/cli/ValidationError"
import { redactCredentials } from "@eventfold/core/Settings"
import * as Cause from "effect/Cause"
import * as ConfigError from "effect/ConfigError"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { escapeControls, stripAnsi } from "./output.js"

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
  /** Interrupted (Ctrl-C, SIGINT). */
  interrupted: 130,
  /** Terminated (SIGTERM: a service manager, a container stopping). */
  terminated: 143
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
  cause: Schema.optional(Schema.Defect)
}) {}

/** The exit code a failure ends with. */
const exitCodeOf = (error: unknown): number => {
  if (ValidationError.isValidationError(error)) return ExitCode.usage
  if (error instanceof CliError) return error.exitCode
  if (typeof error !== "object" || error === null || !("_tag" in error)) return ExitCode.failure
  switch (error._tag) {
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

/** A message as one line of output: no newline, no credentials, no control character (a table cell is `Out.oneLine`). */
export const messageLine = (text: string): string =>
  escapeControls(
    redactCredentials(text)
      .replace(/\s*[\r\n]+\s*/g, " ")
      .trim()
  )

/** An error's own message; a configuration error's names the variable (`DATABASE_URL: ...`). */
export const describe = (error: unknown): string => {
  if (ConfigError.isConfigError(error)) {
    return "path" in error && error.path.length > 0 ? `${error.path.join(".")}: ${error.message}` : error.message
  }
  if (error instanceof Error || (typeof error === "object" && error !== null && "message" in error)) {
    const message = String((error as { readonly message: unknown }).message)
    if (message !== "") return message
  }
  if (typeof error === "object" && error !== null && "_tag" in error) return String(error._tag)
  return String(error)
}

const causeOf = (error: unknown): unknown =>
  typeof error === "object" && error !== null && "cause" in error ? error.cause : undefined

const isErrorLike = (value: unknown): boolean =>
  value instanceof Error ||
  (typeof value === "object" && value !== null && "message" in value && typeof value.message === "string")

/**
 * The message, followed by those of its causes that add to it: a wrapper's "Failed to
 * execute statement" says less than the server's "LIMIT must not be negative" under it.
 */
const messageOf = (error: unknown): string => {
  const parts = [describe(error)]
  let cause = causeOf(error)
  for (let depth = 0; depth < 8 && isErrorLike(cause); depth++) {
    const message = describe(cause)
    if (!parts.some((part) => part.includes(message))) parts.push(message)
    cause = causeOf(cause)
  }
  return parts.join(": ")
}

/** What @effect/cli says of a usage error (it is kept from printing it itself: see `Cli.run`). */
const usageMessage = (error: ValidationError.ValidationError): string => stripAnsi(HelpDoc.toAnsiText(error.error))

/** What a failed command prints and the code it exits with. */
export const explain = (
  cause: Cause.Cause<unknown>,
  name: string
): { readonly exitCode: number; readonly line: string | null } => {
  if (Cause.isInterruptedOnly(cause)) return { exitCode: ExitCode.interrupted, line: `${name}: interrupted` }
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    const error = failure.value
    const exitCode = exitCodeOf(error)
    if (ValidationError.isValidationError(error))
      return { exitCode, line: `${name}: ${messageLine(usageMessage(error))}` }
    return { exitCode, line: `${name}: ${messageLine(messageOf(error))}` }
  }
  const defect = Cause.dieOption(cause)
  return {
    exitCode: ExitCode.failure,
    line: `${name}: unexpected error: ${messageLine(Option.match(defect, { onNone: () => "unknown", onSome: messageOf }))}`
  }
}

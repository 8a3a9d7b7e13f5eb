/**
 * The `eventfold` command line, as an @effect/cli command tree over Eventfold's services.
 *
 * The standalone binary (`npx eventfold`, from this package) does what the database alone
 * can: migrate, status, stats, streams, the outbox, projection checkpoints, dead letters.
 * An application mounts the same tree with its projections (`make({ projections })`),
 * which adds the commands that run their code: `projections reset` clearing the read model,
 * `projections rebuild` with progress, `dead-letters retry` through the handler.
 *
 * Every command prints a table (or `--json`: one JSON document on stdout), writes logs
 * and progress to stderr, and ends with one of the {@link ExitCode}s; a failure is one
 * line on stderr, with no stack and no credentials.
 *
 * @since 0.1.0
 */
import type * as CliApp from "@effect/cli/CliApp"
import * as Command from "@effect/cli/Command"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import type * as SqlClient from "@effect/sql/SqlClient"
import type * as PgClient from "@effect/sql-pg/PgClient"
import type * as CheckpointStore from "@eventfold/core/CheckpointStore"
import type * as DeadLetterQueue from "@eventfold/core/DeadLetterQueue"
import type * as Outbox from "@eventfold/core/Outbox"
import type * as Projection from "@eventfold/core/Projection"
import * as Telemetry from "@eventfold/core/Telemetry"
import * as OtelTelemetry from "@eventfold/opentelemetry/OtelTelemetry"
import * as PgCheckpointStore from "@eventfold/pg/PgCheckpointStore"
import * as PgDeadLetterQueue from "@eventfold/pg/PgDeadLetterQueue"
import * as PgMonitor from "@eventfold/pg/PgMonitor"
import * as PgOutbox from "@eventfold/pg/PgOutbox"
import * as PgPool from "@eventfold/pg/PgPool"
import * as Cause from "effect/Cause"
import * as Config from "effect/Config"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as HashSet from "effect/HashSet"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import type * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import { type ProjectionSource, tree } from "./internal/commands.js"
import * as errors from "./internal/errors.js"
import { stripAnsi } from "./internal/output.js"

/**
 * The exit codes, the same for every command: 0 done, 1 the operation failed, 2 the
 * command line is wrong, 3 no database (not configured, invalid, unreachable), 4 what was
 * named does not exist, 5 migrations are pending, 130 interrupted (SIGINT), 143
 * terminated (SIGTERM).
 *
 * @since 0.1.0
 * @category models
 */
export const ExitCode = errors.ExitCode

/**
 * A command's own failure, with the exit code it ends with.
 *
 * @since 0.1.0
 * @category errors
 */
export const CliError = errors.CliError

/**
 * @since 0.1.0
 * @category errors
 */
export type CliError = errors.CliError

/**
 * The version of `eventfold` (`--version`).
 *
 * @since 0.1.0
 * @category models
 */
export const version = "0.1.0"

/**
 * The services the standalone commands use; {@link layer} makes them from a pool.
 *
 * @since 0.1.0
 * @category models
 */
export type Environment =
  | PgMonitor.PgMonitor
  | Outbox.Outbox
  | CheckpointStore.CheckpointStore
  | DeadLetterQueue.DeadLetterQueue
  | SqlClient.SqlClient

/**
 * The command tree, named `name` (default `eventfold`). With `projections` (each a
 * projection, or an effect that makes one), the commands that run their code are added,
 * and need what a projection runner needs (the application's `EventStore`,
 * `ProjectionRuntime`, and the projections' own services).
 *
 * With `layer`, each command gets its services from it, built only when that command
 * runs: `--help`, and a group named alone, need no database. A failure to build it (no
 * server configured, none reachable) ends the command with `ExitCode.unavailable`.
 *
 * Mount the tree in an application's own @effect/cli command line, or run it with
 * {@link runMain}.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: {
  <LA = never, LE = never, LR = never>(options?: {
    readonly name?: string | undefined
    readonly layer?: Layer.Layer<LA, LE, LR> | undefined
  }): Command.Command<string, Exclude<Environment, LA> | LR, unknown, Parsed>
  <R, LA = never, LE = never, LR = never>(options: {
    readonly name?: string | undefined
    readonly projections: ReadonlyArray<Projection.Projection<R> | Effect.Effect<Projection.Projection<R>, unknown, R>>
    readonly layer?: Layer.Layer<LA, LE, LR> | undefined
  }): Command.Command<string, Exclude<Environment | Projection.Requirements | R, LA> | LR, unknown, Parsed>
} = (options?: {
  readonly name?: string | undefined
  readonly projections?: ReadonlyArray<ProjectionSource<unknown>> | undefined
  readonly layer?: Layer.Layer<unknown, unknown, unknown> | undefined
}) => {
  const layer = options?.layer === undefined ? undefined : unavailableWhenUnbuilt(options.layer)
  // One implementation for both signatures (the trees differ by the commands that run
  // projections); test/types.test.ts keeps the declared requirements true.
  return tree(options?.name ?? "eventfold", options?.projections, (command) =>
    layer === undefined ? command : (Command.provide(command, layer) as typeof command)
  ) as unknown as Command.Command<string, never, unknown, Parsed>
}

/** A layer whose failure to build ends the command as "no database" (exit 3), naming why. */
const unavailableWhenUnbuilt = <A, E, R>(layer: Layer.Layer<A, E, R>): Layer.Layer<A, CliError, R> =>
  Layer.mapError(layer, (error) =>
    error instanceof errors.CliError
      ? error
      : new errors.CliError({ exitCode: errors.ExitCode.unavailable, message: errors.describe(error), cause: error })
  )

/**
 * What the tree parses a command line into (its subcommand, chosen and parsed).
 *
 * @since 0.1.0
 * @category models
 */
export interface Parsed {
  readonly subcommand: Option.Option<unknown>
}

/**
 * The standalone services over the `SqlClient` and `PgClient` in context: the monitor,
 * the outbox, checkpoints and dead letters.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<
  PgMonitor.PgMonitor | Outbox.Outbox | CheckpointStore.CheckpointStore | DeadLetterQueue.DeadLetterQueue,
  never,
  SqlClient.SqlClient | PgClient.PgClient
> = Layer.mergeAll(PgMonitor.layer, PgOutbox.layer(), PgCheckpointStore.layer, PgDeadLetterQueue.layer)

/**
 * {@link layer} over a pool configured as the library is (`DATABASE_URL`, `PG*`,
 * `DATABASE_SCHEMA`, ...; see `PgPool.config`), with a small pool named `eventfold-cli`
 * that tries to connect for 5 seconds. A missing, invalid or unreachable server fails
 * with a `CliError` that exits with `ExitCode.unavailable`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerFromEnv = (
  defaults: PgPool.Options = {}
): Layer.Layer<Environment | PgClient.PgClient | PgPool.PgPool, CliError> =>
  layer.pipe(
    Layer.provideMerge(
      PgPool.layerFromEnv({
        applicationName: "eventfold-cli",
        poolSize: 1,
        maxOverflow: 3,
        connectRetry: Schedule.spaced("500 millis").pipe(Schedule.upTo("5 seconds")),
        ...defaults
      })
    ),
    unavailableWhenUnbuilt
  )

/** Prints what ends a command as one line on stderr, and gives its exit code. */
const report = (cause: Cause.Cause<unknown>, name: string): Effect.Effect<number> => {
  const { exitCode, line } = errors.explain(cause, name)
  return Effect.as(line === null ? Effect.void : Console.error(line), exitCode)
}

/** The command's first name: `eventfold`, or the name the application gave its tree. */
const nameOf = <R, E, A>(command: Command.Command<string, R, E, A>): string =>
  HashSet.values(Command.getNames(command)).next().value ?? "eventfold"

/**
 * Runs `command` on the arguments (`process.argv`: the first two are skipped). Prints
 * what a failure means as one line on stderr and returns the exit code; it never fails.
 *
 * @since 0.1.0
 * @category constructors
 */
export const run =
  <R, E, A>(
    command: Command.Command<string, R, E, A>,
    options: { readonly name?: string | undefined; readonly version?: string | undefined } = {}
  ) =>
  (argv: ReadonlyArray<string>): Effect.Effect<number, never, R | CliApp.CliApp.Environment> => {
    const name = options.name ?? nameOf(command)
    return Console.consoleWith((console) =>
      Command.run(
        // The commands write to the console as it is (only @effect/cli's own printing is quieted, below).
        Command.transformHandler(command, (effect) => Console.withConsole(effect, console)),
        { name, version: options.version ?? version }
      )(argv).pipe(
        // @effect/cli prints a usage error itself, over two lines and without the program's name:
        // it is printed below, as every failure is, on one line.
        (effect) => Console.withConsole(effect, { ...console, error: () => Effect.void }),
        Effect.as(errors.ExitCode.ok as number),
        Effect.catchAllCause((cause) => report(cause, name))
      )
    )
  }

/** Log lines on stderr, so that stdout holds only the result (`--json` stays parseable). */
const stderrLogger = (name: string) =>
  Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ cause, logLevel, message }) => {
      const text = (Array.isArray(message) ? message : [message]).map(String).join(" ")
      // The cause, if any, on the same line: its failures' messages, never a stack.
      const why = Cause.isEmpty(cause) ? "" : `: ${errors.explain(cause, name).line?.slice(name.length + 2) ?? ""}`
      globalThis.console.error(errors.messageLine(`${name}: ${logLevel.label.toLowerCase()}: ${text}${why}`))
    })
  )

/** Whether `stream` shows colors: a terminal, and no NO_COLOR (https://no-color.org). */
const colors = (stream: NodeJS.WriteStream) => stream.isTTY === true && process.env.NO_COLOR === undefined

const plain = (args: ReadonlyArray<unknown>) => args.map((arg) => (typeof arg === "string" ? stripAnsi(arg) : arg))

/**
 * @effect/cli colors its help and usage errors whatever the output is: outside a
 * terminal (a pipe, a file, a test) they are written without the escape codes.
 */
const plainWhenPiped = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Console.consoleWith((console) =>
    Console.withConsole(effect, {
      ...console,
      log: (...args) => console.log(...(colors(process.stdout) ? args : plain(args))),
      error: (...args) => console.error(...(colors(process.stderr) ? args : plain(args)))
    })
  )

/** LOG_LEVEL, Warning by default: a command prints its result, not the library's progress. */
const logLevel = Layer.unwrapEffect(
  Config.logLevel("LOG_LEVEL").pipe(
    Config.withDefault(LogLevel.Warning),
    Effect.orElseSucceed(() => LogLevel.Warning),
    Effect.map(Logger.minimumLogLevel)
  )
)

/**
 * Runs `command` as this process's main program: telemetry from the `OTEL_*` variables
 * (nothing without them; a malformed one is a warning), logs on stderr at `LOG_LEVEL`
 * (default Warning), and the process exits with the command's {@link ExitCode}. Give the
 * command its services with {@link make}'s `layer`, which builds them only for the
 * command that runs.
 *
 * ```ts
 * // bin/orders-admin.ts: the eventfold commands, with this application's projections
 * Cli.runMain(
 *   Cli.make({
 *     name: "orders-admin",
 *     projections: [orderSummary],
 *     layer: Layer.mergeAll(Cli.layer, PgEventStore.layer({ registry }), PgProjection.layer()).pipe(
 *       Layer.provideMerge(PgPool.layerFromEnv())
 *     )
 *   })
 * )
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const runMain = <E, A>(
  command: Command.Command<string, never, E, A>,
  options: {
    readonly version?: string | undefined
    readonly telemetry?: Layer.Layer<Telemetry.Telemetry, unknown> | undefined
  } = {}
): void => {
  const name = nameOf(command)
  const telemetry = Layer.catchAll(options.telemetry ?? OtelTelemetry.layerConfig({ serviceName: name }), (error) =>
    Layer.effectDiscard(Effect.logWarning(`telemetry is off: ${errors.describe(error)}`)).pipe(
      Layer.provideMerge(Telemetry.layerNone)
    )
  )
  // Which signal ended the program (NodeRuntime.runMain's own listeners interrupt it): its exit code says.
  let signal: "SIGINT" | "SIGTERM" | undefined
  for (const received of ["SIGINT", "SIGTERM"] as const) {
    process.once(received, () => {
      signal ??= received
    })
  }
  const program = Effect.flatMap(
    Effect.sync(() => process.argv),
    run(command, { name, version: options.version })
  ).pipe(
    Effect.provide(telemetry),
    // A signal interrupts the program from outside, where no catch recovers: the line is said here.
    Effect.onInterrupt(() => Console.error(`${name}: ${signal === "SIGTERM" ? "terminated" : "interrupted"}`)),
    plainWhenPiped,
    Effect.provide(Layer.mergeAll(NodeContext.layer, stderrLogger(name), logLevel))
  )
  NodeRuntime.runMain(program, {
    disableErrorReporting: true,
    // runMain would add its pretty logger, which writes to stdout beside ours on stderr.
    disablePrettyLogger: true,
    teardown: (exit, onExit) =>
      onExit(
        Exit.isSuccess(exit)
          ? // The program's value is its exit code (runMain's teardown is typed for any program).
            typeof exit.value === "number"
            ? exit.value
            : errors.ExitCode.ok
          : Exit.isInterrupted(exit)
            ? signal === "SIGTERM"
              ? errors.ExitCode.terminated
              : errors.ExitCode.interrupted
            : errors.ExitCode.failure
      )
  })
}

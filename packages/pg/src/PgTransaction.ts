/**
 * Transactions whose every failure is typed. `sql.withTransaction` of @effect/sql
 * turns a COMMIT or ROLLBACK that fails (the connection was lost at that moment) into
 * a defect; here it is a `SqlError`, as any other statement's failure. Statements of
 * the `SqlClient` inside the effect join the transaction, and so do Eventfold's
 * (`append`, checkpoints, dead letters, outbox entries); nested calls, here or of
 * `sql.withTransaction`, are savepoints.
 *
 * A COMMIT that fails on a lost connection leaves the outcome unknown: the transaction
 * may have committed. An append retried after it is safe (the same event ids are an
 * idempotent replay); other writes should be idempotent too.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Driver from "./internal/pgDriver.js"

/**
 * Runs `effect` in one transaction (a savepoint inside another).
 *
 * @since 0.1.0
 * @category combinators
 */
export const withTransaction = <A, E, R>(
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E | SqlError, R | SqlClient.SqlClient> =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Driver.sqlExecutor(sql)
      .transaction(effect)
      .pipe(
        Effect.catchIf(Driver.isDriverError, (error) =>
          Effect.fail(new SqlError({ cause: error, message: error.message }))
        )
      )
  )

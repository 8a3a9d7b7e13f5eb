import type * as CheckpointStore from "@eventfold/core/CheckpointStore"
import * as Schema from "effect/Schema"
import { Int8 } from "./eventRows.js"

/** A `projection_checkpoints` row, as the checkpoint store and the monitor read it. */
export const CheckpointRow = Schema.Struct({
  projection_name: Schema.String,
  global_position: Int8,
  last_event_id: Schema.NullOr(Schema.String),
  last_event_type: Schema.NullOr(Schema.String),
  events_processed: Int8,
  last_processed_at: Schema.NullOr(Schema.DateFromSelf),
  created_at: Schema.DateFromSelf,
  updated_at: Schema.DateFromSelf
})

/** The row as a checkpoint. */
export const toCheckpoint = (row: typeof CheckpointRow.Type): CheckpointStore.Checkpoint => ({
  name: row.projection_name,
  position: row.global_position,
  eventId: row.last_event_id,
  eventType: row.last_event_type,
  eventsProcessed: row.events_processed,
  lastProcessedAt: row.last_processed_at,
  createdAt: row.created_at,
  updatedAt: row.updated_at
})

/**
 * What the commands print: aligned tables for people, one JSON document for scripts.
 */
import * as Console from "effect/Console"
import * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import * as Option from "effect/Option"

/** A column of a table: its header, how to show a row's value, numbers aligned right. */
export interface Column<A> {
  readonly header: string
  readonly value: (row: A) => string
  readonly align?: "left" | "right"
}

/**
 * Rows as a table with a header line, each column as wide as its widest cell; the
 * last column is not padded. No rows: `empty`, so that nothing looks like a silent failure.
 */
export const table = <A>(rows: ReadonlyArray<A>, columns: ReadonlyArray<Column<A>>, empty = "(none)"): string => {
  if (rows.length === 0) return empty
  const cells = rows.map((row) => columns.map((column) => oneLine(column.value(row))))
  const widths = columns.map((column, i) => Math.max(column.header.length, ...cells.map((row) => row[i]!.length)))
  const line = (values: ReadonlyArray<string>) =>
    values
      .map((value, i) => (columns[i]!.align === "right" ? value.padStart(widths[i]!) : value.padEnd(widths[i]!)))
      .join("  ")
      // The last column unpadded: no trailing blanks.
      .trimEnd()
  return [line(columns.map((column) => column.header)), ...cells.map(line)].join("\n")
}

/** `label   value` lines with the labels aligned (a value of several lines keeps them). */
export const fields = (entries: ReadonlyArray<readonly [label: string, value: string]>): string => {
  const width = Math.max(...entries.map(([label]) => label.length))
  return entries.map(([label, value]) => `${label.padEnd(width)}  ${escapeControls(value, "\n")}`).join("\n")
}

/** A heading over an indented block. */
export const section = (title: string, body: string): string =>
  `${title}\n${escapeControls(body, "\n\t")
    .split("\n")
    .map((line) => `  ${line}`)
    .join("\n")}`

/**
 * Text with its control characters (but those in `keep`) written as `\uXXXX`: what the
 * commands print comes from the database (application names, errors, event types), and an
 * escape sequence in it must not drive the operator's terminal.
 */
export const escapeControls = (text: string, keep = ""): string => {
  let escaped = ""
  for (const char of text) {
    const code = char.codePointAt(0)!
    const control = code < 0x20 || (code >= 0x7f && code <= 0x9f)
    escaped += control && !keep.includes(char) ? `\\u${code.toString(16).padStart(4, "0")}` : char
  }
  return escaped
}

/** A cell on one line: line breaks and tabs become spaces, other control characters escapes. */
export const oneLine = (text: string): string => escapeControls(text.replace(/[\r\n\t]+/g, " "))

const ansi = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, "g")

/** Text without the color codes @effect/cli writes into its help and errors. */
export const stripAnsi = (text: string): string => text.replace(ansi, "")

/** An integer with thousands separators, in every locale the same. */
export const count = (n: number | bigint): string => n.toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",")

const units = ["B", "kB", "MB", "GB", "TB"] as const

/** Bytes as PostgreSQL's pg_size_pretty shows them (1024-based, whole numbers). */
export const bytes = (n: bigint): string => {
  let value = Number(n)
  let unit = 0
  while (value >= 10 * 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return `${Math.round(value)} ${units[unit]}`
}

/** A span of time as people read it: `850ms`, `12.3s`, `4m 05s`, `2h 10m`, `3d 4h`. */
export const age = (millis: number): string => {
  if (millis < 1000) return `${Math.round(millis)}ms`
  const seconds = millis / 1000
  if (seconds < 60) return `${seconds.toFixed(1)}s`
  const s = Math.floor(seconds)
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`
  if (s < 86_400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`
  return `${Math.floor(s / 86_400)}d ${Math.floor((s % 86_400) / 3600)}h`
}

/** A timestamp in UTC, to the second. */
export const time = (date: Date | null): string => (date === null ? "-" : `${date.toISOString().slice(0, 19)}Z`)

/** A nullable text, `-` for null. */
export const text = (value: string | null | undefined): string => (value == null ? "-" : value)

/** Shortens a long cell (a query, an error) to `max` characters. */
export const clip = (value: string, max: number): string => {
  const line = oneLine(value)
  return line.length <= max ? line : `${line.slice(0, max - 1)}…`
}

/**
 * The value as plain JSON data: bigints stay exact (written as JSON numbers with all
 * their digits, which JSON allows and jq keeps), Options become their value or null,
 * Durations their milliseconds, Dates ISO strings. A bigint is first a string holding
 * `marker` (which no string of the value holds), then its digits replace that string.
 */
const plain = (value: unknown, marker: string): unknown => {
  if (typeof value === "bigint") return `${marker}${value}`
  if (value instanceof Date) return value.toISOString()
  if (Option.isOption(value)) return Option.isSome(value) ? plain(value.value, marker) : null
  if (Duration.isDuration(value)) return Duration.toMillis(value)
  if (Array.isArray(value)) return value.map((item) => plain(item, marker))
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([key, v]) => [key, plain(v, marker)]))
  }
  return value
}

/** One JSON document, as {@link plain} makes it. */
export const json = (value: unknown): string => {
  const marker = `bigint-${crypto.randomUUID()}:`
  return JSON.stringify(plain(value, marker), null, 2).replace(
    new RegExp(`"${marker}(-?\\d+)"`, "g"),
    (_, digits: string) => digits
  )
}

/** Prints `value` as JSON with `--json`, otherwise as `human` renders it. */
export const print = <A>(value: A, asJson: boolean, human: (value: A) => string): Effect.Effect<void> =>
  Console.log(asJson ? json(value) : human(value))

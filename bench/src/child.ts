/**
 * One side of the benchmark in a process of its own, so that its peak RSS is its
 * own. Started by `main.ts` with the side as its argument: it loads only that
 * side's modules, says "ready", then runs each workload the parent sends, one at a
 * time, and exits when the parent disconnects. A full run gives every
 * (workload, side) a fresh child; `--quick` reuses one child per side.
 */
import * as Fs from "node:fs/promises"
import * as Inspector from "node:inspector/promises"
import type { ChildMessage, ParentMessage, Runner, Side } from "./protocol.js"

const side = process.argv[2] as Side

const send = (message: ChildMessage) =>
  new Promise<void>((resolve, reject) =>
    process.send!(message, (error: Error | null) => (error ? reject(error) : resolve()))
  )

const modules: Record<Side, () => Promise<{ readonly runners: Readonly<Record<string, Runner>> }>> = {
  raw: () => import("./raw.js"),
  eventfold: () => import("./eventfold.js")
}

const describe = (error: unknown) => (error instanceof Error ? (error.stack ?? error.message) : String(error))

const startProfiler = async () => {
  const session = new Inspector.Session()
  session.connect()
  await session.post("Profiler.enable")
  await session.post("Profiler.setSamplingInterval", { interval: 200 })
  await session.post("Profiler.start")
  return session
}

const run = async (runners: Readonly<Record<string, Runner>>, message: ParentMessage) => {
  const runner = runners[message.workload]
  if (runner === undefined) throw new Error(`${side} has no runner for ${message.workload}`)
  const baselineRssMb = process.memoryUsage().rss / 2 ** 20
  const profiler = message.profile === undefined ? undefined : await startProfiler()
  const measurement = await runner(message.context)
  if (profiler !== undefined && message.profile !== undefined) {
    const { profile } = await profiler.post("Profiler.stop")
    profiler.disconnect()
    await Fs.writeFile(message.profile, JSON.stringify(profile))
  }
  const peakRssMb = process.resourceUsage().maxRSS / 1024
  await send({ _tag: "result", result: { ...measurement, baselineRssMb, peakRssMb } })
}

modules[side]().then(
  ({ runners }) => {
    // Runs are sequential: the parent sends the next one after the previous result.
    process.on("message", (message) => {
      run(runners, message as ParentMessage).catch((error: unknown) => {
        process.exitCode = 1
        void send({ _tag: "error", message: describe(error) }).catch(() => undefined)
      })
    })
    return send({ _tag: "ready" })
  },
  (error: unknown) => {
    process.exitCode = 1
    return send({ _tag: "error", message: describe(error) }).catch(() => undefined)
  }
)

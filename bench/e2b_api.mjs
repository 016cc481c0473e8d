// `vessel serve` through the e2b SDK, against the C++ API, in one run (bench/run api):
//   create -> first command done, cold and from a warm pool (vessel serve --pool);
//   a command's round trip through the API, and through the C++ API (vessel_bench);
//   32 concurrent SDK clients running commands on 4 sandboxes: throughput and p99;
//   pause, resume (connect) -> first command, and fork -> first command in the copy.
// Usage: bench/run api [--cold N] [--exec N] [--clients N] [--per-client N] [--lifecycle N]
import { execFileSync } from 'node:child_process'
import { Sandbox } from 'e2b'
import { startServer } from './harness.mjs'

const args = process.argv.slice(2)
const option = (name, fallback) => {
  const at = args.indexOf(name)
  return at >= 0 ? Number(args[at + 1]) : fallback
}
const cold = option('--cold', 8)
const execs = option('--exec', 50)
const clients = option('--clients', 32)
const perClient = option('--per-client', 10)
const lifecycle = option('--lifecycle', 5)

function stats(values) {
  const sorted = [...values].sort((a, b) => a - b)
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]
  return {
    n: sorted.length,
    min: sorted[0],
    median: at(0.5),
    p90: sorted.length >= 10 ? at(0.9) : undefined,
    p99: sorted.length >= 50 ? at(0.99) : undefined,
    max: sorted[sorted.length - 1],
  }
}
const cell = (v) => (v === undefined ? '-' : v.toFixed(2))
const rows = []
function row(label, s) {
  rows.push(`${label.padEnd(62)}${String(s.n).padStart(5)}${[s.min, s.median, s.p90, s.p99, s.max]
    .map((v) => cell(v).padStart(11)).join('')}`)
}

const server = await startServer()
const opts = server.opts
try {
  const coldTimes = []
  for (let i = 0; i < cold; ++i) {
    const t0 = performance.now()
    const sbx = await Sandbox.create('minimal', opts)
    await sbx.commands.run('true')
    coldTimes.push(performance.now() - t0)
    await sbx.kill()
  }
  const cold_ = stats(coldTimes)
  row('API: POST /v2/sandboxes -> first command done (cold)', cold_)

  // The same from a pool of 2, given time to refill between creates.
  const pooledServer = await startServer({ args: ['--pool', 'minimal=2'] })
  const warmTimes = []
  try {
    for (let i = 0; i < cold; ++i) {
      await new Promise((resolve) => setTimeout(resolve, 3000))
      const t0 = performance.now()
      const sbx = await Sandbox.create('minimal', pooledServer.opts)
      await sbx.commands.run('true')
      warmTimes.push(performance.now() - t0)
      await sbx.kill()
    }
  } finally {
    await pooledServer.stop()
    await (await startServer()).stop()  // a server without pools stops the warm ones
  }
  const warm_ = stats(warmTimes)
  row('API: POST /v2/sandboxes -> first command done (warm pool)', warm_)

  const sbx = await Sandbox.create('minimal', opts)
  for (let i = 0; i < 5; ++i) await sbx.commands.run('true')
  const rt = []
  for (let i = 0; i < execs; ++i) {
    const t0 = performance.now()
    await sbx.commands.run('true')
    rt.push(performance.now() - t0)
  }
  const api = stats(rt)
  row('API: commands.run(`true`) round trip (warm sandbox)', api)
  await sbx.kill()

  const shared = await Promise.all([0, 1, 2, 3].map(() => Sandbox.create('minimal', opts)))
  const latencies = []
  const t0 = performance.now()
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    const mine = await Sandbox.connect(shared[c % shared.length].sandboxId, opts)
    for (let i = 0; i < perClient; ++i) {
      const s = performance.now()
      await mine.commands.run('true')
      latencies.push(performance.now() - s)
    }
  }))
  const elapsed = (performance.now() - t0) / 1000
  const conc = stats(latencies)
  row(`API: ${clients} clients x ${perClient} commands on 4 sandboxes`, conc)
  await Promise.all(shared.map((s) => s.kill()))

  // Pause and resume one sandbox, and fork it, a few times.
  const cycled = await Sandbox.create('minimal', opts)
  const pauses = []
  const resumes = []
  const forks = []
  for (let i = 0; i < lifecycle; ++i) {
    let t = performance.now()
    await cycled.pause()
    pauses.push(performance.now() - t)
    t = performance.now()
    const resumed = await Sandbox.connect(cycled.sandboxId, opts)
    await resumed.commands.run('true')
    resumes.push(performance.now() - t)
    t = performance.now()
    const [copy] = await cycled.fork({ count: 1 })
    await copy.commands.run('true')
    forks.push(performance.now() - t)
    await copy.kill()
  }
  await cycled.kill()
  const pause_ = stats(pauses)
  const resume_ = stats(resumes)
  const fork_ = stats(forks)
  row('API: pause (snapshot to disk, VM stopped)', pause_)
  row('API: connect to a paused sandbox -> first command done', resume_)
  row('API: fork(1) -> first command done in the copy', fork_)

  // The C++ API's round trip, measured by vessel_bench in this same run.
  const benchBin = process.env.VESSEL_BENCH_BIN
  let cpp
  if (benchBin) {
    const out = execFileSync(benchBin, ['--iterations', '1', '--exec-iterations', String(execs)],
                             { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    const line = out.split('\n').find((l) => l.includes('exec `true` round trip'))
    const cells = line?.trim().split(/\s+/).slice(-6)
    if (cells) {
      const num = (v) => (v === '-' ? undefined : Number(v))
      cpp = { n: Number(cells[0]), min: num(cells[1]), median: num(cells[2]), p90: num(cells[3]),
              p99: num(cells[4]), max: num(cells[5]) }
      row('C++ API: Sandbox::Execute(`true`) round trip (warm VM)', cpp)
    }
  }
  console.log(`${'metric (ms)'.padEnd(62)}${'n'.padStart(5)}${['min', 'median', 'p90', 'p99', 'max']
    .map((h) => h.padStart(11)).join('')}`)
  for (const r of rows) console.log(r)
  if (cpp) {
    console.log(`  command round trip, API / C++ API: ${(api.median / cpp.median).toFixed(2)}x median`)
  }
  console.log(`  ${clients} concurrent clients: ${(latencies.length / elapsed).toFixed(1)} commands/s, ` +
              `p99 ${cell(conc.p99)} ms, median ${cell(conc.median)} ms`)
  console.log(`  create -> first command, cold / warm pool: ${(cold_.median / warm_.median).toFixed(1)}x median`)
  console.log(`  resume -> first command / cold create -> first command: ` +
              `${(resume_.median / cold_.median).toFixed(2)}x median; fork: ` +
              `${(fork_.median / cold_.median).toFixed(2)}x`)
} finally {
  await server.stop()
}

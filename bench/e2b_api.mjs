// `vessel serve` through the e2b SDK, against the C++ API, in one run (bench/run api):
//   create -> first command done, cold and from a warm pool (vessel serve --pool);
//   a command's round trip through the API, and through the C++ API (vessel_bench);
//   32 concurrent SDK clients running commands on 4 sandboxes: throughput and p99;
//   pause, resume (connect) -> first command, and fork -> first command in the copy;
//   MCP's run_code, over stdio (`vessel mcp`) and over HTTP (/mcp), in a fresh sandbox and
//   in a warm one, spoken as raw JSON-RPC: the server's share, without a client library's.
// Usage: bench/run api [--cold N] [--exec N] [--clients N] [--per-client N] [--lifecycle N]
import { execFileSync, spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
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

// An MCP session over `vessel mcp`'s stdin and stdout.
async function mcpStdio(env) {
  const child = spawn(process.env.VESSEL_CLI, ['mcp'], { env, stdio: ['pipe', 'pipe', 'inherit'] })
  const waiting = new Map()
  createInterface({ input: child.stdout }).on('line', (line) => {
    const message = JSON.parse(line)
    waiting.get(message.id)?.(message)
    waiting.delete(message.id)
  })
  let next = 1
  const call = (method, params) => new Promise((resolve) => {
    const id = next++
    waiting.set(id, resolve)
    child.stdin.write(JSON.stringify({ jsonrpc: '2.0', id, method, params }) + '\n')
  })
  await call('initialize', { protocolVersion: '2025-11-25', capabilities: {},
                             clientInfo: { name: 'bench', version: '1' } })
  child.stdin.write(JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }) + '\n')
  return { call, close: () => new Promise((resolve) => { child.on('exit', resolve); child.stdin.end() }) }
}

// An MCP session at /mcp, each tools/call answered as events, as SDK clients ask.
async function mcpHttp(url, key) {
  let session
  let next = 1
  const post = async (body) => {
    const headers = { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json',
                      Accept: 'application/json, text/event-stream' }
    if (session) headers['Mcp-Session-Id'] = session
    const response = await fetch(`${url}/mcp`, { method: 'POST', headers, body: JSON.stringify(body) })
    session ??= response.headers.get('mcp-session-id')
    const text = await response.text()
    if (!response.headers.get('content-type')?.startsWith('text/event-stream')) {
      return text ? JSON.parse(text) : undefined
    }
    const events = text.split('\n').filter((l) => l.startsWith('data: ')).map((l) => JSON.parse(l.slice(6)))
    return events.find((e) => e.id === body.id)
  }
  const call = (method, params) => post({ jsonrpc: '2.0', id: next++, method, params })
  await call('initialize', { protocolVersion: '2025-11-25', capabilities: {},
                             clientInfo: { name: 'bench', version: '1' } })
  await post({ jsonrpc: '2.0', method: 'notifications/initialized' })
  return {
    call,
    close: () => fetch(`${url}/mcp`, { method: 'DELETE',
                                       headers: { Authorization: `Bearer ${key}`, 'Mcp-Session-Id': session } }),
  }
}

// run_code's answer, or a thrown error when the call failed.
async function runCode(mcp, args) {
  const answer = await mcp.call('tools/call', { name: 'run_code', arguments: { language: 'shell', code: 'true', ...args } })
  const result = answer?.result
  if (!result || result.isError || result.structuredContent.exit_code !== 0) {
    throw new Error(`run_code failed: ${JSON.stringify(answer)}`)
  }
  return result.structuredContent
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

  // MCP: run_code in a fresh sandbox (made and removed by the call), and in a warm one.
  const mcpRows = {}
  const transports = {
    stdio: () => mcpStdio({ ...process.env, VESSEL_CONFIG_DIR: server.configDir }),
    HTTP: () => mcpHttp(server.url, server.key),
  }
  for (const [name, open] of Object.entries(transports)) {
    const mcp = await open()
    const fresh = []
    for (let i = 0; i < cold; ++i) {
      const t = performance.now()
      await runCode(mcp, { template: 'minimal' })
      fresh.push(performance.now() - t)
    }
    const warmBox = await Sandbox.create('minimal', opts)
    for (let i = 0; i < 5; ++i) await runCode(mcp, { sandbox_id: warmBox.sandboxId })
    const warm = []
    for (let i = 0; i < execs; ++i) {
      const t = performance.now()
      await runCode(mcp, { sandbox_id: warmBox.sandboxId })
      warm.push(performance.now() - t)
    }
    await warmBox.kill()
    await mcp.close()
    mcpRows[name] = { fresh: stats(fresh), warm: stats(warm) }
    row(`MCP ${name}: run_code (shell \`true\`, fresh sandbox) -> answer`, mcpRows[name].fresh)
    row(`MCP ${name}: run_code (shell \`true\`) round trip (warm sandbox)`, mcpRows[name].warm)
  }

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
  for (const [name, r] of Object.entries(mcpRows)) {
    console.log(`  MCP ${name} run_code / API commands.run, warm sandbox: ` +
                `${(r.warm.median / api.median).toFixed(2)}x median; fresh sandbox / API cold ` +
                `create -> first command: ${(r.fresh.median / cold_.median).toFixed(2)}x`)
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

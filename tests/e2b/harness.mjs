// Starts `vessel serve` for a test file: a fresh config directory (so a fresh API key) and
// a free loopback port; the SDK options that point the e2b SDK at it.
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export async function startServer({ configDir, args = [] } = {}) {
  const dir = configDir ?? mkdtempSync(join(tmpdir(), 'e2b-config-'))
  const child = spawn(process.env.VESSEL_CLI, ['serve', '--listen', '127.0.0.1:0', ...args], {
    env: { ...process.env, VESSEL_CONFIG_DIR: dir, VESSEL_STATE_DIR: join(dir, 'state') },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let log = ''
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`vessel serve did not start:\n${log}`)), 20_000)
    child.stderr.on('data', (data) => {
      log += data
      const found = /E2B API on (http:\/\/\S+)/.exec(log)
      if (found) {
        clearTimeout(timer)
        resolve(found[1])
      }
    })
    child.on('exit', (code) => reject(new Error(`vessel serve exited with ${code}:\n${log}`)))
  })
  const key = readFileSync(join(dir, 'api-key'), 'utf8').trim()
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  return {
    url,
    key,
    configDir: dir,
    pid: child.pid,
    opts: { apiKey: key, apiUrl: url, sandboxUrl: url, requestTimeoutMs: 120_000 },
    log: () => log,
    // SIGTERM, as an operator stops it; resolves with how it exited.
    async stop({ keepConfig = false } = {}) {
      child.kill('SIGTERM')
      const how = await exited
      if (!keepConfig) rmSync(dir, { recursive: true, force: true })
      return how
    },
  }
}

// What the MCP tests share: `vessel mcp` spawned by the SDK's stdio transport, or by hand
// for raw lines; a client for `vessel serve`'s /mcp; tool calls that must succeed; and
// the sandboxes this user has, as `vessel ls` shows them.
import { execFileSync, spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import assert from 'node:assert/strict'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'

export const vessel = process.env.VESSEL_CLI

// A fresh config and state directory (as tests/e2b/harness.mjs gives `vessel serve`), so
// snapshots and keys of one test file are not another's.
export function freshConfigDir() {
  return mkdtempSync(join(tmpdir(), 'mcp-config-'))
}

export function vesselEnv(dir) {
  return { ...process.env, VESSEL_CONFIG_DIR: dir, VESSEL_STATE_DIR: join(dir, 'state') }
}

export function removeConfigDir(dir) {
  rmSync(dir, { recursive: true, force: true })
}

function newClient() {
  return new Client({ name: 'vessel-mcp-tests', version: '1.0.0' })
}

// The SDK's client over stdio, on a `vessel mcp` it spawns, with the tools listed (so
// that it checks their answers). close() ends its stdin, as a client that is done does,
// and waits for it to exit.
export async function connectStdio(dir) {
  const transport = new StdioClientTransport({
    command: vessel,
    args: ['mcp'],
    env: vesselEnv(dir),
    stderr: 'pipe',
  })
  let log = ''
  transport.stderr.on('data', (data) => (log += data))
  const client = newClient()
  await client.connect(transport)
  await client.listTools()
  return { client, transport, log: () => log, close: () => client.close() }
}

// The SDK's client over streamable HTTP, with the server's API key as a bearer token and
// the tools listed.
export async function connectHttp(server) {
  const transport = new StreamableHTTPClientTransport(new URL(`${server.url}/mcp`), {
    requestInit: { headers: { Authorization: `Bearer ${server.key}` } },
  })
  const client = newClient()
  await client.connect(transport)
  await client.listTools()
  return { client, transport, close: () => client.close() }
}

// Calls a tool that must succeed: the SDK has checked structuredContent against the
// tool's output schema (it does once listTools has run on the client); returns it.
export async function callOk(client, name, args = {}, options = {}) {
  const result = await client.callTool({ name, arguments: args }, undefined, options)
  assert.equal(result.isError, false, `${name}: ${JSON.stringify(result.content)}`)
  assert.ok(result.structuredContent, `${name} answered without structuredContent`)
  // The same JSON as text, for clients that read only text.
  assert.deepEqual(JSON.parse(result.content[0].text), result.structuredContent)
  return result.structuredContent
}

// Calls a tool that must fail as a tool: returns the one line that says why.
export async function callFails(client, name, args = {}) {
  const result = await client.callTool({ name, arguments: args })
  assert.equal(result.isError, true, `${name} did not fail: ${JSON.stringify(result)}`)
  assert.equal(result.structuredContent, undefined)
  assert.equal(result.content.length, 1)
  assert.equal(result.content[0].type, 'text')
  return result.content[0].text
}

// The ids of this user's sandboxes, by `vessel ls --json` (every session's and the CLI's).
export function listedSandboxIds(dir) {
  const out = execFileSync(vessel, ['ls', '--json'], { env: vesselEnv(dir), encoding: 'utf8' })
  return JSON.parse(out).map((s) => s.id)
}

export function removeSandboxes(dir, ids) {
  if (ids.length > 0) execFileSync(vessel, ['rm', ...ids], { env: vesselEnv(dir), stdio: 'ignore' })
}

// Waits until check() is true, looking every 200 ms for at most `ms`; false if it never was.
export async function eventually(check, ms = 10_000) {
  for (const end = Date.now() + ms; ;) {
    if (await check()) return true
    if (Date.now() > end) return false
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
}

// `vessel mcp` spoken to line by line, for what the SDK will not send: other protocol
// versions, lines that are not JSON, a line over the size limit.
export class RawStdio {
  constructor(dir) {
    this.child = spawn(vessel, ['mcp'], { env: vesselEnv(dir), stdio: ['pipe', 'pipe', 'pipe'] })
    this.messages = []
    this.waiters = []
    this.log = ''
    this.exited = new Promise((resolve) => this.child.on('exit', (code) => resolve(code)))
    this.child.stderr.on('data', (data) => (this.log += data))
    let pending = ''
    this.child.stdout.on('data', (data) => {
      pending += data
      for (let end; (end = pending.indexOf('\n')) >= 0;) {
        this.messages.push(JSON.parse(pending.slice(0, end)))
        pending = pending.slice(end + 1)
      }
      for (const wake of this.waiters.splice(0)) wake()
    })
  }

  // Writes bytes (a Buffer or a string) as they are; resolves once the pipe took them.
  async write(bytes) {
    if (!this.child.stdin.write(bytes)) {
      await new Promise((resolve) => this.child.stdin.once('drain', resolve))
    }
  }

  send(message) {
    return this.write(JSON.stringify(message) + '\n')
  }

  // The first message (in order of arrival, taken once) that `matches`; fails after `ms`.
  async next(matches, ms = 30_000) {
    const end = Date.now() + ms
    for (;;) {
      const at = this.messages.findIndex(matches)
      if (at >= 0) return this.messages.splice(at, 1)[0]
      const left = end - Date.now()
      assert.ok(left > 0, `no matching message in ${ms} ms; got ${JSON.stringify(this.messages)}`)
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left)
        this.waiters.push(() => {
          clearTimeout(timer)
          resolve()
        })
      })
    }
  }

  async request(id, method, params = {}) {
    await this.send({ jsonrpc: '2.0', id, method, params })
    return this.next((m) => m.id === id)
  }

  // Ends stdin, as a client that is done does; resolves with the exit code.
  close() {
    this.child.stdin.end()
    return this.exited
  }
}

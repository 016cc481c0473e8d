// E2B's control plane through the e2b SDK, unchanged: the calls an application makes to
// create, find, time out and kill sandboxes, and the errors it expects.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { AuthenticationError, NotFoundError, Sandbox, SandboxError, SandboxNotFoundError } from 'e2b'
import { startServer } from './harness.mjs'

let server
before(async () => {
  server = await startServer()
})
after(async () => {
  await server.stop()
})

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function cliList() {
  return JSON.parse(execFileSync(process.env.VESSEL_CLI, ['ls', '--json'], { encoding: 'utf8' }))
}

test('create, inspect, list and kill a sandbox', async () => {
  const started = Date.now()
  const sbx = await Sandbox.create('minimal', {
    ...server.opts,
    timeoutMs: 60_000,
    metadata: { suite: 'control-plane', run: String(started) },
    envs: { A: '1' },
  })
  try {
    assert.match(sbx.sandboxId, /^[0-9a-f]+$/)
    const info = await sbx.getInfo()
    assert.equal(info.sandboxId, sbx.sandboxId)
    assert.equal(info.templateId, 'minimal')
    assert.equal(info.state, 'running')
    assert.deepEqual(info.metadata, { suite: 'control-plane', run: String(started) })
    const ttl = info.endAt.getTime() - Date.now()
    assert.ok(ttl > 40_000 && ttl <= 61_000, `the sandbox ends in ${ttl} ms`)
    assert.ok(info.cpuCount >= 1 && info.memoryMB >= 128)
    // One registry: the CLI lists what the API made.
    assert.ok(cliList().some((s) => s.id === sbx.sandboxId && s.state === 'running'))
  } finally {
    assert.equal(await sbx.kill(), true)
  }
  await assert.rejects(Sandbox.getInfo(sbx.sandboxId, server.opts), SandboxNotFoundError)
  assert.equal(await Sandbox.kill(sbx.sandboxId, server.opts), false)
  assert.ok(!cliList().some((s) => s.id === sbx.sandboxId))
})

test('list finds sandboxes by metadata', async () => {
  const tag = `t${Date.now()}`
  const a = await Sandbox.create('minimal', { ...server.opts, metadata: { tag, who: 'a b&c' } })
  const b = await Sandbox.create('minimal', { ...server.opts, metadata: { tag, who: 'b' } })
  try {
    const ids = async (query) => {
      const found = []
      const paginator = Sandbox.list({ ...server.opts, query, limit: 1 })
      while (paginator.hasNext) for (const s of await paginator.nextItems()) found.push(s.sandboxId)
      return found.sort()
    }
    assert.deepEqual(await ids({ metadata: { tag } }), [a.sandboxId, b.sandboxId].sort())
    assert.deepEqual(await ids({ metadata: { tag, who: 'a b&c' } }), [a.sandboxId])
    assert.deepEqual(await ids({ metadata: { tag: 'nobody' } }), [])
    assert.deepEqual(await ids({ metadata: { tag }, state: ['running'] }), [a.sandboxId, b.sandboxId].sort())
  } finally {
    await a.kill()
    await b.kill()
  }
})

test('a sandbox is killed when its timeout passes, and setTimeout moves it', async () => {
  const short = await Sandbox.create('minimal', { ...server.opts, timeoutMs: 3_000 })
  const kept = await Sandbox.create('minimal', { ...server.opts, timeoutMs: 3_000 })
  await kept.setTimeout(120_000)
  await sleep(6_000)
  await assert.rejects(short.getInfo(), SandboxNotFoundError)
  const info = await kept.getInfo()
  assert.equal(info.state, 'running')
  assert.ok(info.endAt.getTime() - Date.now() > 100_000)
  await kept.kill()
})

test('a wrong API key is refused with the SDK authentication error', async () => {
  const wrong = { ...server.opts, apiKey: 'e2b_' + '0'.repeat(40) }
  await assert.rejects(Sandbox.create('minimal', wrong), AuthenticationError)
  await assert.rejects(Sandbox.list(wrong).nextItems(), AuthenticationError)
  await assert.rejects(Sandbox.kill('abc', wrong), AuthenticationError)
})

test('an unknown template and a bad request are the SDK errors for them', async () => {
  await assert.rejects(Sandbox.create('no-such-template', server.opts), (e) => {
    assert.ok(e instanceof NotFoundError || (e instanceof SandboxError && e.statusCode === 404), String(e))
    assert.match(String(e), /no-such-template/)
    return true
  })
  await assert.rejects(Sandbox.create('minimal', { ...server.opts, timeoutMs: 90_000_000 }), (e) => {
    assert.ok(e instanceof SandboxError, String(e))
    assert.match(String(e), /400.*timeout/)
    return true
  })
})

test('sandboxes outlive a restart of the server', async () => {
  const sbx = await Sandbox.create('minimal', { ...server.opts, metadata: { restart: 'yes' } })
  const configDir = server.configDir
  const how = await server.stop({ keepConfig: true })
  assert.equal(how.code, 0, 'SIGTERM stops the server cleanly')
  server = await startServer({ configDir })
  const info = await Sandbox.getInfo(sbx.sandboxId, server.opts)
  assert.equal(info.state, 'running')
  assert.deepEqual(info.metadata, { restart: 'yes' })
  assert.equal(await Sandbox.kill(sbx.sandboxId, server.opts), true)
})

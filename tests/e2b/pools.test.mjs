// `vessel serve --pool`: creates take warm sandboxes, the pool refills, pooled sandboxes
// are nobody's until taken, and a restarted server adopts them.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { Sandbox } from 'e2b'
import { startServer } from './harness.mjs'

let server
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
// The sandboxes a pool booted (named .pool-<template>-...), as `vessel ls` shows them,
// taken or not.
const cliIds = () =>
  JSON.parse(execFileSync(process.env.VESSEL_CLI, ['ls', '--json'], { encoding: 'utf8' }))
    .filter((s) => s.state === 'running' && s.name.startsWith('.pool-minimal-')).map((s) => s.id)

// The warm ones: booted by a pool, not yet taken (the API lists the taken ones).
async function warmIds() {
  const taken = new Set((await Sandbox.list(server.opts).nextItems()).map((s) => s.sandboxId))
  return cliIds().filter((id) => !taken.has(id))
}

async function waitForWarm(count) {
  for (let i = 0; i < 300 && (await warmIds()).length < count; ++i) await sleep(100)
  return warmIds()
}

before(async () => {
  server = await startServer({ args: ['--pool', 'minimal=2'] })
})
after(async () => {
  await server.stop()
  // The pool's sandboxes outlive a server; a server without pools stops them.
  const cleaner = await startServer()
  await cleaner.stop()
  assert.deepEqual(cliIds(), [])
})

test('a create takes a warm sandbox and the pool refills', async () => {
  const warm = await waitForWarm(2)
  assert.equal(warm.length, 2)
  // Pooled sandboxes are nobody's yet: the API lists none.
  assert.equal((await Sandbox.list(server.opts).nextItems()).length, 0)
  const t0 = performance.now()
  const sbx = await Sandbox.create('minimal', { ...server.opts, envs: { A: 'pooled' } })
  const took = performance.now() - t0
  try {
    assert.ok(warm.includes(sbx.sandboxId), 'the sandbox came from the pool')
    assert.equal((await sbx.commands.run('echo $A')).stdout, 'pooled\n')
    console.log(`# create from the pool: ${took.toFixed(1)} ms`)
    assert.deepEqual((await Sandbox.list(server.opts).nextItems()).map((s) => s.sandboxId),
                     [sbx.sandboxId])
    assert.equal((await waitForWarm(2)).length, 2, 'the pool boots a replacement')
    // A template without a pool boots.
    const other = await Sandbox.create('base', server.opts)
    assert.ok(!cliIds().includes(other.sandboxId))
    await other.kill()
  } finally {
    await sbx.kill()
  }
})

test('a restarted server adopts the warm sandboxes', async () => {
  const warm = await waitForWarm(2)
  const configDir = server.configDir
  await server.stop({ keepConfig: true })
  server = await startServer({ configDir, args: ['--pool', 'minimal=2'] })
  const sbx = await Sandbox.create('minimal', server.opts)
  try {
    assert.ok(warm.includes(sbx.sandboxId), 'taken from the adopted pool')
  } finally {
    await sbx.kill()
  }
})

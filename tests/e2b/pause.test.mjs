// The SDK's pause and resume (Sandbox.connect): a paused sandbox is saved to disk and its
// VM freed; resuming it brings back its files and its daemons under the same id and token.
// And autoPause: a sandbox created with onTimeout 'pause' is paused at its end, not killed.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { Sandbox, SandboxNotFoundError } from 'e2b'
import { startServer } from './harness.mjs'

let server
before(async () => {
  server = await startServer()
})
after(async () => {
  await server.stop()
})

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function cliIds() {
  const listed = JSON.parse(execFileSync(process.env.VESSEL_CLI, ['ls', '--json'], { encoding: 'utf8' }))
  return listed.map((s) => s.id)
}

async function readCount(sbx) {
  return Number(await sbx.files.read('/tmp/count'))
}

test('pause frees the VM; connect resumes it with its files and daemons', async () => {
  const sbx = await Sandbox.create('minimal', { ...server.opts, envs: { FROM_CREATE: 'k' } })
  try {
    await sbx.files.write('/tmp/kept.txt', 'from before the pause')
    await sbx.commands.run(
      "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done' " +
        '</dev/null >/dev/null 2>&1 &',
    )
    // Paused only once the daemon has counted: a pause that came before its first write
    // would find no /tmp/count to carry over.
    await sbx.commands.run('while [ ! -s /tmp/count ]; do sleep 0.05; done', { timeoutMs: 10_000 })
    assert.equal(await sbx.pause(), true)
    const info = await Sandbox.getInfo(sbx.sandboxId, server.opts)
    assert.equal(info.state, 'paused')
    assert.ok(!cliIds().includes(sbx.sandboxId), 'a paused sandbox has no VM')
    const paused = await Sandbox.list({ ...server.opts, query: { state: ['paused'] } }).nextItems()
    assert.deepEqual(
      paused.map((s) => s.sandboxId),
      [sbx.sandboxId],
    )
    await assert.rejects(sbx.commands.run('true'), /paused/)
    assert.equal(await sbx.pause(), false, 'a second pause finds it paused')

    const resumed = await Sandbox.connect(sbx.sandboxId, server.opts)
    assert.equal(resumed.sandboxId, sbx.sandboxId)
    assert.equal((await Sandbox.getInfo(sbx.sandboxId, server.opts)).state, 'running')
    assert.ok(cliIds().includes(sbx.sandboxId))
    assert.equal(await resumed.files.read('/tmp/kept.txt'), 'from before the pause')
    const first = await readCount(resumed)
    await sleep(1500)
    assert.ok((await readCount(resumed)) > first, 'the daemon runs on after the resume')
    assert.equal((await resumed.commands.run('echo "$FROM_CREATE"')).stdout, 'k\n')
    // The handle from before the pause works too: same id, same access token.
    assert.equal((await sbx.commands.run('echo again')).stdout, 'again\n')
  } finally {
    await sbx.kill()
  }
})

test('a paused sandbox can be killed, and is then gone', async () => {
  const sbx = await Sandbox.create('minimal', server.opts)
  assert.equal(await sbx.pause(), true)
  assert.equal(await Sandbox.kill(sbx.sandboxId, server.opts), true)
  await assert.rejects(Sandbox.getInfo(sbx.sandboxId, server.opts), SandboxNotFoundError)
  await assert.rejects(Sandbox.connect(sbx.sandboxId, server.opts), SandboxNotFoundError)
})

test('autoPause: at its end the sandbox is paused, and connect brings it back', async () => {
  const sbx = await Sandbox.create('minimal', {
    ...server.opts,
    timeoutMs: 2_000,
    lifecycle: { onTimeout: 'pause' },
  })
  try {
    await sbx.files.write('/tmp/kept.txt', 'kept')
    let state = 'running'
    for (let waited = 0; state !== 'paused' && waited < 60_000; waited += 500) {
      await sleep(500)
      state = (await Sandbox.getInfo(sbx.sandboxId, server.opts)).state
    }
    assert.equal(state, 'paused')
    const resumed = await Sandbox.connect(sbx.sandboxId, { ...server.opts, timeoutMs: 60_000 })
    assert.equal(await resumed.files.read('/tmp/kept.txt'), 'kept')
  } finally {
    await sbx.kill()
  }
})

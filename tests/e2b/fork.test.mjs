// The SDK's fork: copies of a running sandbox as it is now, its files and its daemons,
// each independent of the parent and of each other.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox, SandboxNotFoundError } from 'e2b'
import { startServer } from './harness.mjs'

let server
let parent
before(async () => {
  server = await startServer()
  parent = await Sandbox.create('minimal', { ...server.opts, envs: { FROM_CREATE: 'p' } })
})
after(async () => {
  await parent?.kill()
  await server.stop()
})

test('fork gives copies with the parent files and daemons, independent of each other', async () => {
  await parent.files.write('/tmp/state.txt', 'before the fork')
  // A daemon (its own session), as a server a user starts: it runs on in every copy. The
  // commands that stream to the parent's clients do not: they end in the copies.
  await parent.commands.run(
    "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done' " +
      '</dev/null >/dev/null 2>&1 &',
  )
  const streaming = await parent.commands.run('sleep 600', { background: true })
  const forks = await parent.fork({ count: 2, timeoutMs: 120_000 })
  assert.equal(forks.length, 2)
  const children = forks.map((f) => {
    assert.ok(f instanceof Sandbox, String(f))
    return f
  })
  try {
    const ids = new Set([parent.sandboxId, ...children.map((c) => c.sandboxId)])
    assert.equal(ids.size, 3)
    for (const [i, child] of children.entries()) {
      assert.equal(await child.files.read('/tmp/state.txt'), 'before the fork')
      // The parent's loop runs on in the copy: its counter moves there too.
      const first = Number(await child.files.read('/tmp/count'))
      await new Promise((resolve) => setTimeout(resolve, 1500))
      assert.ok(Number(await child.files.read('/tmp/count')) > first)
      const env = await child.commands.run('echo "$FROM_CREATE"; pgrep -f "sleep 600" || echo none')
      assert.equal(env.stdout, 'p\nnone\n')
      await child.files.write('/tmp/state.txt', `child ${i}`)
    }
    assert.equal(await children[0].files.read('/tmp/state.txt'), 'child 0')
    assert.equal(await children[1].files.read('/tmp/state.txt'), 'child 1')
    assert.equal(await parent.files.read('/tmp/state.txt'), 'before the fork')
    const listed = (await Sandbox.list(server.opts).nextItems()).map((s) => s.sandboxId)
    for (const id of ids) assert.ok(listed.includes(id), `${id} in ${listed}`)
  } finally {
    for (const child of children) await child.kill()
    await streaming.kill()
  }
  // A child killed is gone; the parent goes on.
  assert.equal(await Sandbox.kill(children[0].sandboxId, server.opts), false)
  assert.equal((await parent.commands.run('echo alive')).stdout, 'alive\n')
})

test('a fork of a sandbox that does not exist is SandboxNotFoundError', async () => {
  await assert.rejects(Sandbox.fork('0123456789ab', { ...server.opts, count: 1 }), SandboxNotFoundError)
})

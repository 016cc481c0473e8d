// The SDK's snapshots: a running sandbox saved as a template, by id and by name; new
// sandboxes from it start as it was; listed, and deleted.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { Sandbox } from 'e2b'
import { startServer } from './harness.mjs'

let server
before(async () => {
  server = await startServer()
})
after(async () => {
  await server.stop()
})

test('a snapshot is a template: sandboxes made from it start where it was', async () => {
  const source = await Sandbox.create('minimal', server.opts)
  const made = []
  try {
    await source.files.write('/tmp/prepared.txt', 'dependencies installed')
    const snapshot = await source.createSnapshot({ name: 'prepared' })
    assert.match(snapshot.snapshotId, /^snapshot-[0-9a-f]+$/)
    assert.deepEqual(snapshot.names, ['prepared'])
    // The source runs on, and what it does next is not in the snapshot.
    await source.files.write('/tmp/prepared.txt', 'changed after')

    for (const template of [snapshot.snapshotId, 'prepared']) {
      const sbx = await Sandbox.create(template, server.opts)
      made.push(sbx)
      assert.equal(await sbx.files.read('/tmp/prepared.txt'), 'dependencies installed')
      assert.equal((await sbx.getInfo()).templateId, snapshot.snapshotId)
    }
    const listed = await Sandbox.listSnapshots({ ...server.opts, sandboxId: source.sandboxId }).nextItems()
    assert.deepEqual(
      listed.map((s) => s.snapshotId),
      [snapshot.snapshotId],
    )
    await assert.rejects(source.createSnapshot({ name: 'prepared' }), /exists/)

    assert.equal(await Sandbox.deleteSnapshot(snapshot.snapshotId, server.opts), true)
    assert.equal(await Sandbox.deleteSnapshot(snapshot.snapshotId, server.opts), false)
    await assert.rejects(Sandbox.create('prepared', server.opts), /not found/)
    // Sandboxes made from it run on without it.
    assert.equal((await made[0].commands.run('cat /tmp/prepared.txt')).stdout, 'dependencies installed')
  } finally {
    for (const sbx of made) await sbx.kill()
    await source.kill()
  }
})

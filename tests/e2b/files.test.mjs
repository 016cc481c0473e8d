// The SDK's `files` through the data plane: text and binary round trips, listing,
// exists, makeDir, rename, remove, a missing file, and 16 MiB each way with a checksum.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { FileNotFoundError, Sandbox } from 'e2b'
import { startServer } from './harness.mjs'

let server
let sbx
before(async () => {
  server = await startServer()
  sbx = await Sandbox.create('minimal', server.opts)
})
after(async () => {
  await sbx?.kill()
  await server.stop()
})

test('text and binary files round trip, into new directories', async () => {
  const info = await sbx.files.write('/tmp/a/b/x.txt', 'hi')
  assert.equal(info.path, '/tmp/a/b/x.txt')
  assert.equal(info.name, 'x.txt')
  assert.equal(await sbx.files.read('/tmp/a/b/x.txt'), 'hi')
  const binary = randomBytes(70_000)
  await sbx.files.write('/tmp/bin', binary)
  const back = await sbx.files.read('/tmp/bin', { format: 'bytes' })
  assert.ok(Buffer.from(back).equals(binary))
  // The command side sees the same file.
  assert.equal((await sbx.commands.run('cat /tmp/a/b/x.txt')).stdout, 'hi')
})

test('list, exists, getInfo, makeDir, rename and remove', async () => {
  assert.equal(await sbx.files.makeDir('/tmp/d/e'), true)
  assert.equal(await sbx.files.makeDir('/tmp/d/e'), false)
  await sbx.files.write('/tmp/d/one', '1')
  await sbx.files.write('/tmp/d/e/two', '22')
  const top = (await sbx.files.list('/tmp/d')).map((e) => `${e.type}:${e.name}`).sort()
  assert.deepEqual(top, ['dir:e', 'file:one'])
  const deep = (await sbx.files.list('/tmp/d', { depth: 2 })).map((e) => e.path).sort()
  assert.deepEqual(deep, ['/tmp/d/e', '/tmp/d/e/two', '/tmp/d/one'])
  const info = await sbx.files.getInfo('/tmp/d/e/two')
  assert.equal(info.size, 2)
  assert.equal(info.type, 'file')
  assert.equal(await sbx.files.exists('/tmp/d/one'), true)
  assert.equal(await sbx.files.exists('/tmp/d/none'), false)
  const moved = await sbx.files.rename('/tmp/d/one', '/tmp/d/uno')
  assert.equal(moved.path, '/tmp/d/uno')
  assert.equal(await sbx.files.read('/tmp/d/uno'), '1')
  await sbx.files.remove('/tmp/d')
  assert.equal(await sbx.files.exists('/tmp/d'), false)
})

test('a missing file is the SDK FileNotFoundError', async () => {
  await assert.rejects(sbx.files.read('/no/such/file'), FileNotFoundError)
  await assert.rejects(sbx.files.list('/no/such/dir'), FileNotFoundError)
})

test('16 MiB up and down, checksums equal', async () => {
  const data = randomBytes(16 * 1024 * 1024)
  const sum = createHash('sha256').update(data).digest('hex')
  const started = Date.now()
  await sbx.files.write('/tmp/big', data)
  const inGuest = (await sbx.commands.run('sha256sum /tmp/big')).stdout.split(' ')[0]
  assert.equal(inGuest, sum)
  const back = await sbx.files.read('/tmp/big', { format: 'bytes' })
  assert.equal(back.length, data.length)
  assert.equal(createHash('sha256').update(back).digest('hex'), sum)
  console.log(`# 16 MiB up and down in ${Date.now() - started} ms`)
})

// The SDK's network options: `network.allowOut` is the sandbox's egress allowlist, and
// `updateNetwork` replaces it; whatever is not allowed is refused by the host with 403.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { Sandbox } from 'e2b'
import { startServer } from './harness.mjs'

let server
let origin
let port
before(async () => {
  server = await startServer()
  origin = http.createServer((request, response) => {
    response.end(`origin saw ${request.method} ${request.url}\n`)
  })
  await new Promise((resolve) => origin.listen(0, '127.0.0.1', resolve))
  port = origin.address().port
})
after(async () => {
  await server.stop()
  await new Promise((resolve) => origin.close(resolve))
})

// What the guest's wget gets for `path`, or the proxy's refusal, in one string.
async function fetchFrom(sandbox, path) {
  const r = await sandbox.commands.run(`wget -q -O - http://127.0.0.1:${port}${path} 2>&1; true`)
  return r.stdout
}

test('allowOut lets the sandbox reach those hosts and updateNetwork replaces it', async () => {
  const sandbox = await Sandbox.create('minimal', {
    ...server.opts,
    network: { allowOut: [`127.0.0.1:${port}`], denyOut: ['0.0.0.0/0'] },
  })
  try {
    assert.equal(await fetchFrom(sandbox, '/sdk'), 'origin saw GET /sdk\n')

    await sandbox.updateNetwork({ allowOut: [] })
    assert.match(await fetchFrom(sandbox, '/after-update'), /403/)

    await sandbox.updateNetwork({ allowOut: [`127.0.0.1:${port}`] })
    assert.equal(await fetchFrom(sandbox, '/again'), 'origin saw GET /again\n')
  } finally {
    await sandbox.kill()
  }
})

test('a network option Vessel cannot honour is refused before a sandbox starts', async () => {
  const before = (await Sandbox.list(server.opts).nextItems()).length
  await assert.rejects(
    Sandbox.create('minimal', { ...server.opts, network: { allowOut: ['10.0.0.0/8'] } }),
    /address ranges are not served/,
  )
  assert.equal((await Sandbox.list(server.opts).nextItems()).length, before)
})

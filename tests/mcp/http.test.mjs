// `vessel serve`'s MCP endpoint at /mcp: the SDK's streamable HTTP client with the API key
// as a bearer token lists the tools and runs them on a real sandbox, gets progress
// notifications during a long call, and ends its session with DELETE (its sandboxes go
// with it); then the HTTP contract by hand: 401 without the key, 400 without a session,
// 404 for an unknown one, 405 for GET, 202 for a notification, 413 for a body over
// 16 MiB, 403 for a foreign page, events for a tools/call that accepts them.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { startServer } from '../e2b/harness.mjs'
import { callOk, connectHttp, listedSandboxIds } from './harness.mjs'

const kMiB = 1024 * 1024

let server
let endpoint
let session
let sandbox
before(async () => {
  server = await startServer()
  endpoint = `${server.url}/mcp`
  session = await connectHttp(server)
})
after(async () => {
  await session?.close()
  await server?.stop()
})

test('the SDK over HTTP: the 15 tools, and a sandbox made and used', async () => {
  const { tools } = await session.client.listTools()
  assert.equal(tools.length, 15)
  assert.ok(tools.every((t) => t.inputSchema && t.outputSchema && t.annotations))
  sandbox = (await callOk(session.client, 'sandbox_create', { template: 'minimal' })).sandbox_id
  const ran = await callOk(session.client, 'sandbox_exec', {
    sandbox_id: sandbox,
    command: 'echo over http; exit 2',
  })
  assert.equal(ran.stdout, 'over http\n')
  assert.equal(ran.exit_code, 2)
  const code = await callOk(session.client, 'run_code', {
    sandbox_id: sandbox,
    language: 'shell',
    code: 'echo $((2 + 3))',
  })
  assert.equal(code.stdout, '5\n')
})

test('a long call sends progress notifications before its result', async () => {
  const progress = []
  const ran = await callOk(
    session.client,
    'sandbox_exec',
    { sandbox_id: sandbox, command: 'for i in 1 2 3; do echo $i; sleep 1; done' },
    { onprogress: (p) => progress.push(p) },
  )
  assert.equal(ran.stdout, '1\n2\n3\n')
  assert.ok(progress.length >= 2, JSON.stringify(progress))
  for (let i = 1; i < progress.length; i++) assert.ok(progress[i].progress > progress[i - 1].progress)
  assert.match(progress.at(-1).message, /running for \d+ ms; \d+ bytes of output/)
})

test('DELETE from the SDK ends the session and removes its sandboxes', async () => {
  const id = session.transport.sessionId
  assert.match(id, /.+/)
  await session.transport.terminateSession()
  assert.ok(!listedSandboxIds(server.configDir).includes(sandbox), 'the sandbox outlived its session')
  const gone = await post({ jsonrpc: '2.0', id: 1, method: 'ping' }, { session: id })
  assert.equal(gone.status, 404)
})

// One request to the endpoint as a client that follows the specification sends it.
function post(message, { session, key = server.key, headers = {}, body } = {}) {
  return fetch(endpoint, {
    method: 'POST',
    headers: {
      'Content-Type': 'application/json',
      Accept: 'application/json, text/event-stream',
      ...(key && { Authorization: `Bearer ${key}` }),
      ...(session && { 'Mcp-Session-Id': session }),
      ...headers,
    },
    body: body ?? JSON.stringify(message),
  })
}

async function openSession() {
  const response = await post({
    jsonrpc: '2.0',
    id: 1,
    method: 'initialize',
    params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'fetch', version: '1' } },
  })
  assert.equal(response.status, 200)
  assert.equal((await response.json()).result.protocolVersion, '2025-06-18')
  const id = response.headers.get('mcp-session-id')
  assert.match(id, /^[\x21-\x7e]+$/) // visible ASCII, as the specification asks
  return id
}

const ping = (id = 7) => ({ jsonrpc: '2.0', id, method: 'ping' })

test('401 without the API key or with a wrong one', async () => {
  for (const key of [null, 'not-the-key']) {
    const response = await post(ping(), { key })
    assert.equal(response.status, 401, String(key))
    assert.equal(response.headers.get('www-authenticate'), 'Bearer')
  }
  const byHeader = await post(ping(), {
    key: null,
    headers: { 'X-API-Key': server.key },
    session: await openSession(),
  })
  assert.equal(byHeader.status, 200)
})

test('initialize gives a session; 400 without Mcp-Session-Id, 404 for an unknown one', async () => {
  const id = await openSession()
  const answered = await post(ping(), { session: id })
  assert.equal(answered.status, 200)
  assert.deepEqual(await answered.json(), { jsonrpc: '2.0', id: 7, result: {} })
  assert.equal((await post(ping())).status, 400)
  assert.equal((await post(ping(), { session: 'no-such-session' })).status, 404)
})

test('405 for GET: the server opens no stream of its own', async () => {
  const response = await fetch(endpoint, {
    headers: {
      Authorization: `Bearer ${server.key}`,
      Accept: 'text/event-stream',
      'Mcp-Session-Id': await openSession(),
    },
  })
  assert.equal(response.status, 405)
})

test('202 with no body for a notification', async () => {
  const response = await post(
    { jsonrpc: '2.0', method: 'notifications/initialized' },
    { session: await openSession() },
  )
  assert.equal(response.status, 202)
  assert.equal(await response.text(), '')
})

test('a tools/call is answered as events when the client accepts them, else as JSON', async () => {
  const id = await openSession()
  const call = (n) => ({
    jsonrpc: '2.0',
    id: n,
    method: 'tools/call',
    params: { name: 'sandbox_list', arguments: {} },
  })
  const events = await post(call(8), { session: id })
  assert.equal(events.status, 200)
  assert.match(events.headers.get('content-type'), /^text\/event-stream/)
  const data = (await events.text()).split('\n').filter((line) => line.startsWith('data: '))
  assert.equal(data.length, 1)
  const answer = JSON.parse(data[0].slice('data: '.length))
  assert.equal(answer.id, 8)
  assert.ok(Array.isArray(answer.result.structuredContent.sandboxes))

  const json = await post(call(9), { session: id, headers: { Accept: 'application/json' } })
  assert.match(json.headers.get('content-type'), /^application\/json/)
  assert.equal((await json.json()).id, 9)
})

// A body over the limit declared in Content-Length is refused before it is read.
function tooLargeBody() {
  return JSON.stringify({
    jsonrpc: '2.0',
    id: 10,
    method: 'tools/call',
    params: {
      name: 'files_write',
      arguments: { sandbox_id: 'x', path: '/f', content: 'a'.repeat(17 * kMiB) },
    },
  })
}

test('413 for a body over 16 MiB, to a client that asks before sending it', async () => {
  const id = await openSession()
  const body = tooLargeBody()
  const status = await new Promise((resolve, reject) => {
    const request = http.request(endpoint, {
      method: 'POST',
      headers: {
        Authorization: `Bearer ${server.key}`,
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(body),
        'Mcp-Session-Id': id,
        Expect: '100-continue',
      },
    })
    request.on('continue', () => request.end(body))
    request.on('response', (response) => resolve(response.statusCode))
    request.on('error', reject)
  })
  assert.equal(status, 413)
  assert.equal((await post(ping(), { session: id })).status, 200)
})

test(
  '413 for a body over 16 MiB, to fetch, which sends it whole',
  async () => {
    const id = await openSession()
    const body = tooLargeBody()
    // Three times: the answer must reach the client every time, not when the race allows.
    for (let i = 0; i < 3; i++) {
      const response = await post(undefined, { session: id, body }).catch((e) => e.cause ?? e)
      assert.equal(response.status, 413, `try ${i + 1}: ${response}`)
    }
    assert.equal((await post(ping(), { session: id })).status, 200)
  },
)

test('403 for a request from a page on another origin', async () => {
  const response = await post(ping(), {
    session: await openSession(),
    headers: { Origin: 'http://evil.example.com' },
  })
  assert.equal(response.status, 403)
})

test('DELETE ends a session: 204, then 404 for it', async () => {
  const id = await openSession()
  const end = () =>
    fetch(endpoint, {
      method: 'DELETE',
      headers: { Authorization: `Bearer ${server.key}`, 'Mcp-Session-Id': id },
    })
  assert.equal((await end()).status, 204)
  assert.equal((await post(ping(), { session: id })).status, 404)
  assert.equal((await end()).status, 404)
})

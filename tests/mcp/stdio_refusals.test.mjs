// What `vessel mcp` does with what it cannot take, over stdio: the protocol versions it
// answers, lines that are not JSON or are over 16 MiB (a parse error, and the session goes
// on), an unknown tool (a JSON-RPC error), arguments of the wrong type and sandboxes that
// do not exist (tool errors naming what was wrong); a call cancelled mid-run (its command
// is killed); and the end of a session, by the end of stdin or by SIGTERM (the sandboxes it
// made are removed, kept ones not).
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { McpError } from '@modelcontextprotocol/sdk/types.js'
import {
  RawStdio,
  callFails,
  callOk,
  connectStdio,
  eventually,
  freshConfigDir,
  listedSandboxIds,
  removeConfigDir,
  removeSandboxes,
} from './harness.mjs'

const kMiB = 1024 * 1024

let dir
let session
let client
let sandbox // a minimal one, for the cancellation test
const leftovers = [] // sandboxes that may outlive their session, removed at the end
before(async () => {
  dir = freshConfigDir()
  session = await connectStdio(dir)
  client = session.client
})
after(async () => {
  await session?.close()
  removeSandboxes(
    dir,
    leftovers.filter((id) => listedSandboxIds(dir).includes(id)),
  )
  removeConfigDir(dir)
})

const initialize = (version) => ({
  protocolVersion: version,
  capabilities: {},
  clientInfo: { name: 'raw', version: '1' },
})

test('initialize answers the version asked when it speaks it, else 2025-11-25', async () => {
  const raw = new RawStdio(dir)
  try {
    const asked = ['2025-11-25', '2025-06-18', '2025-03-26', '2024-11-05', '1999-01-01']
    const answered = []
    for (const [i, version] of asked.entries()) {
      answered.push((await raw.request(i + 1, 'initialize', initialize(version))).result.protocolVersion)
    }
    assert.deepEqual(answered, ['2025-11-25', '2025-06-18', '2025-03-26', '2025-11-25', '2025-11-25'])
  } finally {
    assert.equal(await raw.close(), 0)
  }
})

test('lines that are not JSON, or over 16 MiB, get a parse error and the session goes on', async () => {
  const raw = new RawStdio(dir)
  try {
    await raw.request(1, 'initialize', initialize('2025-11-25'))
    await raw.write('{"jsonrpc": "2.0", "id": 2, "method": \n')
    const notJson = await raw.next((m) => m.error)
    assert.equal(notJson.id, null)
    assert.equal(notJson.error.code, -32700)

    // A tools/call whose one argument is 100 MiB: read to its end and refused whole.
    const head = Buffer.from(
      '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"files_write",' +
        '"arguments":{"sandbox_id":"none","path":"/big","content":"',
    )
    await raw.write(head)
    const chunk = Buffer.alloc(4 * kMiB, 'a')
    for (let sent = 0; sent < 100 * kMiB; sent += chunk.length) await raw.write(chunk)
    await raw.write('"}}}\n')
    const tooLong = await raw.next((m) => m.error, 60_000)
    assert.equal(tooLong.id, null)
    assert.equal(tooLong.error.code, -32700)
    assert.match(tooLong.error.message, /16 MiB/)

    assert.deepEqual(await raw.request(4, 'ping'), { jsonrpc: '2.0', id: 4, result: {} })
    // A batch is not a JSON-RPC 2.0 message here; arguments that are not an object are a
    // tool error.
    await raw.write('[{"jsonrpc":"2.0","id":5,"method":"ping"}]\n')
    assert.equal((await raw.next((m) => m.error)).error.code, -32600)
    const notObject = await raw.request(6, 'tools/call', { name: 'sandbox_kill', arguments: 'all' })
    assert.equal(notObject.result.isError, true)
    assert.match(notObject.result.content[0].text, /arguments must be an object/)
    assert.equal((await raw.request(7, 'resources/list')).error.code, -32601)
    assert.deepEqual(raw.messages, [])
  } finally {
    assert.equal(await raw.close(), 0)
  }
})

test('an unknown tool is a JSON-RPC error (-32602) naming it', async () => {
  await assert.rejects(client.callTool({ name: 'sandbox_teleport', arguments: {} }), (e) => {
    assert.ok(e instanceof McpError, String(e))
    assert.equal(e.code, -32602)
    assert.match(e.message, /unknown tool 'sandbox_teleport'/)
    return true
  })
})

test('arguments of the wrong type are tool errors naming the field', async () => {
  const cases = [
    ['sandbox_exec', { sandbox_id: 'x', command: 42 }, /'command' must be a string/],
    ['sandbox_exec', { sandbox_id: 'x' }, /'command' is required/],
    [
      'sandbox_exec',
      { sandbox_id: 'x', command: 'true', timeout_seconds: '10' },
      /'timeout_seconds' must be an integer from 1 to 3600/,
    ],
    [
      'sandbox_exec',
      { sandbox_id: 'x', command: 'true', timeout_seconds: 1.5 },
      /'timeout_seconds' must be an integer/,
    ],
    ['sandbox_create', { env: { A: 1 } }, /'env' must map names/],
    ['sandbox_create', { keep: 'yes' }, /'keep' must be true or false/],
    ['sandbox_fork', { sandbox_id: 'x', count: 65 }, /'count' must be an integer from 1 to 64/],
    ['run_code', { code: 'print(1)', language: 'ruby' }, /'language' is python or shell/],
    ['files_write', { sandbox_id: 'x', path: '/f' }, /'content' is required/],
    ['files_read', { sandbox_id: 'x', path: '/f', max_bytes: 0 }, /'max_bytes' must be an integer/],
    [
      'sandbox_exec_signal',
      { exec_id: 'x', signal: 'SIGSTOP' },
      /'signal' is SIGINT, SIGTERM, SIGKILL or SIGHUP/,
    ],
    [
      'sandbox_exec_poll',
      { exec_id: 'x', wait_seconds: 61 },
      /'wait_seconds' must be an integer from 0 to 60/,
    ],
  ]
  for (const [name, args, message] of cases) {
    assert.match(await callFails(client, name, args), message, `${name} ${JSON.stringify(args)}`)
  }
})

test('a sandbox or command that does not exist is a tool error', async () => {
  for (const [name, args] of [
    ['sandbox_exec', { sandbox_id: 'nosuch', command: 'true' }],
    ['run_code', { sandbox_id: 'nosuch', code: 'print(1)' }],
    ['files_read', { sandbox_id: 'nosuch', path: '/etc/hostname' }],
    ['files_write', { sandbox_id: 'nosuch', path: '/f', content: '' }],
    ['files_list', { sandbox_id: 'nosuch', path: '/' }],
    ['files_remove', { sandbox_id: 'nosuch', path: '/f' }],
    ['sandbox_exec_start', { sandbox_id: 'nosuch', command: 'true' }],
    ['snapshot_create', { sandbox_id: 'nosuch' }],
    ['sandbox_fork', { sandbox_id: 'nosuch' }],
  ]) {
    assert.match(await callFails(client, name, args), /no sandbox 'nosuch'/, name)
  }
  assert.match(
    await callFails(client, 'sandbox_exec_poll', { exec_id: 'exec-999' }),
    /no started command 'exec-999'/,
  )
  assert.match(
    await callFails(client, 'sandbox_exec_write_stdin', { exec_id: 'exec-999', data: 'x' }),
    /no started command/,
  )
  assert.deepEqual(await callOk(client, 'sandbox_exec_signal', { exec_id: 'exec-999', signal: 'SIGINT' }), {
    sent: false,
  })
  assert.deepEqual(await callOk(client, 'sandbox_kill', { sandbox_id: 'nosuch' }), { killed: false })
})

// The names of the processes running in a sandbox (the shell that lists them shows as sh).
async function processNames(sandbox_id) {
  const listed = await callOk(client, 'sandbox_exec', {
    sandbox_id,
    command: 'cat /proc/[0-9]*/comm 2>/dev/null',
  })
  return listed.stdout.split('\n')
}

test('a call cancelled mid-run has its command killed, and the session goes on', async () => {
  sandbox = (await callOk(client, 'sandbox_create', { template: 'minimal' })).sandbox_id
  const cancel = new AbortController()
  const call = client.callTool(
    { name: 'sandbox_exec', arguments: { sandbox_id: sandbox, command: 'sleep 60' } },
    undefined,
    { signal: cancel.signal },
  )
  // Another call runs meanwhile: the first does not hold the session up.
  assert.ok(await eventually(async () => (await processNames(sandbox)).includes('sleep')), 'sleep never ran')
  cancel.abort(new Error('the user changed their mind'))
  await assert.rejects(call, /changed their mind/)
  assert.ok(
    await eventually(async () => !(await processNames(sandbox)).includes('sleep')),
    'the sleep outlived its call',
  )
  assert.deepEqual(await client.ping(), {})
})

test('closing a session removes the sandboxes it made, but those kept', async () => {
  const other = await connectStdio(dir)
  const made = (await callOk(other.client, 'sandbox_create', { template: 'minimal' })).sandbox_id
  const kept = (await callOk(other.client, 'sandbox_create', { template: 'minimal', keep: true })).sandbox_id
  leftovers.push(kept)
  // A command still running at the end does not hold the session open.
  await callOk(other.client, 'sandbox_exec_start', { sandbox_id: made, command: 'sleep 600' })
  const running = other.client.callTool({
    name: 'sandbox_exec',
    arguments: { sandbox_id: kept, command: 'sleep 600' },
  })
  running.catch(() => {}) // the connection closes under it
  assert.ok(await eventually(async () => (await processNames(kept)).includes('sleep')), 'sleep never ran')

  const begun = Date.now()
  await other.close()
  const closing = Date.now() - begun
  // The SDK ends stdin and sends SIGTERM 2 s later: the server must be done by then.
  assert.ok(closing < 2_000, `vessel mcp took ${closing} ms to close`)
  const left = listedSandboxIds(dir)
  assert.ok(!left.includes(made), 'a sandbox of the session outlived it')
  assert.ok(left.includes(kept), 'the kept sandbox was removed')
  // Its call was stopped with it: the command is killed, in the sandbox that stays.
  assert.ok(
    await eventually(async () => !(await processNames(kept)).includes('sleep')),
    'the command outlived its session',
  )

  // Another session sees the kept one, as not its own, and may remove it.
  const { sandboxes } = await callOk(client, 'sandbox_list')
  assert.deepEqual(
    sandboxes.filter((s) => [made, kept].includes(s.sandbox_id)),
    [{ sandbox_id: kept, template: 'minimal', state: 'running', owned: false }],
  )
  assert.deepEqual(await callOk(client, 'sandbox_kill', { sandbox_id: kept }), { killed: true })
})

// The specification's stdio shutdown: the client closes stdin, then sends SIGTERM if the
// server has not exited "within a reasonable time" (the SDK waits 2 s); some clients send
// SIGTERM at once when they quit.
test(
  'SIGTERM ends the session as the end of stdin does: its sandboxes are removed',
  async () => {
    const other = await connectStdio(dir)
    const made = (await callOk(other.client, 'sandbox_create', { template: 'minimal' })).sandbox_id
    leftovers.push(made)
    const exited = new Promise((resolve) => (other.client.onclose = resolve))
    process.kill(other.transport.pid, 'SIGTERM')
    await exited
    assert.ok(
      await eventually(() => !listedSandboxIds(dir).includes(made), 3_000),
      'the sandbox outlived its session',
    )
  },
)

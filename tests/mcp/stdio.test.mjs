// `vessel mcp` as an agent's client sees it, over stdio with the official SDK: the
// handshake, the 15 tools with their schemas and annotations, and every tool called on
// real sandboxes with its answer checked, from sandbox_create to sandbox_kill. The SDK
// checks each structuredContent against its tool's output schema (callOk asserts there
// is one).
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import {
  callFails,
  callOk,
  connectStdio,
  freshConfigDir,
  listedSandboxIds,
  removeConfigDir,
} from './harness.mjs'

// Each tool's annotations, as docs/mcp.md lists them: [readOnly, destructive, idempotent].
const kAnnotations = {
  run_code: [false, false, false],
  sandbox_create: [false, false, false],
  sandbox_list: [true, false, true],
  sandbox_kill: [false, true, true],
  sandbox_exec: [false, true, false],
  sandbox_exec_start: [false, true, false],
  sandbox_exec_poll: [false, false, false],
  sandbox_exec_write_stdin: [false, false, false],
  sandbox_exec_signal: [false, true, true],
  files_read: [true, false, true],
  files_write: [false, true, true],
  files_list: [true, false, true],
  files_remove: [false, true, true],
  snapshot_create: [false, false, false],
  sandbox_fork: [false, false, false],
}

let dir
let session
let client
let sandbox // made by sandbox_create, used by most tests
let fork // made by sandbox_fork
before(async () => {
  dir = freshConfigDir()
  session = await connectStdio(dir)
  client = session.client
})
after(async () => {
  await session?.close()
  // Closing the session removed what it made (stdio_refusals shows that in detail).
  const left = listedSandboxIds(dir)
  removeConfigDir(dir)
  for (const id of [sandbox, fork]) assert.ok(!left.includes(id), `${id} outlived the session`)
})

test('initialize: the server names itself and offers tools only', () => {
  assert.deepEqual(client.getServerVersion(), { name: 'vessel', title: 'Vessel sandboxes', version: '0.1.0' })
  assert.deepEqual(client.getServerCapabilities(), { tools: { listChanged: false } })
  assert.match(client.getInstructions(), /microVM/)
})

test('tools/list: 15 tools, each with input and output schemas and annotations', async () => {
  const { tools } = await client.listTools()
  assert.deepEqual(tools.map((t) => t.name).sort(), Object.keys(kAnnotations).sort())
  for (const tool of tools) {
    assert.ok(tool.title && tool.description, tool.name)
    assert.equal(tool.inputSchema.type, 'object', tool.name)
    assert.equal(tool.outputSchema.type, 'object', tool.name)
    assert.ok(Object.keys(tool.outputSchema.properties).length > 0, tool.name)
    for (const field of tool.outputSchema.required ?? []) {
      assert.ok(field in tool.outputSchema.properties, `${tool.name}: ${field}`)
    }
    for (const field of tool.inputSchema.required ?? []) {
      assert.ok(field in tool.inputSchema.properties, `${tool.name}: ${field}`)
    }
    const [readOnlyHint, destructiveHint, idempotentHint] = kAnnotations[tool.name]
    assert.ok(client.getToolOutputValidator(tool.name), `${tool.name}: its answers go unchecked`)
    assert.deepEqual(
      tool.annotations,
      { title: tool.title, readOnlyHint, destructiveHint, idempotentHint, openWorldHint: false },
      tool.name,
    )
  }
})

test('sandbox_create boots a sandbox with its environment', async () => {
  const made = await callOk(client, 'sandbox_create', { env: { GREETING: 'hello' }, timeout_seconds: 600 })
  assert.match(made.sandbox_id, /^[0-9a-z-]+$/)
  assert.equal(made.template, 'base')
  sandbox = made.sandbox_id
})

test('sandbox_exec: output, exit code, cwd, env, stdin, timeout and output cap', async () => {
  const ran = await callOk(client, 'sandbox_exec', {
    sandbox_id: sandbox,
    command: 'echo "$GREETING $EXTRA"; pwd; echo oops >&2; exit 3',
    cwd: '/tmp',
    env: { EXTRA: 'world' },
  })
  assert.deepEqual(ran, {
    exit_code: 3,
    signal: null,
    timed_out: false,
    stdout: 'hello world\n/tmp\n',
    stderr: 'oops\n',
    stdout_truncated: false,
    stderr_truncated: false,
  })

  const fed = await callOk(client, 'sandbox_exec', {
    sandbox_id: sandbox,
    command: 'tr a-z A-Z',
    stdin: 'fed in\n',
  })
  assert.equal(fed.stdout, 'FED IN\n')
  assert.equal(fed.exit_code, 0)

  const slow = await callOk(client, 'sandbox_exec', {
    sandbox_id: sandbox,
    command: 'sleep 30',
    timeout_seconds: 1,
  })
  assert.equal(slow.timed_out, true)
  assert.equal(slow.exit_code, null)
  assert.ok(slow.signal > 0)

  const long = await callOk(client, 'sandbox_exec', {
    sandbox_id: sandbox,
    command: "head -c 5000 /dev/zero | tr '\\0' x",
    output_cap_bytes: 100,
  })
  assert.equal(long.stdout, 'x'.repeat(100))
  assert.equal(long.stdout_truncated, true)
  assert.equal(long.exit_code, 0)
})

test('allow_net: Python in the sandbox reaches the hosts named, through the proxy; others get 403', async () => {
  const origin = http.createServer((request, response) => response.end(`origin saw ${request.url}\n`))
  await new Promise((resolve) => origin.listen(0, '127.0.0.1', resolve))
  const host = `127.0.0.1:${origin.address().port}`
  // The guest's own 127.0.0.1 is in NO_PROXY; this server is on the host's, so the code
  // clears NO_PROXY to ask the proxy for it, as it would for any other host.
  const code = [
    'import os, urllib.error, urllib.request',
    "os.environ['NO_PROXY'] = os.environ['no_proxy'] = ''",
    'try:',
    `    print(urllib.request.urlopen('http://${host}/mcp').read().decode(), end='')`,
    'except urllib.error.HTTPError as e:',
    "    print(e.code, e.headers['X-Vessel-Egress'])",
  ].join('\n')
  try {
    const ran = await callOk(client, 'run_code', { code, allow_net: [host] })
    assert.equal(ran.stdout, 'origin saw /mcp\n', ran.stderr)
    const denied = await callOk(client, 'run_code', { code, sandbox_id: sandbox })
    assert.equal(denied.stdout, '403 refused\n', denied.stderr)
    assert.match(await callFails(client, 'sandbox_create', { allow_net: ['http://bad.example/'] }), /allow_net/)
    assert.match(await callFails(client, 'run_code', { code, sandbox_id: sandbox, allow_net: [host] }), /allow_net/)
  } finally {
    origin.close()
  }
})

test('files_write, files_read, files_list, files_remove', async () => {
  assert.deepEqual(
    await callOk(client, 'files_write', {
      sandbox_id: sandbox,
      path: '/tmp/mcp/dir/hello.txt',
      content: 'héllo\n',
    }),
    { path: '/tmp/mcp/dir/hello.txt', size: 7 },
  )
  // Not UTF-8: written from base64 and read back as base64.
  assert.deepEqual(
    await callOk(client, 'files_write', {
      sandbox_id: sandbox,
      path: 'tmp/mcp/bytes',
      content: 'AP8B',
      encoding: 'base64',
    }),
    { path: '/tmp/mcp/bytes', size: 3 },
  )
  assert.deepEqual(
    await callOk(client, 'files_read', { sandbox_id: sandbox, path: '/tmp/mcp/dir/hello.txt' }),
    {
      content: 'héllo\n',
      encoding: 'utf-8',
      size: 7,
      truncated: false,
    },
  )
  assert.deepEqual(await callOk(client, 'files_read', { sandbox_id: sandbox, path: '/tmp/mcp/bytes' }), {
    content: 'AP8B',
    encoding: 'base64',
    size: 3,
    truncated: false,
  })
  assert.deepEqual(
    await callOk(client, 'files_read', { sandbox_id: sandbox, path: '/tmp/mcp/dir/hello.txt', max_bytes: 1 }),
    { content: 'h', encoding: 'utf-8', size: 7, truncated: true },
  )
  // What a command sees is what the file tools wrote.
  const seen = await callOk(client, 'sandbox_exec', {
    sandbox_id: sandbox,
    command: 'cat /tmp/mcp/dir/hello.txt; od -An -tx1 /tmp/mcp/bytes',
  })
  assert.equal(seen.stdout.replace(/\s+/g, ' '), 'héllo 00 ff 01 ')

  const listed = await callOk(client, 'files_list', { sandbox_id: sandbox, path: '/tmp/mcp' })
  const byName = (entries) => [...entries].sort((a, b) => a.name.localeCompare(b.name))
  assert.deepEqual(
    byName(listed.entries).map(({ name, type }) => ({ name, type })),
    [
      { name: 'bytes', type: 'file' },
      { name: 'dir', type: 'dir' },
    ],
  )
  assert.equal(listed.entries.find((e) => e.name === 'bytes').size, 3)

  assert.deepEqual(await callOk(client, 'files_remove', { sandbox_id: sandbox, path: '/tmp/mcp/dir' }), {
    removed: true,
  })
  const after = await callOk(client, 'files_list', { sandbox_id: sandbox, path: '/tmp/mcp' })
  assert.deepEqual(
    after.entries.map((e) => e.name),
    ['bytes'],
  )
  assert.match(
    await callFails(client, 'files_read', { sandbox_id: sandbox, path: '/tmp/mcp/dir/hello.txt' }),
    /.+/,
  )
})

// Polls a started command until `done(result so far)`, gathering its output.
async function pollUntil(exec_id, done) {
  const seen = { stdout: '', stderr: '' }
  for (let i = 0; i < 40; i++) {
    const polled = await callOk(client, 'sandbox_exec_poll', { exec_id, wait_seconds: 5 })
    seen.stdout += polled.stdout
    seen.stderr += polled.stderr
    Object.assign(seen, { ...polled, stdout: seen.stdout, stderr: seen.stderr })
    if (done(seen)) return seen
  }
  assert.fail(`the started command never got there: ${JSON.stringify(seen)}`)
}

test('sandbox_exec_start, _poll, _write_stdin and _signal drive a command to its end', async () => {
  const { exec_id } = await callOk(client, 'sandbox_exec_start', {
    sandbox_id: sandbox,
    command: 'echo ready; read line; echo "got $line"; echo "$MODE" >&2; exec sleep 60',
    env: { MODE: 'started' },
  })
  assert.match(exec_id, /.+/)
  const ready = await pollUntil(exec_id, (s) => s.stdout.includes('ready'))
  assert.equal(ready.running, true)
  assert.equal(ready.exit_code, null)

  assert.deepEqual(await callOk(client, 'sandbox_exec_write_stdin', { exec_id, data: 'abc\n' }), {
    written: 4,
  })
  const got = await pollUntil(exec_id, (s) => s.stdout.includes('got abc') && s.stderr.includes('started'))
  assert.equal(got.running, true)

  assert.deepEqual(await callOk(client, 'sandbox_exec_signal', { exec_id, signal: 'SIGTERM' }), {
    sent: true,
  })
  const ended = await pollUntil(exec_id, (s) => !s.running)
  assert.equal(ended.signal, 15)
  assert.equal(ended.exit_code, null)
  // Once its end is told, the command is forgotten.
  assert.deepEqual(await callOk(client, 'sandbox_exec_signal', { exec_id, signal: 'SIGKILL' }), {
    sent: false,
  })
  assert.match(await callFails(client, 'sandbox_exec_poll', { exec_id }), /no started command/)

  // Closing stdin ends the input; the exit code comes with the end.
  const cat = await callOk(client, 'sandbox_exec_start', { sandbox_id: sandbox, command: 'wc -c; exit 7' })
  assert.deepEqual(
    await callOk(client, 'sandbox_exec_write_stdin', { exec_id: cat.exec_id, data: 'hello', close: true }),
    { written: 5 },
  )
  const counted = await pollUntil(cat.exec_id, (s) => !s.running)
  assert.equal(counted.stdout.trim(), '5')
  assert.equal(counted.exit_code, 7)
})

test('run_code: Python in the sandbox, shell in a fresh sandbox removed afterwards', async () => {
  const python = await callOk(client, 'run_code', {
    sandbox_id: sandbox,
    code: 'import os, sys\nprint(sum(range(10)), os.environ["GREETING"])\nsys.exit(4)\n',
  })
  assert.equal(python.stdout, '45 hello\n')
  assert.equal(python.exit_code, 4)
  assert.equal(python.sandbox_id, sandbox)

  const shell = await callOk(client, 'run_code', {
    language: 'shell',
    code: 'echo "$((6 * 7))"\necho done >&2\n',
  })
  assert.equal(shell.stdout, '42\n')
  assert.equal(shell.stderr, 'done\n')
  assert.equal(shell.exit_code, 0)
  assert.notEqual(shell.sandbox_id, sandbox)
  assert.ok(!listedSandboxIds(dir).includes(shell.sandbox_id), 'the fresh sandbox was kept')
})

test('snapshot_create saves the sandbox as a template sandbox_create starts from', async () => {
  await callOk(client, 'files_write', {
    sandbox_id: sandbox,
    path: '/root/saved.txt',
    content: 'in the snapshot',
  })
  const snapshot = await callOk(client, 'snapshot_create', { sandbox_id: sandbox, name: 'mcp-test-snapshot' })
  assert.match(snapshot.snapshot_id, /.+/)
  assert.deepEqual(snapshot.names, ['mcp-test-snapshot'])

  const restored = await callOk(client, 'sandbox_create', { template: 'mcp-test-snapshot' })
  assert.notEqual(restored.sandbox_id, sandbox)
  const read = await callOk(client, 'files_read', {
    sandbox_id: restored.sandbox_id,
    path: '/root/saved.txt',
  })
  assert.equal(read.content, 'in the snapshot')
  assert.deepEqual(await callOk(client, 'sandbox_kill', { sandbox_id: restored.sandbox_id }), {
    killed: true,
  })
})

test('sandbox_fork copies the sandbox as it is, independent of it', async () => {
  await callOk(client, 'files_write', {
    sandbox_id: sandbox,
    path: '/root/state.txt',
    content: 'before the fork',
  })
  const forked = await callOk(client, 'sandbox_fork', { sandbox_id: sandbox })
  assert.equal(forked.sandbox_ids.length, 1)
  fork = forked.sandbox_ids[0]
  assert.notEqual(fork, sandbox)
  const copy = await callOk(client, 'sandbox_exec', {
    sandbox_id: fork,
    command: 'cat /root/state.txt; echo " after" >> /root/state.txt; cat /root/state.txt',
  })
  assert.equal(copy.stdout, 'before the forkbefore the fork after\n')
  const original = await callOk(client, 'files_read', { sandbox_id: sandbox, path: '/root/state.txt' })
  assert.equal(original.content, 'before the fork')
})

test('sandbox_list shows the session its sandboxes; sandbox_kill removes one', async () => {
  const { sandboxes } = await callOk(client, 'sandbox_list')
  for (const id of [sandbox, fork]) {
    const found = sandboxes.find((s) => s.sandbox_id === id)
    assert.ok(found, `${id} is not listed: ${JSON.stringify(sandboxes)}`)
    assert.equal(found.state, 'running')
    assert.equal(found.owned, true)
  }
  assert.deepEqual(await callOk(client, 'sandbox_kill', { sandbox_id: fork }), { killed: true })
  assert.deepEqual(await callOk(client, 'sandbox_kill', { sandbox_id: fork }), { killed: false })
  const after = await callOk(client, 'sandbox_list')
  assert.ok(!after.sandboxes.some((s) => s.sandbox_id === fork))
  assert.ok(!listedSandboxIds(dir).includes(fork))
})

// The SDK's `commands` through the data plane (Connect with JSON): a foreground command
// with streamed output, its environment and directory, exit codes, a background command
// killed, stdin, and the sandbox's access token.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { CommandExitError, Sandbox, TimeoutError } from 'e2b'
import { startServer } from './harness.mjs'

let server
let sbx
before(async () => {
  server = await startServer()
  sbx = await Sandbox.create('minimal', { ...server.opts, envs: { FROM_CREATE: 'c' } })
})
after(async () => {
  await sbx?.kill()
  await server.stop()
})

test('a command streams its output and returns its result', async () => {
  const streamed = []
  const result = await sbx.commands.run('echo hello; echo oops >&2; echo "$A $FROM_CREATE"; pwd', {
    envs: { A: '1' },
    cwd: '/tmp',
    onStdout: (data) => streamed.push(data),
  })
  assert.equal(result.exitCode, 0)
  assert.equal(result.stdout, 'hello\n1 c\n/tmp\n')
  assert.equal(result.stderr, 'oops\n')
  assert.equal(streamed.join(''), result.stdout)
})

test('a failing command raises CommandExitError with its exit code and output', async () => {
  await assert.rejects(sbx.commands.run('echo partial; exit 3'), (e) => {
    assert.ok(e instanceof CommandExitError, String(e))
    assert.equal(e.exitCode, 3)
    assert.equal(e.stdout, 'partial\n')
    return true
  })
})

test('a background command is listed and killed', async () => {
  const bg = await sbx.commands.run('sleep 100', { background: true })
  assert.ok(bg.pid > 0)
  const listed = await sbx.commands.list()
  assert.ok(listed.some((p) => p.pid === bg.pid), JSON.stringify(listed))
  assert.equal(await bg.kill(), true)
  await assert.rejects(bg.wait(), CommandExitError)
  assert.equal(await sbx.commands.kill(bg.pid), false)
})

test('a command past its timeoutMs is killed and raises TimeoutError', async () => {
  const started = Date.now()
  await assert.rejects(sbx.commands.run('echo begun; sleep 600', { timeoutMs: 1_500 }), (e) => {
    assert.ok(e instanceof TimeoutError, String(e))
    return true
  })
  assert.ok(Date.now() - started < 30_000)
  // Killed in the sandbox too, not only given up on by the client.
  let left = true
  for (let waited = 0; left && waited < 30_000; waited += 250) {
    left = (await sbx.commands.list()).some((p) => p.args.at(-1) === 'echo begun; sleep 600')
    if (left) await new Promise((resolve) => setTimeout(resolve, 250))
  }
  assert.equal(left, false, 'the command outlived its timeout')
})

test('stdin reaches a command and closing it ends the input', async () => {
  const cat = await sbx.commands.run('cat; echo done', { background: true, stdin: true })
  await sbx.commands.sendStdin(cat.pid, 'ping\n')
  await sbx.commands.closeStdin(cat.pid)
  const result = await cat.wait()
  assert.equal(result.stdout, 'ping\ndone\n')
})

test('many output lines arrive in order, and large output whole', async () => {
  const result = await sbx.commands.run('seq 1 20000; head -c 3000000 /dev/zero | tr "\\0" x')
  const lines = result.stdout.split('\n')
  assert.equal(lines[0], '1')
  assert.equal(lines[19999], '20000')
  assert.equal(lines[20000].length, 3_000_000)
})

test('the data plane needs the sandbox access token', async () => {
  const same = await Sandbox.connect(sbx.sandboxId, server.opts)
  assert.equal((await same.commands.run('echo yes')).stdout, 'yes\n')
  const other = new Sandbox({ ...server.opts, sandboxId: sbx.sandboxId, envdVersion: '0.5.7',
                              envdAccessToken: 'wrong-token' })
  await assert.rejects(other.commands.run('echo no'), (e) => {
    assert.match(String(e), /unauthenticated|401|X-Access-Token/i)
    return true
  })
})

test('a command runs on when its client disconnects, and connect attaches to it again', async () => {
  const cmd = await sbx.commands.run('for i in $(seq 1 40); do echo line-$i; sleep 0.1; done; exit 4', {
    background: true,
  })
  await cmd.disconnect()
  const first = []
  const second = []
  const a = await sbx.commands.connect(cmd.pid, { onStdout: (d) => first.push(d) })
  const b = await sbx.commands.connect(cmd.pid, { onStdout: (d) => second.push(d) })
  for (const handle of [a, b]) {
    await assert.rejects(handle.wait(), (e) => {
      assert.ok(e instanceof CommandExitError, String(e))
      assert.equal(e.exitCode, 4)
      return true
    })
  }
  // Both listeners heard the end of it, in order.
  for (const heard of [first.join(''), second.join('')]) {
    assert.ok(heard.endsWith('line-40\n'), heard)
    const numbers = heard.trim().split('\n').map((l) => Number(l.slice('line-'.length)))
    numbers.forEach((n, i) => i === 0 || assert.equal(n, numbers[i - 1] + 1))
  }
  // Once it has ended there is nothing to connect to.
  await assert.rejects(sbx.commands.connect(cmd.pid), /not found/)
})

test('a client that reads nothing of a flood is dropped; the server stays small, the command ends', async (t) => {
  const rssMiB = () =>
    Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${server.pid}/status`, 'utf8'))[1]) / 1024
  const detail = await (
    await fetch(`${server.url}/sandboxes/${sbx.sandboxId}`, { headers: { 'X-API-Key': server.key } })
  ).json()
  const before = rssMiB()
  // 40 MiB of output, 53 MiB as events: over three times what one listener may fall behind.
  const message = Buffer.from(
    JSON.stringify({
      process: { cmd: '/bin/sh', args: ['-c', 'head -c 41943040 /dev/zero; echo > /tmp/flood-done'] },
    }),
  )
  const envelope = Buffer.concat([Buffer.from([0, 0, 0, 0, 0]), message])
  envelope.writeUInt32BE(message.length, 1)
  const abort = new AbortController()
  const response = await fetch(`${server.url}/process.Process/Start`, {
    method: 'POST',
    headers: {
      'Content-Type': 'application/connect+json',
      'E2b-Sandbox-Id': sbx.sandboxId,
      'X-Access-Token': detail.envdAccessToken,
    },
    body: envelope,
    signal: abort.signal,
  })
  assert.equal(response.status, 200)
  let peak = before
  let done = false
  for (let waited = 0; !done && waited < 120_000; waited += 500) {
    await new Promise((resolve) => setTimeout(resolve, 500))
    peak = Math.max(peak, rssMiB())
    done = (await sbx.commands.run('test -f /tmp/flood-done && echo yes || true')).stdout === 'yes\n'
  }
  abort.abort()
  assert.ok(done, 'the command ran to its end with nobody reading it')
  t.diagnostic(`vessel serve grew by ${(peak - before).toFixed(1)} MiB at most`)
  assert.ok(peak - before < 48, `vessel serve grew by ${peak - before} MiB`)
})

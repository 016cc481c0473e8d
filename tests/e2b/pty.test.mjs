// The SDK's `pty`: a login shell on a pseudo-terminal of the size asked for, keystrokes
// in, a resize through Update, ^C for the foreground job only, and the exit status out;
// and the errors for sizes and resizes that make no sense.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { CommandExitError, Sandbox } from 'e2b'
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

// A terminal's output as text, and a way to wait for a pattern to appear in it.
function screen() {
  const decoder = new TextDecoder()
  let text = ''
  let waiters = []
  return {
    onData(bytes) {
      text += decoder.decode(bytes, { stream: true })
      waiters = waiters.filter((w) => !w())
    },
    text: () => text,
    until(pattern, ms = 60_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no ${pattern} in the terminal:\n${JSON.stringify(text)}`)),
          ms,
        )
        const check = () => {
          const found = pattern.exec(text)
          if (found) {
            clearTimeout(timer)
            resolve(found)
          }
          return Boolean(found)
        }
        if (!check()) waiters.push(check)
      })
    },
  }
}

const keys = (text) => new TextEncoder().encode(text)

test('a pty runs a shell on /dev/pts of the size given, resizes, and takes ^C', async () => {
  const term = screen()
  const pty = await sbx.pty.create({ cols: 100, rows: 30, onData: term.onData })
  assert.ok(pty.pid > 0)

  await sbx.pty.sendInput(pty.pid, keys('tty; stty size; echo "term=$TERM"\n'))
  await term.until(/\/dev\/pts\/\d+/)
  await term.until(/^30 100\r$/m)
  await term.until(/^term=xterm-256color\r$/m)

  await sbx.pty.resize(pty.pid, { cols: 120, rows: 40 })
  await sbx.pty.sendInput(pty.pid, keys('stty size\n'))
  await term.until(/^40 120\r$/m)

  await sbx.pty.sendInput(pty.pid, keys('echo go; sleep 100\n'))
  await term.until(/^go\r$/m)
  await sbx.pty.sendInput(pty.pid, keys('\x03'))
  await sbx.pty.sendInput(pty.pid, keys('echo "after=$?"\n'))
  await term.until(/^after=130\r$/m)

  await sbx.pty.sendInput(pty.pid, keys('exit 7\n'))
  await assert.rejects(pty.wait(), (e) => {
    assert.ok(e instanceof CommandExitError, String(e))
    assert.equal(e.exitCode, 7)
    return true
  })
})

test('a pty the client kills is gone from the process list', async () => {
  const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {} })
  assert.ok((await sbx.commands.list()).some((p) => p.pid === pty.pid))
  assert.equal(await sbx.pty.kill(pty.pid), true)
  await assert.rejects(pty.wait(), CommandExitError)
  assert.equal(await sbx.pty.kill(pty.pid), false)
})

test('sizes out of range, and a resize of a command without a terminal, are refused', async () => {
  for (const size of [
    { cols: 0, rows: 24 },
    { cols: 80, rows: 5000 },
  ]) {
    await assert.rejects(
      sbx.pty.create({ ...size, onData: () => {} }),
      (e) => /size|rows|cols/.test(String(e)),
      JSON.stringify(size),
    )
  }
  const bg = await sbx.commands.run('sleep 100', { background: true })
  await assert.rejects(sbx.pty.resize(bg.pid, { cols: 80, rows: 24 }), /no terminal/)
  await assert.rejects(sbx.pty.sendInput(bg.pid, keys('x')), /input\.stdin/)
  await bg.kill()
  // Commands without a terminal still work as before, beside one.
  const result = await sbx.commands.run('test -t 1 || echo "not a terminal"')
  assert.equal(result.stdout, 'not a terminal\n')
})

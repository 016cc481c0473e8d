// The MCP conformance package's server checks (@modelcontextprotocol/conformance, its
// `server --url URL --scenario NAME` command) against `vessel serve`'s /mcp: each scenario
// that applies to a server offering tools, and only tools, must pass.
//
// The package's client sends no credentials, so it reaches the endpoint through a proxy
// on loopback that adds the API key as a bearer token, as a configured client would; the
// proxy passes every other header (Host, Origin) through unchanged.
//
// Run: server-initialize, ping, tools-list, server-sse-multiple-streams (three concurrent
// POSTs in one session), dns-rebinding-protection (a foreign Host and Origin refused, a
// local one taken).
// Skipped, and why:
// - tools-call-simple-text, -image, -audio, -embedded-resource, -mixed-content, -error,
//   -with-progress, -sampling, -elicitation, -with-logging; json-schema-2020-12;
//   elicitation-sep1034-defaults, elicitation-sep1330-enums: each calls or lists a test
//   tool of the package's reference server (test_simple_text, test_error_handling, ...),
//   which a server with its own tools does not have. stdio.test.mjs and http.test.mjs
//   check the same (text content, isError, progress) on Vessel's tools.
// - server-sse-polling: calls the test_reconnection tool and checks event ids and retry
//   fields for resuming a stream; Vessel's sessions are not resumable (docs/mcp.md).
// - logging-set-level, completion-complete, resources-*, prompts-*: capabilities the
//   server does not declare (logging, completions, resources, prompts).
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import http from 'node:http'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { startServer } from '../e2b/harness.mjs'

const kRun = [
  'server-initialize',
  'ping',
  'tools-list',
  'server-sse-multiple-streams',
  'dns-rebinding-protection',
]
const kSkipped = [
  'tools-call-simple-text',
  'tools-call-image',
  'tools-call-audio',
  'tools-call-embedded-resource',
  'tools-call-mixed-content',
  'tools-call-error',
  'tools-call-with-progress',
  'tools-call-sampling',
  'tools-call-elicitation',
  'tools-call-with-logging',
  'json-schema-2020-12',
  'elicitation-sep1034-defaults',
  'elicitation-sep1330-enums',
  'server-sse-polling',
  'logging-set-level',
  'completion-complete',
  'resources-list',
  'resources-read-text',
  'resources-read-binary',
  'resources-templates-read',
  'resources-subscribe',
  'resources-unsubscribe',
  'prompts-list',
  'prompts-get-simple',
  'prompts-get-with-args',
  'prompts-get-embedded-resource',
  'prompts-get-with-image',
]

const conformance = join(
  dirname(createRequire(import.meta.url).resolve('@modelcontextprotocol/conformance/package.json')),
  'dist/index.js',
)

function runConformance(args) {
  return new Promise((resolve) => {
    execFile(process.execPath, [conformance, ...args], { timeout: 120_000 }, (error, stdout, stderr) =>
      resolve({ code: error ? (error.code ?? 1) : 0, output: stdout + stderr }),
    )
  })
}

// Forwards each request to `target` with the bearer token added, streaming the answer
// (events included) back.
function startKeyProxy(target, key) {
  const to = new URL(target)
  const proxy = http.createServer((incoming, outgoing) => {
    const forwarded = http.request(
      {
        host: to.hostname,
        port: to.port,
        method: incoming.method,
        path: incoming.url,
        headers: { ...incoming.headers, authorization: `Bearer ${key}` },
      },
      (answer) => {
        outgoing.writeHead(answer.statusCode, answer.headers)
        answer.pipe(outgoing)
      },
    )
    forwarded.on('error', (e) => outgoing.destroy(e))
    incoming.pipe(forwarded)
  })
  return new Promise((resolve) => {
    proxy.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://localhost:${proxy.address().port}`,
        close: () =>
          new Promise((done) => {
            proxy.close(done)
            proxy.closeAllConnections()
          }),
      }),
    )
  })
}

let server
let proxy
let results
before(async () => {
  server = await startServer()
  proxy = await startKeyProxy(server.url, server.key)
  results = mkdtempSync(join(tmpdir(), 'mcp-conformance-'))
})
after(async () => {
  await proxy?.close()
  await server?.stop()
  if (results) rmSync(results, { recursive: true, force: true })
})

test('every server scenario of the package is either run here or skipped for a reason', async () => {
  const { code, output } = await runConformance(['list', '--server'])
  assert.equal(code, 0, output)
  const listed = [...output.matchAll(/^\s+- (\S+)/gm)].map((m) => m[1])
  assert.deepEqual([...listed].sort(), [...kRun, ...kSkipped].sort())
})

for (const scenario of kRun) {
  test(`conformance: ${scenario}`, async () => {
    const out = join(results, scenario)
    const { code, output } = await runConformance([
      'server',
      '--url',
      `${proxy.url}/mcp`,
      '--scenario',
      scenario,
      '--output-dir',
      out,
    ])
    const [run] = readdirSync(out)
    const checks = JSON.parse(readFileSync(join(out, run, 'checks.json'), 'utf8'))
    const summary = checks.map((c) => `${c.id}: ${c.status} ${c.errorMessage ?? ''}`).join('\n')
    assert.equal(code, 0, `${summary}\n${output}`)
    assert.ok(
      checks.some((c) => c.status === 'SUCCESS'),
      summary,
    )
    assert.deepEqual(
      checks.filter((c) => !['SUCCESS', 'INFO'].includes(c.status)),
      [],
      summary,
    )
  })
}

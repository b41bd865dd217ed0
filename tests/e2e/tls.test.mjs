// Both official SDKs over https:// to the proxy's TLS listener ([server] tls_cert / tls_key),
// trusting the test CA through NODE_EXTRA_CA_CERTS (Node reads it once at start, so the SDK calls
// run in a child process: tls_client.mjs), streamed and not, with the same answers as the mock
// gives directly; and without the CA, the certificate is refused.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { MODEL, UPSTREAM_KEY, accessLogEntry, makePki, requestId, startStack, stopStack, tempDir } from './harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const run = promisify(execFile);
const TIMEOUT = { timeout: 60_000 };
const MIN_SPREAD_MS = 400;  // 5 deltas, 150 ms apart at the mock (see streaming.test.mjs)

let stack;
let pki;

before(async () => {
  pki = makePki(tempDir('glmp-e2e-pki-'));
  stack = await startStack({ tls: { cert: pki.cert, key: pki.key } });
});

after(async () => {
  await stopStack(stack);
});

// Runs tls_client.mjs with `env` added (a value of undefined removes the variable).
async function sdkCalls(env, ids) {
  const childEnv = {
    ...process.env,
    GLMP_E2E_PROXY_URL: stack.proxyURL,
    GLMP_E2E_MOCK_URL: `http://127.0.0.1:${stack.mockPort}`,
    GLMP_E2E_MODEL: MODEL,
    GLMP_E2E_UPSTREAM_KEY: UPSTREAM_KEY,
    GLMP_E2E_IDS: JSON.stringify(ids),
  };
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete childEnv[k];
    else childEnv[k] = v;
  }
  const { stdout } = await run(process.execPath, [join(here, 'tls_client.mjs')], { env: childEnv, timeout: 50_000 });
  return JSON.parse(stdout);
}

function checkArrivals(result, label) {
  assert.ok(!result.error, `${label}: ${result.error}`);
  const { arrivals } = result;
  const detail = `${label}: arrivals ${JSON.stringify(arrivals.map((a) => Math.round(a.at - arrivals[0].at)))}`;
  assert.equal(arrivals.map((a) => a.text).join(''), 'tok0 tok1 tok2 tok3 tok4 ', detail);
  assert.ok(arrivals.at(-1).at - arrivals[0].at >= MIN_SPREAD_MS, `the deltas came together, not as produced; ${detail}`);
}

describe('both SDKs over https:// (TLS listener)', () => {
  test('the proxy URL is https', () => {
    assert.match(stack.proxyURL, /^https:\/\/127\.0\.0\.1:\d+$/);
  });

  test('trusting the test CA via NODE_EXTRA_CA_CERTS: plain and streamed, same answers as direct', TIMEOUT, async () => {
    const ids = {
      openaiPlain: requestId('tls-openai'),
      openaiStream: requestId('tls-openai-stream'),
      anthropicPlain: requestId('tls-anthropic'),
      anthropicStream: requestId('tls-anthropic-stream'),
    };
    const r = await sdkCalls({ NODE_EXTRA_CA_CERTS: pki.ca }, ids);
    for (const [name, result] of Object.entries(r)) assert.ok(!result.error, `${name}: ${result.error}`);

    assert.equal(r.openaiPlain.content, 'tok0 tok1 tok2 ');
    assert.equal(r.openaiPlain.content, r.openaiDirect.content);
    assert.deepEqual(r.openaiPlain.usage, r.openaiDirect.usage);
    assert.equal(r.anthropicPlain.text, 'tok0 tok1 tok2 ');
    assert.equal(r.anthropicPlain.text, r.anthropicDirect.text);
    assert.deepEqual(r.anthropicPlain.usage, r.anthropicDirect.usage);

    checkArrivals(r.openaiStream, 'openai stream');
    checkArrivals(r.anthropicStream, 'anthropic stream');
    assert.equal(r.anthropicStream.text, 'tok0 tok1 tok2 tok3 tok4 ');
    assert.equal(r.anthropicStream.stopReason, 'end_turn');

    for (const [name, id] of Object.entries(ids)) {
      const entry = await accessLogEntry(stack, id);
      assert.equal(entry.status, 200, `${name}: ${JSON.stringify(entry)}`);
      assert.equal(entry.stream, name.endsWith('Stream'), `${name}: ${JSON.stringify(entry)}`);
    }
  });

  test('without the test CA both SDKs refuse the certificate', TIMEOUT, async () => {
    const r = await sdkCalls({ NODE_EXTRA_CA_CERTS: undefined, GLMP_E2E_MOCK_URL: '' }, {
      openaiPlain: requestId('tls-untrusted'),
      openaiStream: requestId('tls-untrusted'),
      anthropicPlain: requestId('tls-untrusted'),
      anthropicStream: requestId('tls-untrusted'),
    });
    for (const name of ['openaiPlain', 'openaiStream', 'anthropicPlain', 'anthropicStream']) {
      assert.ok(r[name].error, `${name} succeeded without trusting the CA`);
      assert.match(r[name].error, /SELF_SIGNED|UNABLE_TO_(VERIFY|GET)|certificate/i, `${name}: ${r[name].error}`);
    }
  });
});

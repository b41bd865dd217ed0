// h2c with prior knowledge (docs/design.md, "HTTP/2 for clients"): on the plain listener, a
// connection that opens with HTTP/2's client preface is served by the same HTTP/2 front as h2 over
// TLS ([server] http2, default true); every other connection is HTTP/1.1 as before. Node's own
// http2 client over http://, raw sockets for a preface (and an HTTP/1.1 request) cut in pieces,
// and the preface with http2 = false.

import assert from 'node:assert/strict';
import http2 from 'node:http2';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { MODEL, startStack, stopStack } from './harness.mjs';

const TIMEOUT = { timeout: 60_000 };
const PREFACE = 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n';
const EMPTY_SETTINGS = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]);

const openaiBody = (stream) => JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], stream });
const anthropicBody = (stream) => JSON.stringify({ model: MODEL, max_tokens: 64, messages: [{ role: 'user', content: 'hi' }], stream });

function request(session, path, { method = 'POST', body = '', headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = session.request({ ':method': method, ':path': path, 'content-type': 'application/json', ...headers });
    let head = null;
    let text = '';
    req.setEncoding('utf8');
    req.on('response', (h) => { head = h; });
    req.on('data', (d) => { text += d; });
    req.on('end', () => resolve({ status: head?.[':status'], body: text }));
    req.on('error', reject);
    req.end(body || undefined);
  });
}

// Writes `pieces` to a raw connection, `gapMs` apart; resolves with the first `want` bytes the
// server sends back (or all of them once it closes).
function raw(port, pieces, { gapMs = 60, want = 1 << 20 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    const got = [];
    let size = 0;
    const done = () => { sock.destroy(); resolve(Buffer.concat(got)); };
    sock.on('data', (d) => { got.push(d); size += d.length; if (size >= want) done(); });
    sock.on('end', done);
    sock.on('error', reject);
    sock.on('connect', async () => {
      for (const p of pieces) {
        sock.write(p);
        await sleep(gapMs);
      }
    });
  });
}

const port = (s) => Number(new URL(s.proxyURL).port);

describe('h2c with prior knowledge on the plain listener', () => {
  let stack;
  before(async () => { stack = await startStack(); });
  after(async () => { await stopStack(stack); });

  test('both flavours, streamed and not, and a worker route, over one h2c connection; HTTP/1.1 on the same port', TIMEOUT, async () => {
    const session = http2.connect(stack.proxyURL);
    session.on('error', () => {});
    const [o, os, a, as, health] = await Promise.all([
      request(session, '/v1/chat/completions', { body: openaiBody(false) }),
      request(session, '/v1/chat/completions', { body: openaiBody(true), headers: { 'x-mock-chunks': '3' } }),
      request(session, '/v1/messages', { body: anthropicBody(false) }),
      request(session, '/v1/messages', { body: anthropicBody(true) }),
      request(session, '/health', { method: 'GET' }),
    ]);
    assert.equal(o.status, 200, o.body);
    assert.equal(JSON.parse(o.body).object, 'chat.completion');
    assert.equal(os.status, 200);
    assert.match(os.body, /data: \[DONE\]/);
    assert.equal(a.status, 200, a.body);
    assert.equal(JSON.parse(a.body).type, 'message');
    assert.equal(as.status, 200);
    assert.match(as.body, /event: message_stop/);
    assert.equal(health.status, 200);
    assert.ok(JSON.parse(health.body).status);
    session.close();
    const h1 = await fetch(`${stack.proxyURL}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: openaiBody(false),
    });
    assert.equal(h1.status, 200);
    assert.equal((await h1.json()).object, 'chat.completion');
  });

  test('a preface that arrives in pieces is still HTTP/2; an HTTP/1.1 request in pieces is still HTTP/1.1', TIMEOUT, async () => {
    // The server's first frame is its SETTINGS (type 4), whatever the pieces.
    const h2 = await raw(port(stack), [PREFACE.slice(0, 1), PREFACE.slice(1, 9), Buffer.concat([Buffer.from(PREFACE.slice(9)), EMPTY_SETTINGS])], { want: 9 });
    assert.ok(h2.length >= 9, `a frame header came back (${h2.length} bytes)`);
    assert.equal(h2[3], 4, 'SETTINGS');
    // "P" could start the preface or POST: the next bytes decide.
    const body = openaiBody(false);
    const head = `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n`;
    const h1 = (await raw(port(stack), ['P', 'OS', head.slice(3) + body])).toString();
    assert.match(h1, /^HTTP\/1\.1 200 /, h1.slice(0, 200));
    assert.match(h1, /"chat\.completion"/);
  });
});

describe('h2c with [server] http2 = false', () => {
  let stack;
  before(async () => { stack = await startStack({ serverExtra: 'http2 = false' }); });
  after(async () => { await stopStack(stack); });

  test('the preface is an HTTP/1.1 request the parser refuses, answered and closed', TIMEOUT, async () => {
    const answer = (await raw(port(stack), [Buffer.concat([Buffer.from(PREFACE), EMPTY_SETTINGS])])).toString();
    assert.match(answer, /^HTTP\/1\.1 (400|505) /, answer.slice(0, 200));
    assert.match(answer, /Connection: close/i);
  });
});

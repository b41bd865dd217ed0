// HTTP/2 from clients (docs/design.md, "HTTP/2 for clients"): Node's own HTTP/2 client
// (node:http2, nghttp2 inside) against the proxy's TLS listener with the test CA. ALPN picks h2;
// both flavours, streamed and not, many streams multiplexed on one connection; request bodies with
// and without content-length; a stream the client resets; a slow stream that holds only itself;
// the stream limit; oversized headers; GOAWAY when the proxy drains; and [server] http2 = false.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { MODEL, accessLogEntry, makePki, requestId, startStack, stopStack, tempDir } from './harness.mjs';

const TIMEOUT = { timeout: 60_000 };
const MAX_STREAMS = 16;

let stack;
let pki;
let ca;

before(async () => {
  pki = makePki(tempDir('glmp-e2e-h2-pki-'));
  ca = readFileSync(pki.ca);
  stack = await startStack({ tls: { cert: pki.cert, key: pki.key }, serverExtra: `max_concurrent_streams = ${MAX_STREAMS}` });
});

after(async () => {
  await stopStack(stack);
});

function connect(url = stack.proxyURL) {
  const session = http2.connect(url, { ca });
  session.on('error', () => {});  // a test that expects an error listens itself
  return session;
}

// A session whose client knows the proxy's SETTINGS (before them, a client may open more
// streams than allowed, and those are refused: RFC 9113 §5.1.2).
async function connected() {
  const session = connect();
  await new Promise((resolve) => session.once('remoteSettings', resolve));
  return session;
}

const openaiBody = (stream, text = 'hi') => JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: text }], stream });
const anthropicBody = (stream) => JSON.stringify({ model: MODEL, max_tokens: 64, messages: [{ role: 'user', content: 'hi' }], stream });

// One request on `session`: resolves { status, headers, body, chunks: [{ at, text }] }.
function request(session, path, { body = '', headers = {}, contentLength = true, method = 'POST' } = {}) {
  return new Promise((resolve, reject) => {
    const h = { ':method': method, ':path': path, 'content-type': 'application/json', ...headers };
    if (contentLength && body) h['content-length'] = Buffer.byteLength(body);
    const req = session.request(h);
    let head = null;
    const chunks = [];
    req.setEncoding('utf8');
    req.on('response', (hs) => { head = hs; });
    req.on('data', (d) => chunks.push({ at: performance.now(), text: d }));
    req.on('end', () => resolve({ status: head?.[':status'], headers: head, body: chunks.map((c) => c.text).join(''), chunks }));
    req.on('error', reject);
    if (body && !contentLength) {
      // In pieces, without a content-length: the proxy frames it as chunked on its way in.
      const third = Math.ceil(body.length / 3);
      req.write(body.slice(0, third));
      setTimeout(() => { req.write(body.slice(third, 2 * third)); req.end(body.slice(2 * third)); }, 20);
    } else {
      req.end(body || undefined);
    }
  });
}

const openaiContent = (body) => [...body.matchAll(/"content":"([^"]*)"/g)].map((m) => m[1]).join('');

describe('HTTP/2 clients on the TLS listener', () => {
  test('ALPN selects h2 for a client offering it, HTTP/1.1 for one that does not', TIMEOUT, async () => {
    const session = connect();
    await new Promise((resolve, reject) => { session.once('connect', resolve); session.once('error', reject); });
    assert.equal(session.alpnProtocol, 'h2');
    session.close();
    const proto = await new Promise((resolve, reject) => {
      const req = https.request(`${stack.proxyURL}/health`, { ca, ALPNProtocols: ['http/1.1'] }, (res) => {
        const alpn = res.socket.alpnProtocol;
        res.resume();
        res.on('end', () => resolve(`${res.httpVersion}/${alpn}`));
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(proto, '1.1/http/1.1');
  });

  test('both flavours, streamed and not, on one connection, with usage in the access log', TIMEOUT, async () => {
    const session = connect();
    const ids = { o: requestId('h2-openai'), os: requestId('h2-openai-stream'), a: requestId('h2-anthropic'), as: requestId('h2-anthropic-stream') };
    const [o, os, a, as] = await Promise.all([
      request(session, '/v1/chat/completions', { body: openaiBody(false), headers: { 'x-mock-chunks': '4', 'x-request-id': ids.o } }),
      request(session, '/v1/chat/completions', {
        body: openaiBody(true), headers: { 'x-mock-chunks': '5', 'x-mock-delay-ms': '150', 'x-request-id': ids.os },
      }),
      request(session, '/v1/messages', { body: anthropicBody(false), headers: { 'x-request-id': ids.a } }),
      request(session, '/v1/messages', { body: anthropicBody(true), headers: { 'x-mock-chunks': '3', 'x-request-id': ids.as } }),
    ]);
    session.close();
    assert.equal(o.status, 200, o.body);
    assert.equal(JSON.parse(o.body).choices[0].message.content, 'tok0 tok1 tok2 tok3 ');
    assert.equal(o.headers['x-request-id'], ids.o);
    assert.equal(os.status, 200);
    assert.match(os.headers['content-type'], /^text\/event-stream/);
    assert.equal(openaiContent(os.body), 'tok0 tok1 tok2 tok3 tok4 ');
    assert.ok(os.body.includes('data: [DONE]'));
    const withText = os.chunks.filter((c) => c.text.includes('tok'));
    assert.ok(withText.at(-1).at - withText[0].at >= 400, 'the deltas arrive as the upstream produces them, not at the end');
    assert.equal(a.status, 200, a.body);
    assert.equal(JSON.parse(a.body).type, 'message');
    assert.ok(as.body.includes('event: message_stop'), as.body);
    for (const h of [o.headers, os.headers, a.headers]) {
      for (const name of ['connection', 'transfer-encoding', 'keep-alive']) assert.equal(h[name], undefined, `${name} is not an HTTP/2 field`);
    }
    const os_log = await accessLogEntry(stack, ids.os);
    assert.equal(os_log.status, 200);
    assert.equal(os_log.tokens_out, 5);
    assert.equal(os_log.stream, true);
    assert.equal((await accessLogEntry(stack, ids.o)).tokens_out, 4);
  });

  test('many concurrent streams over one connection, every answer its own', TIMEOUT, async () => {
    const session = await connected();
    const n = 60;  // above max_concurrent_streams: the client queues the rest
    const results = await Promise.all(Array.from({ length: n }, (_, i) => request(session, '/v1/chat/completions', {
      body: openaiBody(i % 2 === 0, `question ${i}`), headers: { 'x-mock-chunks': String(1 + (i % 4)), 'x-mock-delay-ms': '20' },
    })));
    session.close();
    results.forEach((r, i) => {
      assert.equal(r.status, 200, `stream ${i}: ${r.body}`);
      const want = Array.from({ length: 1 + (i % 4) }, (_, k) => `tok${k} `).join('');
      const got = i % 2 === 0 ? openaiContent(r.body) : JSON.parse(r.body).choices[0].message.content;
      assert.equal(got, want, `stream ${i}`);
    });
    assert.equal(new Set(results.map((r) => r.headers['x-request-id'])).size, n, 'one request id per stream');
  });

  test('the stream limit is announced (SETTINGS_MAX_CONCURRENT_STREAMS)', TIMEOUT, async () => {
    const session = connect();
    const settings = await new Promise((resolve) => session.once('remoteSettings', resolve));
    session.close();
    assert.equal(settings.maxConcurrentStreams, MAX_STREAMS);
    assert.equal(settings.enablePush, false);
  });

  test('request bodies without content-length (DATA frames) and with one', TIMEOUT, async () => {
    const session = connect();
    const id = requestId('h2-body-chunked');
    const echoed = await request(session, '/v1/chat/completions', {
      body: openaiBody(false, 'x'.repeat(100_000)), contentLength: false, headers: { 'x-mock-echo': '1', 'x-request-id': id },
    });
    assert.equal(echoed.status, 200, echoed.body);
    const seen = JSON.parse(echoed.body);
    assert.equal(JSON.parse(seen.body).messages[0].content.length, 100_000, 'the whole body reached the upstream');
    const sized = await request(session, '/v1/chat/completions', { body: openaiBody(false, 'sized') });
    assert.equal(sized.status, 200, sized.body);
    session.close();
  });

  test('a body of megabytes without content-length reaches the upstream whole (the window follows the lane)', TIMEOUT, async () => {
    const session = connect();
    const text = 'y'.repeat(3_000_000);  // many times the 256 KiB a lane holds unacknowledged
    const echoed = await request(session, '/v1/chat/completions', {
      body: openaiBody(false, text), contentLength: false, headers: { 'x-mock-echo': '1' },
    });
    assert.equal(echoed.status, 200);
    assert.equal(JSON.parse(JSON.parse(echoed.body).body).messages[0].content, text);
    session.close();
  });

  test('routes a worker serves (health, metrics, an unknown path) share a connection with proxied streams', TIMEOUT, async () => {
    // Proxied streams are served on the loop through in-memory lanes; these routes go to a worker,
    // which reads and writes its lane's socket instead. Both at once, on one connection, twice
    // (the second round reuses the lanes the first left).
    const session = await connected();
    for (let round = 0; round < 2; round += 1) {
      const proxied = Array.from({ length: 5 }, () =>
        request(session, '/v1/chat/completions', { body: openaiBody(true), headers: { 'x-mock-chunks': '3' } }));
      const [health, metrics, unknown, ...answers] = await Promise.all([
        request(session, '/health', { method: 'GET' }),
        request(session, '/metrics', { method: 'GET' }),
        request(session, '/v2/nothing-here', { body: 'z'.repeat(400_000) }),  // a body the worker never reads
        ...proxied,
      ]);
      assert.equal(health.status, 200, health.body);
      assert.ok(JSON.parse(health.body).status, health.body);
      assert.equal(metrics.status, 200);
      assert.match(metrics.body, /^glmp_requests_total/m);
      assert.equal(unknown.status, 404, unknown.body);
      assert.match(JSON.parse(unknown.body).error.message, /no route/);
      for (const r of answers) assert.equal(openaiContent(r.body), 'tok0 tok1 tok2 ', `round ${round}`);
    }
    session.close();
  });

  test('errors keep their status, fields and flavour', TIMEOUT, async () => {
    const session = connect();
    const busy = await request(session, '/v1/chat/completions', { body: openaiBody(false), headers: { 'x-mock-status': '429' } });
    assert.equal(busy.status, 429);
    assert.equal(busy.headers['retry-after'], '7');
    assert.ok(JSON.parse(busy.body).error.message);
    const badJson = await request(session, '/v1/messages', { body: '{"model":' });
    assert.equal(badJson.status, 400);
    assert.equal(JSON.parse(badJson.body).type, 'error', 'Anthropic flavour');
    // Past the HTTP/1.1 server's limits (here [server] max_headers = 100): its answer, as over HTTP/1.1.
    const many = Object.fromEntries(Array.from({ length: 120 }, (_, i) => [`x-field-${i}`, 'v']));
    const big = await request(session, '/v1/chat/completions', { body: openaiBody(false), headers: many });
    assert.equal(big.status, 431, big.body);
    assert.match(JSON.parse(big.body).error.message, /header/);
    // Still usable.
    assert.equal((await request(session, '/v1/chat/completions', { body: openaiBody(false) })).status, 200);
    session.close();
  });

  test('a stream the client resets is cut upstream; the connection goes on', TIMEOUT, async () => {
    const session = connect();
    const id = requestId('h2-reset');
    await new Promise((resolve, reject) => {
      const req = session.request({
        ':method': 'POST', ':path': '/v1/chat/completions', 'content-type': 'application/json',
        'x-mock-chunks': '40', 'x-mock-delay-ms': '100', 'x-request-id': id,
      });
      req.on('data', (d) => {
        if (String(d).includes('tok1')) req.close(http2.constants.NGHTTP2_CANCEL);
      });
      req.on('close', resolve);
      req.on('error', reject);
      req.end(openaiBody(true));
    });
    const entry = await accessLogEntry(stack, id, 6_000);
    assert.equal(entry.error, 'client disconnected');
    assert.ok(entry.tokens_out < 40, `cut before the end (${entry.tokens_out} tokens)`);
    assert.equal((await request(session, '/v1/chat/completions', { body: openaiBody(false) })).status, 200);
    session.close();
  });

  test('a stream the client does not read holds only itself (flow control)', TIMEOUT, async () => {
    const session = connect();
    let got = 0;
    let resumeSlow;
    const slowDone = new Promise((resolve, reject) => {
      const req = session.request({
        ':method': 'POST', ':path': '/v1/chat/completions', 'content-type': 'application/json', 'x-mock-large-bytes': '8000000',
      });
      req.on('response', () => req.pause());  // nothing read: its window closes
      resumeSlow = () => req.resume();
      req.on('data', (d) => { got += d.length; });
      req.on('end', resolve);
      req.on('error', reject);
      req.end(openaiBody(true));
    });
    await sleep(500);
    for (let i = 0; i < 5; i += 1) {
      const r = await request(session, '/v1/chat/completions', { body: openaiBody(true), headers: { 'x-mock-chunks': '3' } });
      assert.equal(openaiContent(r.body), 'tok0 tok1 tok2 ', 'a neighbour on the same connection goes on');
    }
    resumeSlow();
    await slowDone;
    session.close();
    assert.ok(got > 8_000_000, `the slow stream got everything once read (${got} bytes)`);
  });
});

describe('HTTP/2 with [server] http2 = false', () => {
  let plain;
  before(async () => {
    plain = await startStack({ tls: { cert: pki.cert, key: pki.key }, serverExtra: 'http2 = false' });
  });
  after(async () => {
    await stopStack(plain);
  });

  test('ALPN offers only http/1.1: no HTTP/2 session', TIMEOUT, async () => {
    const session = http2.connect(plain.proxyURL, { ca });
    const outcome = await new Promise((resolve) => {
      session.once('error', (e) => resolve({ error: String(e) }));
      session.once('connect', () => resolve({ alpn: session.alpnProtocol }));
    });
    session.destroy();
    assert.notEqual(outcome.alpn, 'h2', JSON.stringify(outcome));
  });
});

describe('HTTP/2 and draining', () => {
  let own;
  before(async () => {
    own = await startStack({ tls: { cert: pki.cert, key: pki.key } });
  });
  after(async () => {
    await own.stop();  // the proxy was stopped by the test
  });

  test('SIGTERM: GOAWAY, the stream in flight completes', TIMEOUT, async () => {
    const session = http2.connect(own.proxyURL, { ca });
    session.on('error', () => {});
    const goaway = new Promise((resolve) => session.once('goaway', resolve));
    const inflight = request(session, '/v1/chat/completions', {
      body: openaiBody(true), headers: { 'x-mock-chunks': '6', 'x-mock-delay-ms': '150' },
    });
    await sleep(300);
    own.proxy.proc.kill('SIGTERM');
    await goaway;
    const r = await inflight;
    assert.equal(r.status, 200);
    assert.equal(openaiContent(r.body), 'tok0 tok1 tok2 tok3 tok4 tok5 ');
    assert.ok(r.body.includes('[DONE]'));
    session.destroy();
  });
});

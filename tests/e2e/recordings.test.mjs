// Recordings through the official SDKs: the `cache` plugin answers an identical second call from
// the first one's recording, and the `batching` plugin lets identical calls in flight follow one
// upstream call. Both, streamed and not, for the OpenAI and the Anthropic SDK. The mock's
// /__mock/stats counts the upstream calls.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { MODEL, accessLogEntry, anthropicClient, openaiClient, requestId, startStack, stopStack, userMessages } from './harness.mjs';

const TIMEOUT = { timeout: 15_000 };
const CONTENT = 'tok0 tok1 tok2 ';

// Cache first, then batching (see both READMEs); no auth, so both share entries globally.
// mode = "all": the SDK calls below send no temperature.
const PLUGINS = `
[[plugins]]
name = "cache"
[plugins.settings]
scope = "global"

[[plugins]]
name = "batching"
[plugins.settings]
scope = "global"
mode = "all"
`;

let stack;
let openai;
let anthropic;

before(async () => {
  stack = await startStack({ plugins: PLUGINS });
  openai = openaiClient(stack);
  anthropic = anthropicClient(stack);
});

after(async () => {
  await stopStack(stack);
});

async function mockStats() {
  const response = await fetch(`http://127.0.0.1:${stack.mockPort}/__mock/stats`);
  assert.equal(response.status, 200);
  return response.json();
}

// Runs `fn` and returns [its result, the number of requests the mock received meanwhile].
async function countingUpstreamCalls(fn) {
  const before = (await mockStats()).requests;
  const result = await fn();
  return [result, (await mockStats()).requests - before];
}

async function waitUntil(predicate, what, timeoutMs = 5_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

// An SDK result as JSON, without the SDK's own per-response additions (the request id).
function asJSON(value) {
  const out = JSON.parse(JSON.stringify(value));
  delete out._request_id;
  return out;
}

async function collect(stream) {
  const items = [];
  for await (const item of stream) items.push(asJSON(item));
  return items;
}

const openaiText = (chunks) => chunks.map((c) => (c.choices ?? []).map((ch) => ch.delta?.content ?? '').join('')).join('');
const anthropicText = (message) => message.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
const anthropicStreamText = (events) =>
  events
    .filter((e) => e.type === 'content_block_delta' && e.delta.type === 'text_delta')
    .map((e) => e.delta.text)
    .join('');

function checkHitHeaders(response) {
  assert.equal(response.headers.get('x-cache-status'), 'HIT');
  const age = response.headers.get('age');
  assert.match(age ?? '', /^\d+$/, `Age on a hit: ${age}`);
  assert.ok(Number(age) <= 10, `Age ${age}`);
}

// The access-log lines of a miss and its hit: the hit is marked as served from the cache and
// reports the stored response's usage.
async function checkHitLog(missId, hitId, { tokensOut = 3 } = {}) {
  const miss = await accessLogEntry(stack, missId);
  const hit = await accessLogEntry(stack, hitId);
  assert.equal(miss.origin, undefined, `miss: ${JSON.stringify(miss)}`);
  assert.equal(hit.origin, 'cache', `hit: ${JSON.stringify(hit)}`);
  assert.equal(hit.status, 200);
  assert.ok(miss.tokens_in > 0, `miss: ${JSON.stringify(miss)}`);
  assert.equal(miss.tokens_out, tokensOut, `miss: ${JSON.stringify(miss)}`);
  assert.equal(hit.tokens_in, miss.tokens_in, `hit: ${JSON.stringify(hit)}`);
  assert.equal(hit.tokens_out, miss.tokens_out, `hit: ${JSON.stringify(hit)}`);
  return { miss, hit };
}

describe('cache: the second identical call is answered from the first one', () => {
  test('OpenAI, non-streamed', TIMEOUT, async () => {
    const params = { model: MODEL, messages: userMessages('cache: openai plain') };
    const ids = [requestId('cache-openai'), requestId('cache-openai')];
    const [[first, second], calls] = await countingUpstreamCalls(async () => [
      await openai.chat.completions.create(params, { headers: { 'X-Request-ID': ids[0] } }).withResponse(),
      await openai.chat.completions.create(params, { headers: { 'X-Request-ID': ids[1] } }).withResponse(),
    ]);

    assert.equal(first.response.headers.get('x-cache-status'), 'MISS');
    checkHitHeaders(second.response);
    assert.equal(first.data.choices[0].message.content, CONTENT);
    // A byte-for-byte replay: the same id, created, content and usage.
    assert.deepEqual(asJSON(second.data), asJSON(first.data));
    assert.equal(second.data.usage.completion_tokens, 3);
    assert.ok(second.data.usage.prompt_tokens > 0);
    assert.equal(calls, 1, 'the mock saw one request only');

    const { hit } = await checkHitLog(ids[0], ids[1]);
    assert.equal(hit.tokens_in, second.data.usage.prompt_tokens);
  });

  test('OpenAI, streamed without include_usage: no usage-only chunk on the hit either', TIMEOUT, async () => {
    const params = { model: MODEL, messages: userMessages('cache: openai stream'), stream: true };
    const ids = [requestId('cache-openai-stream'), requestId('cache-openai-stream')];
    const call = async (id) => {
      const { data, response } = await openai.chat.completions.create(params, { headers: { 'X-Request-ID': id } }).withResponse();
      return { response, chunks: await collect(data) };
    };
    const [[first, second], calls] = await countingUpstreamCalls(async () => [await call(ids[0]), await call(ids[1])]);

    assert.equal(first.response.headers.get('x-cache-status'), 'MISS');
    checkHitHeaders(second.response);
    assert.equal(openaiText(first.chunks), CONTENT);
    assert.deepEqual(second.chunks, first.chunks);
    // The upstream stream the proxy recorded carries the usage chunk (the proxy asks for it);
    // this client did not ask for it, on the miss as on the hit.
    for (const chunk of [...first.chunks, ...second.chunks]) {
      assert.ok(chunk.choices.length > 0, `chunk with empty choices reached the client: ${JSON.stringify(chunk)}`);
      assert.ok(chunk.usage == null, `usage reached a client that did not ask for it: ${JSON.stringify(chunk)}`);
    }
    assert.equal(second.chunks.at(-1).choices[0].finish_reason, 'stop');
    assert.equal(calls, 1, 'the mock saw one request only');

    // The usage is still accounted for the hit.
    await checkHitLog(ids[0], ids[1]);
  });

  test('OpenAI, streamed with include_usage: the usage chunk arrives on the hit', TIMEOUT, async () => {
    const params = {
      model: MODEL,
      messages: userMessages('cache: openai stream usage'),
      stream: true,
      stream_options: { include_usage: true },
    };
    const ids = [requestId('cache-openai-usage'), requestId('cache-openai-usage')];
    const call = async (id) => {
      const { data, response } = await openai.chat.completions.create(params, { headers: { 'X-Request-ID': id } }).withResponse();
      return { response, chunks: await collect(data) };
    };
    const [[first, second], calls] = await countingUpstreamCalls(async () => [await call(ids[0]), await call(ids[1])]);

    assert.equal(first.response.headers.get('x-cache-status'), 'MISS');
    checkHitHeaders(second.response);
    assert.equal(openaiText(second.chunks), CONTENT);
    assert.deepEqual(second.chunks, first.chunks);
    const usageChunks = second.chunks.filter((c) => c.usage);
    assert.equal(usageChunks.length, 1, 'exactly one chunk carries usage');
    assert.deepEqual(second.chunks.at(-1).choices, []);
    assert.equal(second.chunks.at(-1).usage.completion_tokens, 3);
    assert.ok(second.chunks.at(-1).usage.prompt_tokens > 0);
    assert.equal(calls, 1, 'the mock saw one request only');

    const { hit } = await checkHitLog(ids[0], ids[1]);
    assert.equal(hit.tokens_in, second.chunks.at(-1).usage.prompt_tokens);
  });

  test('OpenAI, streamed: each client gets its own include_usage choice, whatever the cache status', TIMEOUT, async () => {
    // Whether the two bodies share an entry depends on whether the key is taken before or after
    // the proxy adds include_usage; either way every client must get what it asked for.
    const base = { model: MODEL, messages: userMessages('cache: openai stream mixed'), stream: true };
    const call = async (params) => {
      const { data, response } = await openai.chat.completions.create(params).withResponse();
      return { status: response.headers.get('x-cache-status'), chunks: await collect(data) };
    };
    const without1 = await call(base);
    const withUsage = await call({ ...base, stream_options: { include_usage: true } });
    const without2 = await call(base);

    assert.equal(without1.status, 'MISS');
    assert.ok(['MISS', 'HIT'].includes(withUsage.status), withUsage.status);
    assert.equal(without2.status, 'HIT');
    for (const r of [without1, withUsage, without2]) assert.equal(openaiText(r.chunks), CONTENT);
    for (const chunk of [...without1.chunks, ...without2.chunks]) assert.ok(chunk.usage == null, JSON.stringify(chunk));
    assert.equal(withUsage.chunks.filter((c) => c.usage).length, 1);
    assert.equal(withUsage.chunks.at(-1).usage.completion_tokens, 3);
  });

  test('Anthropic, non-streamed', TIMEOUT, async () => {
    const params = { model: MODEL, max_tokens: 64, messages: userMessages('cache: anthropic plain') };
    const ids = [requestId('cache-anthropic'), requestId('cache-anthropic')];
    const [[first, second], calls] = await countingUpstreamCalls(async () => [
      await anthropic.messages.create(params, { headers: { 'X-Request-ID': ids[0] } }).withResponse(),
      await anthropic.messages.create(params, { headers: { 'X-Request-ID': ids[1] } }).withResponse(),
    ]);

    assert.equal(first.response.headers.get('x-cache-status'), 'MISS');
    checkHitHeaders(second.response);
    assert.equal(anthropicText(first.data), CONTENT);
    assert.deepEqual(asJSON(second.data), asJSON(first.data));
    assert.equal(second.data.usage.output_tokens, 3);
    assert.ok(second.data.usage.input_tokens > 0);
    assert.equal(calls, 1, 'the mock saw one request only');

    const { hit } = await checkHitLog(ids[0], ids[1]);
    assert.equal(hit.tokens_in, second.data.usage.input_tokens);
  });

  test('Anthropic, streamed (raw events and messages.stream())', TIMEOUT, async () => {
    const params = { model: MODEL, max_tokens: 64, messages: userMessages('cache: anthropic stream') };
    const ids = [requestId('cache-anthropic-stream'), requestId('cache-anthropic-stream')];
    const [[first, second, third], calls] = await countingUpstreamCalls(async () => {
      const raw = async (id) => {
        const { data, response } = await anthropic.messages
          .create({ ...params, stream: true }, { headers: { 'X-Request-ID': id } })
          .withResponse();
        return { response, events: await collect(data) };
      };
      const first = await raw(ids[0]);
      const second = await raw(ids[1]);
      // The SDK's stream helper on the same entry.
      const helper = anthropic.messages.stream(params);
      const { response } = await helper.withResponse();
      const message = await helper.finalMessage();
      return [first, second, { response, message }];
    });

    assert.equal(first.response.headers.get('x-cache-status'), 'MISS');
    checkHitHeaders(second.response);
    checkHitHeaders(third.response);
    assert.equal(anthropicStreamText(first.events), CONTENT);
    assert.deepEqual(second.events, first.events);
    assert.equal(second.events.at(-1).type, 'message_stop');
    assert.ok(second.events[0].message.usage.input_tokens > 0);
    assert.equal(second.events.find((e) => e.type === 'message_delta').usage.output_tokens, 3);
    assert.equal(anthropicText(third.message), CONTENT);
    assert.equal(third.message.id, first.events[0].message.id);
    assert.equal(third.message.usage.output_tokens, 3);
    assert.equal(third.message.usage.input_tokens, first.events[0].message.usage.input_tokens);
    assert.equal(calls, 1, 'the mock saw one request only');

    await checkHitLog(ids[0], ids[1]);
  });
});

// Starts the leader with `slow` (mock control headers that keep its upstream call running),
// waits until the mock is serving it, then starts `followers` identical calls. `call(headers, id)`
// makes one SDK call to the end and returns { status (X-Cache-Status), text, result }.
async function flight(call, slow, followers = 3) {
  const ids = Array.from({ length: followers + 1 }, () => requestId('flight'));
  const before = await mockStats();
  const leader = call(slow, ids[0]);
  // A failed leader must not leave an unhandled rejection while we wait.
  leader.catch(() => {});
  await waitUntil(async () => {
    const s = await mockStats();
    return s.requests > before.requests && s.active > 0;
  }, 'the leader to reach the mock');
  const all = await Promise.all([leader, ...ids.slice(1).map((id) => call({}, id))]);
  const calls = (await mockStats()).requests - before.requests;
  const entries = await Promise.all(ids.map((id) => accessLogEntry(stack, id)));
  return { all, calls, entries };
}

function checkFlight({ all, calls, entries }) {
  const statuses = all.map((r) => r.status);
  assert.deepEqual(statuses, ['MISS', 'COALESCED', 'COALESCED', 'COALESCED'], `X-Cache-Status: ${statuses}`);
  for (const r of all) assert.equal(r.text, CONTENT);
  assert.equal(calls, 1, 'the mock saw one request only');
  const [leader, ...rest] = entries;
  assert.equal(leader.origin, undefined, `leader: ${JSON.stringify(leader)}`);
  assert.equal(leader.tokens_out, 3);
  for (const e of rest) {
    assert.equal(e.origin, 'coalesced', `follower: ${JSON.stringify(e)}`);
    assert.equal(e.status, 200);
    assert.equal(e.tokens_in, leader.tokens_in, `follower: ${JSON.stringify(e)}`);
    assert.equal(e.tokens_out, leader.tokens_out, `follower: ${JSON.stringify(e)}`);
  }
}

// The mock slows a stream per content event; a non-streamed answer is held back with a stall.
const SLOW_STREAM = { 'x-mock-delay-ms': '500' };
const SLOW_PLAIN = { 'x-mock-stall-ms': '1500' };

describe('batching: identical calls in flight follow one upstream call', () => {
  test('OpenAI, non-streamed', TIMEOUT, async () => {
    const params = { model: MODEL, messages: userMessages('flight: openai plain') };
    const call = async (headers, id) => {
      const { data, response } = await openai.chat.completions
        .create(params, { headers: { ...headers, 'X-Request-ID': id } })
        .withResponse();
      return { status: response.headers.get('x-cache-status'), text: data.choices[0].message.content, result: asJSON(data) };
    };
    const result = await flight(call, SLOW_PLAIN);
    checkFlight(result);
    for (const r of result.all) assert.deepEqual(r.result, result.all[0].result);
    assert.equal(result.all[0].result.usage.completion_tokens, 3);

    // The leader's response was stored: the next identical call is a hit, still without an
    // upstream call.
    const [next, calls] = await countingUpstreamCalls(() => call({}, requestId('after-flight')));
    assert.equal(next.status, 'HIT');
    assert.deepEqual(next.result, result.all[0].result);
    assert.equal(calls, 0);
  });

  test('OpenAI, streamed', TIMEOUT, async () => {
    const params = { model: MODEL, messages: userMessages('flight: openai stream'), stream: true };
    const call = async (headers, id) => {
      const { data, response } = await openai.chat.completions
        .create(params, { headers: { ...headers, 'X-Request-ID': id } })
        .withResponse();
      const chunks = await collect(data);
      return { status: response.headers.get('x-cache-status'), text: openaiText(chunks), result: chunks };
    };
    const result = await flight(call, SLOW_STREAM);
    checkFlight(result);
    for (const r of result.all) {
      assert.deepEqual(r.result, result.all[0].result);
      // Nobody asked for include_usage: no usage-only chunk for the leader or the followers.
      for (const chunk of r.result) assert.ok(chunk.usage == null && chunk.choices.length > 0, JSON.stringify(chunk));
    }
  });

  test('Anthropic, non-streamed', TIMEOUT, async () => {
    const params = { model: MODEL, max_tokens: 64, messages: userMessages('flight: anthropic plain') };
    const call = async (headers, id) => {
      const { data, response } = await anthropic.messages
        .create(params, { headers: { ...headers, 'X-Request-ID': id } })
        .withResponse();
      return { status: response.headers.get('x-cache-status'), text: anthropicText(data), result: asJSON(data) };
    };
    const result = await flight(call, SLOW_PLAIN);
    checkFlight(result);
    for (const r of result.all) assert.deepEqual(r.result, result.all[0].result);
    assert.equal(result.all[0].result.usage.output_tokens, 3);
  });

  test('Anthropic, streamed (messages.stream())', TIMEOUT, async () => {
    const params = { model: MODEL, max_tokens: 64, messages: userMessages('flight: anthropic stream') };
    const call = async (headers, id) => {
      const stream = anthropic.messages.stream(params, { headers: { ...headers, 'X-Request-ID': id } });
      const { response } = await stream.withResponse();
      const message = await stream.finalMessage();
      return { status: response.headers.get('x-cache-status'), text: anthropicText(message), result: asJSON(message) };
    };
    const result = await flight(call, SLOW_STREAM);
    checkFlight(result);
    for (const r of result.all) assert.deepEqual(r.result, result.all[0].result);
    assert.equal(result.all[0].result.usage.output_tokens, 3);
    assert.ok(result.all[0].result.usage.input_tokens > 0);
  });
});

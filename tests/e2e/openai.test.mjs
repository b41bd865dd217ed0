// The official OpenAI SDK through the proxy gives the same answers as talking to the upstream
// directly: chat completions (plain and streamed), usage accounting, model listing.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { MODEL, UPSTREAM_KEY, accessLogEntry, openaiClient, requestId, startStack, stopStack, userMessages } from './harness.mjs';

const TIMEOUT = { timeout: 15_000 };

let stack;
let proxied;
let direct;

before(async () => {
  stack = await startStack();
  proxied = openaiClient(stack);
  direct = openaiClient(stack, { direct: true });
});

after(async () => {
  await stopStack(stack);
});

// Iterates an SDK stream; returns the chunks and the concatenated delta content.
async function collect(stream) {
  const chunks = [];
  let content = '';
  for await (const chunk of stream) {
    chunks.push(chunk);
    for (const choice of chunk.choices ?? []) content += choice.delta?.content ?? '';
  }
  return { chunks, content };
}

// The usage the mock reports for a streamed request with exactly this body (sent directly).
async function directStreamUsage(body) {
  const response = await fetch(`${stack.mockOpenAIURL}/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${UPSTREAM_KEY}`, 'content-type': 'application/json' },
    body,
  });
  assert.equal(response.status, 200);
  let usage = null;
  for (const line of (await response.text()).split('\n')) {
    if (!line.startsWith('data: {')) continue;
    const data = JSON.parse(line.slice('data: '.length));
    if (data.usage) usage = data.usage;
  }
  assert.ok(usage, 'the mock reported no usage for the body the proxy sent');
  return usage;
}

function plainUsage(u) {
  assert.ok(u, 'usage is missing');
  return { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens, total_tokens: u.total_tokens };
}

describe('OpenAI SDK through the proxy', () => {
  // The proxy forces model "glm-4.7"; sending that model keeps the upstream body byte-identical
  // (the mock's prompt_tokens depend on the body size).
  const params = { model: MODEL, messages: userMessages('Say something, please.') };

  test('non-streaming chat completion: same content and usage as direct', TIMEOUT, async () => {
    const viaProxy = await proxied.chat.completions.create(params);
    const viaDirect = await direct.chat.completions.create(params);

    assert.equal(viaProxy.object, 'chat.completion');
    assert.equal(viaProxy.choices.length, 1);
    assert.equal(viaProxy.choices[0].message.content, 'tok0 tok1 tok2 ');
    assert.equal(viaProxy.choices[0].message.content, viaDirect.choices[0].message.content);
    assert.equal(viaProxy.choices[0].finish_reason, 'stop');
    assert.equal(viaProxy.model, MODEL);
    assert.deepEqual(plainUsage(viaProxy.usage), plainUsage(viaDirect.usage));
    assert.equal(viaProxy.usage.completion_tokens, 3);
    assert.ok(viaProxy.usage.prompt_tokens > 0);
  });

  test('streaming without stream_options: same content, no usage-only chunk, tokens counted', TIMEOUT, async () => {
    const id = requestId('openai-stream');
    const viaProxy = await collect(
      await proxied.chat.completions.create({ ...params, stream: true }, { headers: { 'X-Request-ID': id } }),
    );
    const viaDirect = await collect(await direct.chat.completions.create({ ...params, stream: true }));

    assert.equal(viaProxy.content, 'tok0 tok1 tok2 ');
    assert.equal(viaProxy.content, viaDirect.content);
    // The proxy asks the upstream for usage, but this client did not: it must not see the extra
    // chunk (empty choices + usage), nor any usage at all.
    for (const chunk of viaProxy.chunks) {
      assert.ok(Array.isArray(chunk.choices) && chunk.choices.length > 0, `chunk with empty choices reached the client: ${JSON.stringify(chunk)}`);
      assert.ok(chunk.usage == null, `usage reached a client that did not ask for it: ${JSON.stringify(chunk)}`);
    }
    assert.equal(viaProxy.chunks.length, viaDirect.chunks.length, 'proxy and direct streams have different chunk counts');
    assert.equal(viaProxy.chunks.at(-1).choices[0].finish_reason, 'stop');

    // The proxy asked the upstream for usage: the body it forwards (echoed by the mock) carries
    // stream_options.include_usage=true, and the upstream credential replaces the client's.
    const echo = await (
      await proxied.chat.completions.create({ ...params, stream: true }, { headers: { 'x-mock-echo': '1' } }).asResponse()
    ).json();
    assert.deepEqual(JSON.parse(echo.body).stream_options, { include_usage: true }, `upstream body: ${echo.body}`);
    assert.equal(echo.headers.authorization, `Bearer ${UPSTREAM_KEY}`);

    // Streamed tokens are counted: the access log holds the usage the upstream reports for
    // exactly that body, and the same completion tokens as a direct non-streaming call.
    const upstreamUsage = await directStreamUsage(echo.body);
    const plain = await direct.chat.completions.create(params);
    const entry = await accessLogEntry(stack, id);
    assert.equal(entry.status, 200);
    assert.equal(entry.stream, true);
    assert.equal(entry.tokens_out, plain.usage.completion_tokens, `access log: ${JSON.stringify(entry)}`);
    assert.equal(entry.tokens_out, upstreamUsage.completion_tokens);
    assert.equal(entry.tokens_in, upstreamUsage.prompt_tokens, `access log: ${JSON.stringify(entry)}`);
    assert.ok(entry.tokens_in >= plain.usage.prompt_tokens);
  });

  test('streaming with stream_options.include_usage: the client gets the usage chunk', TIMEOUT, async () => {
    const streamParams = { ...params, stream: true, stream_options: { include_usage: true } };
    const id = requestId('openai-stream-usage');
    const viaProxy = await collect(await proxied.chat.completions.create(streamParams, { headers: { 'X-Request-ID': id } }));
    const viaDirect = await collect(await direct.chat.completions.create(streamParams));

    assert.equal(viaProxy.content, 'tok0 tok1 tok2 ');
    assert.equal(viaProxy.content, viaDirect.content);
    const usageChunks = viaProxy.chunks.filter((c) => c.usage);
    assert.equal(usageChunks.length, 1, 'exactly one chunk carries usage');
    const last = viaProxy.chunks.at(-1);
    assert.equal(last, usageChunks[0], 'the usage chunk is the last one');
    assert.deepEqual(last.choices, []);
    assert.deepEqual(plainUsage(last.usage), plainUsage(viaDirect.chunks.at(-1).usage));
    assert.equal(last.usage.completion_tokens, 3);

    const entry = await accessLogEntry(stack, id);
    assert.equal(entry.tokens_in, last.usage.prompt_tokens);
    assert.equal(entry.tokens_out, last.usage.completion_tokens);
  });

  test('models.list() returns the upstream models', TIMEOUT, async () => {
    const ids = async (client) => {
      const out = [];
      for await (const model of client.models.list()) out.push(model.id);
      return out;
    };
    const viaProxy = await ids(proxied);
    assert.deepEqual(viaProxy, ['glm-4.7', 'glm-4.5-air']);
    assert.deepEqual(viaProxy, await ids(direct));
  });
});

// The official Anthropic SDK through the proxy gives the same answers as talking to the upstream
// directly: messages (plain, streamed with the helper and as raw events) and count_tokens.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { MODEL, accessLogEntry, anthropicClient, requestId, startStack, stopStack, userMessages } from './harness.mjs';

const TIMEOUT = { timeout: 15_000 };

let stack;
let proxied;
let direct;

before(async () => {
  stack = await startStack();
  proxied = anthropicClient(stack);
  direct = anthropicClient(stack, { direct: true });
});

after(async () => {
  await stopStack(stack);
});

const text = (message) => message.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
const tokens = (usage) => ({ input_tokens: usage.input_tokens, output_tokens: usage.output_tokens });

describe('Anthropic SDK through the proxy', () => {
  // Same model as the proxy forces, so the upstream body is byte-identical to the direct one.
  const params = { model: MODEL, max_tokens: 64, messages: userMessages('Say something, please.') };

  test('non-streaming message: same content and usage as direct', TIMEOUT, async () => {
    const id = requestId('anthropic');
    const viaProxy = await proxied.messages.create(params, { headers: { 'X-Request-ID': id } });
    const viaDirect = await direct.messages.create(params);

    assert.equal(viaProxy.type, 'message');
    assert.equal(viaProxy.role, 'assistant');
    assert.equal(text(viaProxy), 'tok0 tok1 tok2 ');
    assert.equal(text(viaProxy), text(viaDirect));
    assert.equal(viaProxy.stop_reason, 'end_turn');
    assert.deepEqual(tokens(viaProxy.usage), tokens(viaDirect.usage));
    assert.equal(viaProxy.usage.output_tokens, 3);
    assert.ok(viaProxy.usage.input_tokens > 0);

    const entry = await accessLogEntry(stack, id);
    assert.equal(entry.status, 200);
    assert.equal(entry.stream, false);
    assert.equal(entry.tokens_in, viaProxy.usage.input_tokens);
    assert.equal(entry.tokens_out, viaProxy.usage.output_tokens);
  });

  test('messages.stream() / finalMessage(): same text and usage as direct', TIMEOUT, async () => {
    const id = requestId('anthropic-stream');
    const proxyStream = proxied.messages.stream(params, { headers: { 'X-Request-ID': id } });
    let deltas = '';
    proxyStream.on('text', (t) => {
      deltas += t;
    });
    const viaProxy = await proxyStream.finalMessage();
    const viaDirect = await direct.messages.stream(params).finalMessage();

    assert.equal(text(viaProxy), 'tok0 tok1 tok2 ');
    assert.equal(deltas, text(viaProxy));
    assert.equal(text(viaProxy), text(viaDirect));
    assert.equal(viaProxy.stop_reason, 'end_turn');
    assert.deepEqual(tokens(viaProxy.usage), tokens(viaDirect.usage));
    assert.equal(viaProxy.usage.output_tokens, 3);
    assert.ok(viaProxy.usage.input_tokens > 0);

    // Streamed tokens are counted (message_start input + message_delta output, not summed twice).
    const entry = await accessLogEntry(stack, id);
    assert.equal(entry.status, 200);
    assert.equal(entry.stream, true);
    assert.equal(entry.tokens_in, viaProxy.usage.input_tokens, `access log: ${JSON.stringify(entry)}`);
    assert.equal(entry.tokens_out, viaProxy.usage.output_tokens, `access log: ${JSON.stringify(entry)}`);
  });

  test('raw stream events: message_start … message_stop, same as direct', TIMEOUT, async () => {
    const events = async (client) => {
      const out = [];
      for await (const event of await client.messages.create({ ...params, stream: true })) out.push(event);
      return out;
    };
    const viaProxy = await events(proxied);
    const viaDirect = await events(direct);

    const types = viaProxy.map((e) => e.type);
    assert.deepEqual(types, [
      'message_start',
      'content_block_start',
      // The SDK passes ping events through like the others.
      ...(types.includes('ping') ? ['ping'] : []),
      'content_block_delta',
      'content_block_delta',
      'content_block_delta',
      'content_block_stop',
      'message_delta',
      'message_stop',
    ]);
    assert.deepEqual(types, viaDirect.map((e) => e.type));
    const streamed = viaProxy
      .filter((e) => e.type === 'content_block_delta' && e.delta.type === 'text_delta')
      .map((e) => e.delta.text)
      .join('');
    assert.equal(streamed, 'tok0 tok1 tok2 ');
    assert.deepEqual(viaProxy[0].message.usage, viaDirect[0].message.usage);
    const messageDelta = viaProxy.find((e) => e.type === 'message_delta');
    assert.equal(messageDelta.usage.output_tokens, 3);
    assert.equal(messageDelta.delta.stop_reason, 'end_turn');
  });

  test('count_tokens returns input_tokens through the proxy', TIMEOUT, async () => {
    const countParams = { model: MODEL, messages: userMessages('How many tokens is this?') };
    const viaProxy = await proxied.messages.countTokens(countParams);
    const viaDirect = await direct.messages.countTokens(countParams);
    assert.equal(typeof viaProxy.input_tokens, 'number');
    assert.ok(viaProxy.input_tokens > 0);
    assert.equal(viaProxy.input_tokens, viaDirect.input_tokens);
  });
});

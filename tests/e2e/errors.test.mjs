// Upstream failures surface as the SDKs' own errors: an HTTP error status becomes the matching
// error class, and a connection reset mid-stream makes stream iteration throw (never hang, never
// end as if the answer were complete).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

import { MODEL, accessLogEntry, anthropicClient, openaiClient, requestId, startStack, stopStack, userMessages, withTimeout } from './harness.mjs';

const TIMEOUT = { timeout: 15_000 };
// A hang must fail the test well before the SDK's own request timeout.
const GUARD_MS = 5_000;

let stack;

before(async () => {
  stack = await startStack();
});

after(async () => {
  await stopStack(stack);
});

const openaiParams = { model: MODEL, messages: userMessages('fail, please') };
const anthropicParams = { model: MODEL, max_tokens: 64, messages: userMessages('fail, please') };

// Iterates `stream`, collecting text with `textOf`; resolves with what was received and the
// error the iteration threw (null when it ended normally).
async function drain(stream, textOf) {
  let text = '';
  try {
    for await (const item of stream) text += textOf(item) ?? '';
  } catch (error) {
    return { text, error };
  }
  return { text, error: null };
}

describe('upstream errors surface as SDK errors', () => {
  test('OpenAI SDK: upstream 429 throws RateLimitError', TIMEOUT, async () => {
    const client = openaiClient(stack);
    await assert.rejects(
      withTimeout(client.chat.completions.create(openaiParams, { headers: { 'x-mock-status': '429' } }), GUARD_MS, '429 request'),
      (err) => {
        assert.ok(err instanceof OpenAI.RateLimitError, `expected RateLimitError, got ${err?.constructor?.name}: ${err}`);
        assert.equal(err.status, 429);
        assert.equal(err.type, 'rate_limit_error');
        return true;
      },
    );
  });

  test('Anthropic SDK: upstream 429 throws RateLimitError', TIMEOUT, async () => {
    const client = anthropicClient(stack);
    await assert.rejects(
      withTimeout(client.messages.create(anthropicParams, { headers: { 'x-mock-status': '429' } }), GUARD_MS, '429 request'),
      (err) => {
        assert.ok(err instanceof Anthropic.RateLimitError, `expected RateLimitError, got ${err?.constructor?.name}: ${err}`);
        assert.equal(err.status, 429);
        assert.equal(err.error?.error?.type, 'rate_limit_error');
        return true;
      },
    );
  });

  test('OpenAI SDK: a mid-stream upstream reset makes iteration throw', TIMEOUT, async () => {
    const client = openaiClient(stack);
    const id = requestId('openai-reset');
    const result = await withTimeout(
      (async () => {
        const stream = await client.chat.completions.create(
          { ...openaiParams, stream: true },
          { headers: { 'x-mock-reset-after': '2', 'X-Request-ID': id } },
        );
        return drain(stream, (chunk) => chunk.choices?.[0]?.delta?.content);
      })(),
      GUARD_MS,
      'OpenAI stream after an upstream reset (hung?)',
    );
    assert.ok(result.error, `stream ended silently after "${result.text}"`);
    assert.ok(result.error instanceof OpenAI.APIError, `expected an APIError, got ${result.error}`);
    assert.ok(!result.text.includes('tok2'), `content after the reset point: "${result.text}"`);
    const entry = await accessLogEntry(stack, id);
    assert.ok(entry.error, `access log has no error for the reset stream: ${JSON.stringify(entry)}`);
  });

  test('Anthropic SDK: a mid-stream upstream reset makes iteration throw', TIMEOUT, async () => {
    const client = anthropicClient(stack);
    const id = requestId('anthropic-reset');
    const result = await withTimeout(
      (async () => {
        const stream = await client.messages.create(
          { ...anthropicParams, stream: true },
          { headers: { 'x-mock-reset-after': '2', 'X-Request-ID': id } },
        );
        return drain(stream, (e) => (e.type === 'content_block_delta' ? e.delta.text : ''));
      })(),
      GUARD_MS,
      'Anthropic stream after an upstream reset (hung?)',
    );
    assert.ok(result.error, `stream ended silently after "${result.text}"`);
    assert.ok(result.error instanceof Anthropic.APIError, `expected an APIError, got ${result.error}`);
    assert.ok(!result.text.includes('tok2'), `content after the reset point: "${result.text}"`);
    const entry = await accessLogEntry(stack, id);
    assert.ok(entry.error, `access log has no error for the reset stream: ${JSON.stringify(entry)}`);
  });

  test('Anthropic SDK: messages.stream() rejects finalMessage() on a mid-stream reset', TIMEOUT, async () => {
    const client = anthropicClient(stack);
    const stream = client.messages.stream(anthropicParams, { headers: { 'x-mock-reset-after': '2' } });
    stream.on('error', () => {});  // the rejection below is what the test checks
    await assert.rejects(withTimeout(stream.finalMessage(), GUARD_MS, 'finalMessage() after an upstream reset (hung?)'), (err) => {
      assert.ok(err instanceof Anthropic.AnthropicError, `expected an AnthropicError, got ${err}`);
      assert.doesNotMatch(String(err.message), /timed out after/);
      return true;
    });
  });
});

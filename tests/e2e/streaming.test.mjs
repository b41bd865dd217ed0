// Streams arrive incrementally through the proxy: every delta is relayed when the upstream
// produces it, not buffered until the end (the old proxy's bug).

import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { after, before, describe, test } from 'node:test';

import { MODEL, anthropicClient, openaiClient, startStack, stopStack, userMessages } from './harness.mjs';

const CHUNKS = 5;
const DELAY_MS = 150;
// The mock sleeps DELAY_MS before each of the CHUNKS pieces, so the first and the last delta are
// (CHUNKS - 1) * DELAY_MS = 600 ms apart at the source; a buffering proxy delivers them together.
const MIN_SPREAD_MS = 400;
const mockHeaders = { 'x-mock-chunks': String(CHUNKS), 'x-mock-delay-ms': String(DELAY_MS) };
const TIMEOUT = { timeout: 15_000 };

let stack;

before(async () => {
  stack = await startStack();
});

after(async () => {
  await stopStack(stack);
});

function checkArrivals(arrivals, label) {
  const detail = `${label}: arrivals (ms after the first) ${JSON.stringify(arrivals.map((a) => Math.round(a.at - arrivals[0].at)))}`;
  assert.equal(arrivals.length, CHUNKS, detail);
  assert.equal(arrivals.map((a) => a.text).join(''), 'tok0 tok1 tok2 tok3 tok4 ', detail);
  const spread = arrivals.at(-1).at - arrivals[0].at;
  assert.ok(spread >= MIN_SPREAD_MS, `the first delta arrived only ${Math.round(spread)} ms before the last; ${detail}`);
}

describe('streams arrive incrementally through the proxy', () => {
  test('OpenAI SDK', TIMEOUT, async () => {
    const client = openaiClient(stack);
    const stream = await client.chat.completions.create(
      { model: MODEL, messages: userMessages('stream slowly'), stream: true },
      { headers: mockHeaders },
    );
    const arrivals = [];
    for await (const chunk of stream) {
      const text = chunk.choices?.[0]?.delta?.content;
      if (text) arrivals.push({ at: performance.now(), text });
    }
    checkArrivals(arrivals, 'openai');
  });

  test('Anthropic SDK', TIMEOUT, async () => {
    const client = anthropicClient(stack);
    const stream = await client.messages.create(
      { model: MODEL, max_tokens: 64, messages: userMessages('stream slowly'), stream: true },
      { headers: mockHeaders },
    );
    const arrivals = [];
    for await (const event of stream) {
      if (event.type === 'content_block_delta' && event.delta.type === 'text_delta') {
        arrivals.push({ at: performance.now(), text: event.delta.text });
      }
    }
    checkArrivals(arrivals, 'anthropic');
  });
});

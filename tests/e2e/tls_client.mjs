// Run by tls.test.mjs in a child process, so that NODE_EXTRA_CA_CERTS (read once, when Node
// starts) can name the test CA: both official SDKs call the proxy at GLMP_E2E_PROXY_URL
// (https://…), streamed and not, and the mock directly (plain http) for comparison. Prints one
// JSON object: per call its result, or { error } with the error's chain of causes.

import { performance } from 'node:perf_hooks';

import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

const proxyURL = process.env.GLMP_E2E_PROXY_URL;
const mockURL = process.env.GLMP_E2E_MOCK_URL;
const model = process.env.GLMP_E2E_MODEL;
const upstreamKey = process.env.GLMP_E2E_UPSTREAM_KEY;
const ids = JSON.parse(process.env.GLMP_E2E_IDS);
const streamHeaders = { 'x-mock-chunks': '5', 'x-mock-delay-ms': '150' };
const messages = [{ role: 'user', content: 'Hello over TLS' }];

function describeError(err) {
  const parts = [];
  for (let e = err, depth = 0; e && depth < 6; e = e.cause, depth += 1) {
    parts.push([e.name, e.code, e.message].filter(Boolean).join(' '));
  }
  return parts.join(' <- ');
}

async function attempt(fn) {
  try {
    return await fn();
  } catch (err) {
    return { error: describeError(err) };
  }
}

const opts = { maxRetries: 0, timeout: 10_000 };
const openai = new OpenAI({ baseURL: `${proxyURL}/v1`, apiKey: 'sk-e2e-client-key', ...opts });
const anthropic = new Anthropic({ baseURL: proxyURL, apiKey: 'sk-ant-e2e-client-key', ...opts });
const openaiDirect = new OpenAI({ baseURL: `${mockURL}/api/coding/paas/v4`, apiKey: upstreamKey, ...opts });
const anthropicDirect = new Anthropic({ baseURL: `${mockURL}/api/anthropic`, apiKey: upstreamKey, ...opts });

const out = {};
out.openaiPlain = await attempt(async () => {
  const r = await openai.chat.completions.create({ model, messages }, { headers: { 'x-request-id': ids.openaiPlain } });
  return { content: r.choices[0].message.content, usage: r.usage };
});
out.openaiStream = await attempt(async () => {
  const stream = await openai.chat.completions.create(
    { model, messages, stream: true },
    { headers: { ...streamHeaders, 'x-request-id': ids.openaiStream } },
  );
  const arrivals = [];
  for await (const chunk of stream) {
    const text = chunk.choices?.[0]?.delta?.content;
    if (text) arrivals.push({ at: performance.now(), text });
  }
  return { arrivals };
});
out.anthropicPlain = await attempt(async () => {
  const r = await anthropic.messages.create({ model, max_tokens: 64, messages }, { headers: { 'x-request-id': ids.anthropicPlain } });
  return { text: r.content.map((b) => b.text ?? '').join(''), usage: r.usage };
});
out.anthropicStream = await attempt(async () => {
  const stream = anthropic.messages.stream(
    { model, max_tokens: 64, messages },
    { headers: { ...streamHeaders, 'x-request-id': ids.anthropicStream } },
  );
  const arrivals = [];
  stream.on('text', (text) => arrivals.push({ at: performance.now(), text }));
  const final = await stream.finalMessage();
  return { arrivals, text: final.content.map((b) => b.text ?? '').join(''), stopReason: final.stop_reason };
});
if (mockURL) {
  out.openaiDirect = await attempt(async () => {
    const r = await openaiDirect.chat.completions.create({ model, messages });
    return { content: r.choices[0].message.content, usage: r.usage };
  });
  out.anthropicDirect = await attempt(async () => {
    const r = await anthropicDirect.messages.create({ model, max_tokens: 64, messages });
    return { text: r.content.map((b) => b.text ?? '').join(''), usage: r.usage };
  });
}
process.stdout.write(JSON.stringify(out));

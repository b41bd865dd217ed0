// The dashboard page in a real browser: Debian's chromium (headless) driven by playwright-core,
// against the real glm-proxy (dashboard, profiling, auth, ratelimit, cache) and mock-upstream,
// while a background loop sends OpenAI and Anthropic requests through the proxy (streamed and not,
// cache hits, upstream errors, unknown keys). See README.md.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { MODEL, anthropicClient, openaiClient, startStack, stopStack, userMessages } from '../e2e/harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const OUT_DIR = resolve(process.env.GLMP_BROWSER_OUT || join(here, 'out'));
const CHROMIUM = process.env.GLMP_CHROMIUM || '/usr/bin/chromium';
const ADMIN_TOKEN = 'browser-test-admin-token-0123456789';
const KEY_NAME = 'browser-test-key';
const WAIT_MS = 30_000;
const TEST = { timeout: 60_000 };
const CSP_DIRECTIVES = [
  "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
  "connect-src 'self'", "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
];
const ASSETS = ['/dashboard', '/dashboard/dashboard.js', '/dashboard/dashboard.css', '/dashboard/uPlot.iife.min.js', '/dashboard/uPlot.min.css'];

const PLUGINS = `
[[plugins]]
name = "dashboard"
[plugins.settings]
history = "10m"
top_keys_refresh = "1s"

[[plugins]]
name = "profiling"
[plugins.settings]
# Every request of the run is kept: the slowest-requests table may list one from the first
# seconds, and the default per-key bound (200) would evict its profile on a slow machine.
max_records = 50000
per_key_max = 50000

[[plugins]]
name = "auth"

[[plugins]]
name = "ratelimit"
[plugins.settings]
default_limit = 0

[[plugins]]
name = "cache"
`;

let stack;
let browser;
let proxyKey;
let traffic;

// ---- helpers ------------------------------------------------------------------------------

async function admin(method, path, body) {
  const res = await fetch(`${stack.proxyURL}${path}`, {
    method,
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  assert.ok(res.ok, `${method} ${path}: ${res.status} ${text}`);
  return JSON.parse(text);
}

// Waits for `fn` (run in the page) to return a truthy value; fails with `what` after `ms`.
async function waitInPage(page, fn, arg, what, ms = WAIT_MS) {
  try {
    return await (await page.waitForFunction(fn, arg, { timeout: ms, polling: 200 })).jsonValue();
  } catch (err) {
    throw new Error(`timed out after ${ms} ms waiting for ${what} (${err.message.split('\n')[0]})`);
  }
}

async function visible(page, selector) {
  return page.locator(selector).isVisible();
}

// Records everything that went wrong on a page: console errors, uncaught exceptions, failed
// requests and answers >= 400 to the page's own requests.
function watch(page) {
  const w = { console: [], pageErrors: [], failed: [], bad: [], requests: [] };
  page.on('console', (m) => { if (m.type() === 'error') w.console.push({ at: Date.now(), text: m.text(), url: m.location()?.url }); });
  page.on('pageerror', (e) => w.pageErrors.push(String(e?.stack || e)));
  page.on('request', (r) => w.requests.push({ at: Date.now(), method: r.method(), url: r.url() }));
  page.on('requestfailed', (r) => w.failed.push({ at: Date.now(), url: r.url(), method: r.method(), error: r.failure()?.errorText }));
  page.on('response', (r) => { if (r.status() >= 400) w.bad.push({ at: Date.now(), status: r.status(), url: r.url(), method: r.request().method() }); });
  return w;
}

function assertClean(w, what, { allow = () => false } = {}) {
  const problems = [
    ...w.console.filter((c) => !allow('console', c)).map((c) => `console error: ${c.text}${c.url ? ` (${c.url})` : ''}`),
    ...w.pageErrors.map((e) => `page error: ${e}`),
    ...w.failed.filter((f) => !allow('failed', f)).map((f) => `request failed: ${f.method} ${f.url}: ${f.error}`),
    ...w.bad.filter((b) => !allow('bad', b)).map((b) => `HTTP ${b.status}: ${b.method} ${b.url}`),
  ];
  assert.deepEqual(problems, [], `${what}: the page reported problems`);
}

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  return { context, page, w: watch(page) };
}

async function signIn(page, token) {
  await page.goto(`${stack.proxyURL}/dashboard`);
  await page.locator('#token').waitFor({ state: 'visible', timeout: WAIT_MS });
  await page.locator('#token').fill(token);
  await page.locator('#signin-submit').click();
}

// ---- traffic ------------------------------------------------------------------------------

// Requests through the proxy until stopped: OpenAI and Anthropic, streamed (slowly) and not,
// repeated prompts (cache hits), upstream 500s and 429s, and an unknown key (401 from auth).
function startTraffic() {
  let running = true;
  const counts = { ok: 0, failed: 0 };
  const openai = openaiClient(stack, { apiKey: proxyKey });
  const anthropic = anthropicClient(stack, { apiKey: proxyKey });
  const stranger = openaiClient(stack, { apiKey: 'pk_unknown_key_for_the_dashboard_test' });
  let n = 0;
  const scenarios = [
    () => openai.chat.completions.create({ model: MODEL, messages: userMessages(`cached question ${n % 3}`) }),
    async () => {
      const stream = await openai.chat.completions.create(
        { model: MODEL, messages: userMessages(`stream ${n}`), stream: true },
        { headers: { 'x-mock-chunks': '4', 'x-mock-delay-ms': '40' } });
      for await (const _ of stream) { /* drain */ }
    },
    () => anthropic.messages.create({ model: MODEL, max_tokens: 64, messages: userMessages(`anthropic ${n}`) }),
    async () => {
      const stream = await anthropic.messages.create(
        { model: MODEL, max_tokens: 64, messages: userMessages(`anthropic stream ${n}`), stream: true },
        { headers: { 'x-mock-chunks': '3', 'x-mock-delay-ms': '30' } });
      for await (const _ of stream) { /* drain */ }
    },
    () => openai.chat.completions.create({ model: MODEL, messages: userMessages(`plain ${n}`) }),
    () => stranger.chat.completions.create({ model: MODEL, messages: userMessages('who am I') }),
    () => openai.chat.completions.create({ model: MODEL, messages: userMessages(`fail ${n}`) }, { headers: { 'x-mock-status': '500' } }),
    () => anthropic.messages.create({ model: MODEL, max_tokens: 64, messages: userMessages(`busy ${n}`) }, { headers: { 'x-mock-status': '429' } }),
  ];
  const worker = async () => {
    while (running) {
      n += 1;
      try {
        await scenarios[n % scenarios.length]();
        counts.ok += 1;
      } catch {
        counts.failed += 1;
      }
      await sleep(60);
    }
  };
  const workers = [worker(), worker(), worker()];
  return {
    counts,
    stop: async () => {
      running = false;
      await Promise.all(workers);
    },
  };
}

// ---- setup --------------------------------------------------------------------------------

before(async () => {
  mkdirSync(OUT_DIR, { recursive: true });
  stack = await startStack({ plugins: PLUGINS, adminToken: ADMIN_TOKEN });
  proxyKey = (await admin('POST', '/admin/keys', { name: KEY_NAME })).key;
  assert.match(proxyKey, /^pk_/);
  traffic = startTraffic();
  // GLMP_BROWSER_WARMUP_S: seconds of traffic before the page opens (longer history in the
  // screenshot, e.g. for the README's); 0 by default.
  await sleep(Number(process.env.GLMP_BROWSER_WARMUP_S || 0) * 1000);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
    timeout: WAIT_MS,
  });
});

after(async () => {
  if (traffic) await traffic.stop();
  if (browser) await browser.close();
  await stopStack(stack);
});

// ---- tests --------------------------------------------------------------------------------

describe('dashboard page', () => {
  test('the page is served with a strict CSP and carries no data; the API needs the token', TEST, async () => {
    for (const path of ASSETS) {
      const res = await fetch(`${stack.proxyURL}${path}`);
      assert.equal(res.status, 200, `GET ${path}`);
      const csp = res.headers.get('content-security-policy') || '';
      for (const d of CSP_DIRECTIVES) assert.ok(csp.includes(d), `GET ${path}: CSP "${csp}" lacks "${d}"`);
      const body = await res.text();
      if (path === '/dashboard') {
        assert.match(res.headers.get('content-type') || '', /^text\/html/);
        assert.doesNotMatch(body, /\sstyle\s*=/i, 'no style="" attribute in the shell');
        assert.doesNotMatch(body, /<style/i, 'no inline <style> in the shell');
        for (const tag of body.match(/<script\b[^>]*>/gi) || []) assert.match(tag, /\ssrc="\/dashboard\//, `inline script: ${tag}`);
        assert.doesNotMatch(body, /https?:\/\//, 'no external URL in the shell');
        assert.ok(!body.includes(MODEL) && !body.includes(KEY_NAME), 'the shell carries no data');
      }
    }
    for (const path of ['/api/metrics/json', '/api/metrics/system', '/admin/plugins']) {
      const res = await fetch(`${stack.proxyURL}${path}`);
      assert.equal(res.status, 401, `GET ${path} without the token`);
      await res.arrayBuffer();
    }
  });

  test('without a token the page shows only the sign-in form', TEST, async () => {
    const { context, page, w } = await newPage();
    try {
      await page.goto(`${stack.proxyURL}/dashboard`);
      await page.locator('#token').waitFor({ state: 'visible', timeout: WAIT_MS });
      await sleep(1500);
      assert.ok(await visible(page, '#signin-form'), 'sign-in form visible');
      assert.equal(await visible(page, '#dashboard'), false, 'dashboard hidden');
      assert.equal(await visible(page, '#signin-error'), false, 'no error shown');
      assert.equal(await page.locator('#charts > *').count(), 0, 'no chart');
      assert.equal(await page.locator('#headline > *').count(), 0, 'no figure');
      const dataCalls = w.requests.filter((r) => /\/(api|admin|profiling)\b/.test(new URL(r.url).pathname));
      assert.deepEqual(dataCalls, [], 'no data call without a token');
      assert.equal(await page.evaluate(() => window.glmpDashboard.ready), false);
      assertClean(w, 'page without a token');
    } finally {
      await context.close();
    }
  });

  test('a wrong token shows the sign-in error and no data', TEST, async () => {
    const { context, page, w } = await newPage();
    try {
      await signIn(page, 'not-the-admin-token');
      await waitInPage(page, () => !document.getElementById('signin-error').hidden, null, 'the sign-in error');
      const message = await page.locator('#signin-error').textContent();
      assert.match(message, /401/, `sign-in error: ${message}`);
      assert.ok(await visible(page, '#signin-form'), 'back on the sign-in form');
      assert.equal(await visible(page, '#dashboard'), false, 'dashboard hidden');
      assert.equal(await page.locator('#charts > *').count(), 0, 'no chart');
      assert.equal(await page.locator('#headline > *').count(), 0, 'no figure');
      assert.equal(await page.locator('#models-table > *, #slowest-table > *, #keys-table > *').count(), 0, 'no table');
      const state = await page.evaluate(() => ({ ready: window.glmpDashboard.ready, stored: Object.keys(sessionStorage).length }));
      assert.deepEqual(state, { ready: false, stored: 0 }, 'not ready, token not kept');
      // The refused call itself is expected (a 401, which chromium also logs as a console error).
      const refused = (x) => new URL(x.url || '').pathname.startsWith('/api/metrics/');
      assertClean(w, 'wrong token', {
        allow: (kind, x) => (kind === 'bad' && x.status === 401 && refused(x))
          || (kind === 'console' && /status of 401/.test(x.text) && refused(x)),
      });
      assert.ok(w.bad.some((b) => b.status === 401), 'the API refused the token');
    } finally {
      await context.close();
    }
  });

  describe('signed in', () => {
    let context;
    let page;
    let w;
    let reloadAt = 0;

    before(async () => {
      ({ context, page, w } = await newPage());
    });

    after(async () => {
      if (context) await context.close();
    });

    test('live charts from the real history, equal to /api/metrics/json', TEST, async () => {
      await signIn(page, ADMIN_TOKEN);
      await waitInPage(page, () => window.glmpDashboard && window.glmpDashboard.ready, null, 'window.glmpDashboard.ready');
      assert.equal(await visible(page, '#signin'), false, 'sign-in form hidden');
      assert.equal(await page.evaluate(() => Object.keys(sessionStorage).length), 1, 'token kept in sessionStorage');

      const names = await page.evaluate(() => Object.keys(window.glmpDashboard.charts));
      for (const name of ['latency', 'traffic', 'tokens', 'errors', 'concurrency', 'pools', 'cache', 'bandwidth', 'resources']) {
        assert.ok(names.includes(name), `chart "${name}" exposed (have: ${names.join(', ')})`);
      }

      // Traffic shows up: requests, latency, tokens, errors and cache hits in the charts.
      const sums = await waitInPage(page, () => {
        const d = window.glmpDashboard;
        const sum = (chart, i) => d.charts[chart].data[i].reduce((a, v) => a + (v || 0), 0);
        const s = { requests: sum('traffic', 1), errors: sum('traffic', 2), p50: sum('latency', 1), tokens: sum('tokens', 1), hits: sum('cache', 1) };
        return Object.values(s).every((v) => v > 0) && s;
      }, null, 'requests, errors, latency, tokens and cache hits in the charts');
      assert.ok(sums.requests > 0);

      // Polling appends: the last second moves on, the first stays.
      const before = await page.evaluate(() => { const t = window.glmpDashboard.charts.traffic.data[0]; return { first: t[0], last: t[t.length - 1], n: t.length }; });
      await waitInPage(page, (b) => { const t = window.glmpDashboard.charts.traffic.data[0]; return t[t.length - 1] >= b.last + 2; }, before, 'two more seconds appended by polling');
      const later = await page.evaluate(() => { const t = window.glmpDashboard.charts.traffic.data[0]; return { first: t[0], last: t[t.length - 1], n: t.length, lastUpdate: window.glmpDashboard.lastUpdate }; });
      assert.equal(later.first, before.first, 'history kept');
      assert.equal(later.n - before.n, later.last - before.last, 'one point per second, no gap, no duplicate');
      assert.ok(Date.now() - later.lastUpdate < 5000, `lastUpdate recent (${later.lastUpdate})`);

      // Every point of every chart equals the API's answer for that second.
      const snap = await page.evaluate(() => Object.fromEntries(Object.entries(window.glmpDashboard.charts).map(
        ([name, u]) => [name, { keys: window.glmpDashboard.series[name], data: u.data.map((col) => Array.from(col)) }])));
      const lastT = Math.max(...Object.values(snap).map((c) => c.data[0][c.data[0].length - 1]));
      const firstT = Math.min(...Object.values(snap).map((c) => c.data[0][0]));
      const api = await admin('GET', `/api/metrics/json?since=${firstT - 1}`);
      const at = new Map(api.series.t.map((t, i) => [t, i]));
      assert.ok(at.has(lastT), `the API has the page's last second ${lastT} (API: ${api.series.t[0]}…${api.series.t.at(-1)})`);
      let compared = 0;
      const mismatches = [];
      for (const [name, { keys, data }] of Object.entries(snap)) {
        assert.equal(keys[0], 't', `${name}: first column is t`);
        assert.equal(keys.length, data.length, `${name}: one key per column`);
        data[0].forEach((t, i) => {
          const j = at.get(t);
          if (j === undefined) {
            mismatches.push(`${name}: t=${t} missing in the API`);
            return;
          }
          for (let k = 1; k < keys.length; k += 1) {
            const want = api.series[keys[k]]?.[j] ?? null;
            compared += 1;
            if (data[k][i] !== want) mismatches.push(`${name}.${keys[k]} at t=${t}: page ${data[k][i]}, API ${want}`);
          }
        });
        const n = data[0].length;
        assert.equal(data[0][n - 1], lastT, `${name}: ends at the same second as the others`);
      }
      assert.deepEqual(mismatches.slice(0, 20), [], `chart points differ from /api/metrics/json (${mismatches.length} of ${compared})`);
      assert.ok(compared > 50, `compared ${compared} values`);

      // The tables and cards: real figures from the proxy.
      await waitInPage(page, (args) => {
        const text = (id) => document.getElementById(id).textContent;
        return text('models-table').includes(args.model) && text('keys-table').includes(args.key)
          && text('caches-table').includes('responses') && text('caches-table').includes('api_keys')
          && text('errors-status').includes('401') && text('errors-status').includes('500')
          && document.querySelectorAll('#slowest-table tbody tr').length > 0
          && document.querySelectorAll('#pools-table tbody tr').length > 0
          && document.querySelectorAll('#errors-top tbody tr').length > 0;
      }, { model: MODEL, key: KEY_NAME }, 'models, top keys, caches, errors, pools and slowest tables filled');
      assert.ok((await page.locator('#headline .card').count()) >= 10, 'headline cards');

      // A profile from the profiling plugin, fetched with the token.
      const row = page.locator('#slowest-table tbody tr').first();
      const requestId = await row.locator('button').getAttribute('data-id');
      assert.ok(requestId, 'the slowest row has a profile button');
      const profileAnswer = page.waitForResponse((r) => r.url().includes('/profiling/'), { timeout: WAIT_MS });
      await row.locator('button').click();
      const answer = await profileAnswer;
      assert.equal(answer.status(), 200, `GET ${answer.url()}`);
      assert.equal(answer.request().headers().authorization, `Bearer ${ADMIN_TOKEN}`, 'the profile call carries the token');
      const profile = await answer.json();
      await waitInPage(page, () => document.querySelectorAll('#profile-body tbody tr').length > 0, null, 'the profile panel');
      assert.match(await page.locator('#profile-title').textContent(), new RegExp(profile.request_id.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
      assert.equal(await page.locator('#profile-body tbody tr').count(), profile.phases.length, 'one row per phase');

      // Baseline: none at first; save the current figures; shown with deltas.
      await waitInPage(page, () => /No baseline/.test(document.getElementById('baseline-note').textContent), null, 'the "no baseline" note');
      const saved = page.waitForResponse((r) => r.url().endsWith('/api/metrics/baseline') && r.request().method() === 'PUT', { timeout: WAIT_MS });
      await page.locator('#baseline-save').click();
      const savedAnswer = await saved;
      assert.equal(savedAnswer.status(), 200, 'PUT /api/metrics/baseline');
      const savedJson = await savedAnswer.json();
      const baseline = savedJson && 'baseline' in savedJson ? savedJson.baseline : savedJson;
      assert.equal(baseline.source, 'snapshot');
      await waitInPage(page, () => document.querySelectorAll('#baseline-table tbody tr').length === 8, null, 'the baseline table');
      const p50Row = await page.locator('#baseline-table tbody tr').first().locator('td').allTextContents();
      assert.equal(p50Row[0], 'Latency p50');
      assert.ok(typeof baseline.p50 === 'number' && p50Row[2].startsWith(baseline.p50.toLocaleString('en-US', { maximumFractionDigits: 1 })),
        `baseline p50 shown: ${p50Row.join(' | ')} (saved ${baseline.p50})`);
      assert.match(p50Row[3], /^[+−±]/, `delta shown: ${p50Row[3]}`);

      // The screenshot (with the profile and the baseline open).
      const shot = join(OUT_DIR, 'dashboard.png');
      await page.screenshot({ path: shot, fullPage: true });

      // Clear the baseline again.
      const cleared = page.waitForResponse((r) => r.url().endsWith('/api/metrics/baseline') && r.request().method() === 'DELETE', { timeout: WAIT_MS });
      await page.locator('#baseline-clear').click();
      assert.equal((await cleared).status(), 200, 'DELETE /api/metrics/baseline');
      await waitInPage(page, () => /No baseline/.test(document.getElementById('baseline-note').textContent)
        && document.querySelectorAll('#baseline-table tbody tr').length === 0, null, 'the baseline cleared');

      assertClean(w, 'signed-in page');
      assert.ok(traffic.counts.ok > 0 && traffic.counts.failed > 0, `traffic: ${JSON.stringify(traffic.counts)}`);
    });

    test('a reload keeps the session', TEST, async () => {
      reloadAt = Date.now();
      await page.reload();
      await waitInPage(page, () => window.glmpDashboard && window.glmpDashboard.ready, null, 'ready again after the reload');
      assert.equal(await visible(page, '#signin'), false, 'no sign-in after a reload');
      assert.ok(await visible(page, '#dashboard'), 'dashboard shown');
      const n = await page.evaluate(() => window.glmpDashboard.charts.traffic.data[0].length);
      assert.ok(n > 0, 'history drawn at once after the reload');
      // A poll in flight when the page reloaded is aborted by the browser: not an error.
      assertClean(w, 'reload', { allow: (kind, x) => kind === 'failed' && x.error === 'net::ERR_ABORTED' && x.at <= reloadAt + 1000 });
    });

    test('sign-out forgets the token and the data', TEST, async () => {
      await page.locator('#signout').click();
      await page.locator('#token').waitFor({ state: 'visible', timeout: WAIT_MS });
      const state = await page.evaluate(() => ({
        ready: window.glmpDashboard.ready,
        charts: Object.keys(window.glmpDashboard.charts).length,
        stored: Object.keys(sessionStorage).length,
        dom: document.getElementById('charts').childElementCount + document.getElementById('headline').childElementCount,
      }));
      assert.deepEqual(state, { ready: false, charts: 0, stored: 0, dom: 0 });
      assert.equal(await visible(page, '#dashboard'), false, 'dashboard hidden');
      const requests = w.requests.length;
      await sleep(1500);
      const after = w.requests.slice(requests).filter((r) => /\/(api|admin|profiling)\b/.test(new URL(r.url).pathname));
      assert.deepEqual(after, [], 'no polling after sign-out');
      assertClean(w, 'sign-out', { allow: (kind, x) => kind === 'failed' && x.error === 'net::ERR_ABORTED' && x.at <= reloadAt + 1000 });
    });
  });
});

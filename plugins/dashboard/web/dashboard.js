// GLM Proxy dashboard: plain JS, no framework, no build step. Served by the dashboard plugin under a
// strict CSP (script-src 'self'; style-src 'self'; connect-src 'self'): no inline code, no eval,
// no external URL. Every string from the server goes into the DOM through textContent.
//
// Data: GET /api/metrics/json once (the whole history), then every second
// GET /api/metrics/json?since=<last t> and the new seconds are appended (trimmed to history_s).
// Every call carries the admin token (Authorization: Bearer …) kept in sessionStorage.
//
// For tests: window.glmpDashboard = {ready, charts: {name: uPlot}, series: {name: [keys]},
// lastUpdate} (see tests/browser/README.md).
(() => {
  'use strict';

  const TOKEN_KEY = 'glmp.dashboard.token';
  const POLL_MS = 1000;
  const RETRY_MS = 3000;
  const PLUGINS_EVERY = 15;       // polls between two GET /admin/plugins
  const STALE_MS = 5000;
  const CHART_HEIGHT = 210;

  // Every per-second series of GET /api/metrics/json (besides t).
  const SERIES_KEYS = [
    'requests', 'errors', 'err_rejected', 'err_upstream_4xx', 'err_upstream_5xx', 'err_gateway', 'err_internal',
    'tokens_in', 'tokens_out', 'bytes_in', 'bytes_out', 'cache_hits', 'coalesced',
    'p50_ms', 'p95_ms', 'p99_ms', 'ttft_p50_ms', 'ttft_p95_ms',
    'in_flight', 'streams', 'pool_in_use', 'pool_idle', 'pool_waiting', 'rss_mb', 'cpu_percent',
  ];

  const C = {
    blue: '#4ea1ff', orange: '#d29922', red: '#f85149', green: '#3fb950', purple: '#a371f7',
    teal: '#39c5cf', pink: '#db61a2', grey: '#8b96a5', yellow: '#e3b341',
  };

  // The charts. `when` (optional): shown only if it returns true for the loaded plugins.
  const CHARTS = [
    {
      name: 'latency', title: 'Latency', note: 'requests ended in each second', unit: 'ms',
      series: [
        { key: 'p50_ms', label: 'p50', color: C.blue },
        { key: 'p95_ms', label: 'p95', color: C.orange },
        { key: 'p99_ms', label: 'p99', color: C.red },
        { key: 'ttft_p50_ms', label: 'TTFT p50', color: C.green, dash: [5, 4] },
        { key: 'ttft_p95_ms', label: 'TTFT p95', color: C.purple, dash: [5, 4] },
      ],
    },
    {
      name: 'traffic', title: 'Requests', note: 'per second', unit: '/s',
      series: [
        { key: 'requests', label: 'requests', color: C.blue, fill: 'rgba(78,161,255,0.10)' },
        { key: 'errors', label: 'errors', color: C.red },
      ],
    },
    {
      name: 'tokens', title: 'Tokens', note: 'per second', unit: 'tok/s',
      series: [
        { key: 'tokens_in', label: 'in', color: C.teal },
        { key: 'tokens_out', label: 'out', color: C.purple },
      ],
    },
    {
      name: 'errors', title: 'Errors by class', note: 'per second', unit: '/s',
      series: [
        { key: 'err_rejected', label: 'rejected 4xx', color: C.orange },
        { key: 'err_upstream_4xx', label: 'upstream 4xx', color: C.yellow },
        { key: 'err_upstream_5xx', label: 'upstream 5xx', color: C.red },
        { key: 'err_gateway', label: 'gateway', color: C.pink },
        { key: 'err_internal', label: 'internal', color: C.purple },
      ],
    },
    {
      name: 'concurrency', title: 'Concurrency', note: 'sampled each second', unit: '',
      series: [
        { key: 'in_flight', label: 'in flight', color: C.blue },
        { key: 'streams', label: 'open streams', color: C.green },
      ],
    },
    {
      name: 'pools', title: 'Upstream pools', note: 'connections, all pools', unit: 'conn',
      series: [
        { key: 'pool_in_use', label: 'in use', color: C.blue },
        { key: 'pool_idle', label: 'idle', color: C.grey },
        { key: 'pool_waiting', label: 'waiting', color: C.red },
      ],
    },
    {
      name: 'cache', title: 'Cache and coalescing', note: 'per second', unit: '/s',
      when: (p) => p.has('cache') || p.has('batching'),
      series: [
        { key: 'cache_hits', label: 'cache hits', color: C.green },
        { key: 'coalesced', label: 'coalesced', color: C.purple },
      ],
    },
    {
      name: 'bandwidth', title: 'Bandwidth', note: 'request and response bodies', unit: 'B/s',
      series: [
        { key: 'bytes_in', label: 'in', color: C.teal, format: 'bytes' },
        { key: 'bytes_out', label: 'out', color: C.orange, format: 'bytes' },
      ],
    },
    {
      name: 'resources', title: 'Process', note: 'RSS and CPU (100 % = one core)', unit: '',
      series: [
        { key: 'rss_mb', label: 'RSS', color: C.blue, scale: 'mb', unit: 'MB' },
        { key: 'cpu_percent', label: 'CPU', color: C.orange, scale: 'pct', unit: '%' },
      ],
    },
  ];

  // ---- state -------------------------------------------------------------------------------

  const api = {
    ready: false,
    charts: {},
    series: {},
    lastUpdate: null,
  };
  window.glmpDashboard = api;

  const state = {
    gen: 0,             // bumped on sign-in/sign-out: stale async work checks it and stops
    timer: null,
    polls: 0,
    settings: null,
    plugins: new Set(),
    t: [],
    s: {},
    last: null,         // the last GET /api/metrics/json answer
    baseline: null,
    charts: new Map(),  // name -> {def, u, box}
    resize: null,
    profileId: null,
    missing: new Set(),
  };

  const $ = (id) => document.getElementById(id);

  // ---- formatting --------------------------------------------------------------------------

  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
  const DASH = '—';

  function fmtNum(v, digits = 1) {
    if (!isNum(v)) return DASH;
    return v.toLocaleString('en-US', { maximumFractionDigits: digits });
  }
  const fmtInt = (v) => fmtNum(v, 0);
  function fmtMs(v) {
    if (!isNum(v)) return DASH;
    return `${fmtNum(v, v >= 100 ? 0 : v >= 10 ? 1 : 2)} ms`;
  }
  function fmtPct(v, digits = 1) {
    return isNum(v) ? `${fmtNum(v, digits)} %` : DASH;
  }
  function fmtBytes(v) {
    if (!isNum(v)) return DASH;
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let x = v;
    let i = 0;
    while (Math.abs(x) >= 1024 && i < units.length - 1) { x /= 1024; i += 1; }
    return `${fmtNum(x, i === 0 ? 0 : 1)} ${units[i]}`;
  }
  function fmtCompact(v) {
    if (!isNum(v)) return '';
    const a = Math.abs(v);
    if (a >= 1e9) return `${fmtNum(v / 1e9, 1)}G`;
    if (a >= 1e6) return `${fmtNum(v / 1e6, 1)}M`;
    if (a >= 1e4) return `${fmtNum(v / 1e3, 0)}k`;
    if (a >= 1e3) return `${fmtNum(v / 1e3, 1)}k`;
    return fmtNum(v, a >= 10 ? 0 : 2);
  }
  function fmtBytesAxis(v) {
    if (!isNum(v)) return '';
    const units = ['B', 'K', 'M', 'G'];
    let x = v;
    let i = 0;
    while (Math.abs(x) >= 1000 && i < units.length - 1) { x /= 1024; i += 1; }
    return `${fmtNum(x, x >= 10 || i === 0 ? 0 : 1)}${units[i]}`;
  }
  const pad2 = (n) => String(n).padStart(2, '0');
  function fmtClock(ms) {
    if (!isNum(ms)) return DASH;
    const d = new Date(ms);
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }
  function fmtDateTime(ms) {
    if (!isNum(ms)) return DASH;
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${fmtClock(ms)}`;
  }
  function fmtWhen(v) {
    if (isNum(v)) return fmtDateTime(v);
    if (typeof v === 'string' && v) return v;
    return DASH;
  }
  function fmtDuration(s) {
    if (!isNum(s)) return DASH;
    const x = Math.max(0, Math.floor(s));
    const d = Math.floor(x / 86400);
    const h = Math.floor((x % 86400) / 3600);
    const m = Math.floor((x % 3600) / 60);
    const sec = x % 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${pad2(m)}m`;
    if (m) return `${m}m ${pad2(sec)}s`;
    return `${sec}s`;
  }
  function fmtWindow(s) {
    if (!isNum(s)) return '';
    if (s % 3600 === 0) return `${s / 3600} h`;
    if (s % 60 === 0) return `${s / 60} min`;
    return `${s} s`;
  }
  const str = (v) => (v === null || v === undefined || v === '' ? DASH : String(v));

  // The value of a series in a legend, with its unit.
  function fmtSeries(v, unit, format) {
    if (!isNum(v)) return DASH;
    if (format === 'bytes') return `${fmtBytes(v)}/s`;
    if (unit === 'ms') return fmtMs(v);
    if (unit === '%') return fmtPct(v);
    const n = fmtNum(v, Number.isInteger(v) ? 0 : 2);
    return unit ? `${n} ${unit}` : n;
  }

  // ---- DOM helpers (textContent only) ------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') node.className = v;
        else if (k === 'text') node.textContent = v;
        else if (k === 'title') node.title = v;
        else if (k === 'type') node.type = v;
        else if (k.startsWith('data-')) node.setAttribute(k, v);
        else if (k === 'on') for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
        else node.setAttribute(k, v);
      }
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function emptyNote(text) {
    return el('p', { class: 'empty', text });
  }

  // A table whose rows are updated in place (so a button in a row survives the next poll).
  // columns: [{label, num?, cls?(row), wrap?, value(row) -> string, action?: {label, onClick(row)}}]
  function renderTable(box, columns, rows, emptyText, rowClass) {
    const sig = JSON.stringify([columns.map((c) => c.label), rows]);
    if (box.dataset.sig === sig && box.firstChild) return;
    box.dataset.sig = sig;
    if (!rows.length) {
      box.replaceChildren(emptyNote(emptyText));
      return;
    }
    let table = box.querySelector('table');
    const headSig = columns.map((c) => c.label).join('\u0001');
    if (!table || table.dataset.head !== headSig) {
      table = el('table', null,
        el('thead', null, el('tr', null, ...columns.map((c) => el('th', { class: c.num ? 'num' : null, text: c.label })))),
        el('tbody'));
      table.dataset.head = headSig;
      box.replaceChildren(table);
    }
    const tbody = table.tBodies[0];
    while (tbody.rows.length > rows.length) tbody.deleteRow(-1);
    rows.forEach((row, i) => {
      let tr = tbody.rows[i];
      if (!tr) {
        tr = el('tr');
        columns.forEach((c) => {
          const td = el('td');
          if (c.action) {
            const btn = el('button', { type: 'button', class: 'btn btn-small', text: c.action.label });
            btn.addEventListener('click', () => c.action.onClick(tr.glmpRow));
            td.append(btn);
          }
          tr.append(td);
        });
        tbody.append(tr);
      }
      tr.glmpRow = row;
      tr.className = rowClass ? rowClass(row) || '' : '';
      columns.forEach((c, j) => {
        const td = tr.cells[j];
        const cls = [c.num ? 'num' : '', c.wrap ? 'wrap' : '', c.mono ? 'mono' : '', c.cls ? c.cls(row) || '' : ''].filter(Boolean).join(' ');
        td.className = cls;
        if (c.action) {
          td.firstChild.dataset.id = c.action.id ? c.action.id(row) : '';
          return;
        }
        const text = c.value(row);
        if (td.textContent !== text) td.textContent = text;
        if (c.tip) td.title = c.tip(row) || '';
      });
    });
  }

  // ---- HTTP --------------------------------------------------------------------------------

  class AuthError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }
  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function errorMessage(res) {
    try {
      const body = await res.json();
      if (body && typeof body.error === 'object' && body.error && body.error.message) return String(body.error.message);
      if (body && typeof body.error === 'string') return body.error;
      if (body && body.message) return String(body.message);
    } catch {
      // not JSON
    }
    return res.statusText || `HTTP ${res.status}`;
  }

  async function call(method, path) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new AuthError(401, 'Not signed in.');
    const res = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
    });
    if (res.status === 401 || res.status === 403) throw new AuthError(res.status, await errorMessage(res));
    if (!res.ok) throw new HttpError(res.status, `${method} ${path}: ${res.status} ${await errorMessage(res)}`);
    return res.json();
  }

  // ---- sign-in / sign-out ------------------------------------------------------------------

  function authMessage(err) {
    if (err.status === 403) {
      return `Access denied (403): ${err.message}. The proxy needs an [admin] token in its configuration.`;
    }
    return `The admin token was refused (401): ${err.message}`;
  }

  function setStatus(kind, text) {
    const box = $('status');
    box.className = `topbar-status ${kind || ''}`;
    box.replaceChildren(el('span', { class: 'dot' }), el('span', { text }));
  }

  function showSignIn(message) {
    $('dashboard').hidden = true;
    $('signout').hidden = true;
    $('signin').hidden = false;
    const err = $('signin-error');
    err.textContent = message || '';
    err.hidden = !message;
    $('signin-submit').disabled = false;
    setStatus('', 'Signed out');
    $('token').focus();
  }

  // Drops every figure from the page (the shell carries no data once signed out).
  function clearData() {
    for (const { u } of state.charts.values()) u.destroy();
    state.charts.clear();
    if (state.resize) {
      state.resize.disconnect();
      state.resize = null;
    }
    for (const id of ['headline', 'charts', 'baseline-table', 'pools-table', 'caches-table', 'coalescing',
      'errors-type', 'errors-status', 'errors-top', 'models-table', 'keys-table', 'slowest-table', 'profile-body']) {
      const box = $(id);
      box.replaceChildren();
      delete box.dataset.sig;
    }
    for (const id of ['history-note', 'baseline-note', 'errors-note', 'keys-note', 'slowest-note']) $(id).textContent = '';
    for (const id of ['keys-error', 'profile', 'profile-error']) $(id).hidden = true;
    state.t = [];
    state.s = {};
    state.last = null;
    state.baseline = null;
    state.settings = null;
    state.plugins = new Set();
    state.profileId = null;
    state.missing = new Set();
    state.polls = 0;
    api.ready = false;
    api.charts = {};
    api.series = {};
    api.lastUpdate = null;
  }

  function signOut(message) {
    state.gen += 1;
    clearTimeout(state.timer);
    state.timer = null;
    sessionStorage.removeItem(TOKEN_KEY);
    clearData();
    showSignIn(message);
  }

  async function start() {
    const gen = ++state.gen;
    clearTimeout(state.timer);
    clearData();
    $('signin-submit').disabled = true;
    $('signin').hidden = true;
    $('signout').hidden = false;
    setStatus('', 'Loading…');
    let data;
    let plugins;
    try {
      data = await call('GET', '/api/metrics/json');
      if (gen !== state.gen) return;
      plugins = await call('GET', '/admin/plugins');
      if (gen !== state.gen) return;
    } catch (err) {
      if (gen !== state.gen) return;
      if (err instanceof AuthError) {
        signOut(authMessage(err));
        return;
      }
      // The token may be right and the proxy unreachable: keep it and try again.
      showSignIn(`Could not load the metrics: ${err.message}. Retrying in ${RETRY_MS / 1000} s…`);
      $('signout').hidden = false;
      setStatus('down', 'Proxy unreachable — retrying');
      state.timer = setTimeout(() => { if (gen === state.gen) start(); }, RETRY_MS);
      return;
    }
    $('signin-error').hidden = true;
    $('dashboard').hidden = false;
    setPlugins(plugins);
    state.settings = data.settings || null;
    appendSeries(data.series);
    syncCharts();
    render(data);
    api.lastUpdate = Date.now();
    setLive();
    // Ready once the charts have been painted.
    requestAnimationFrame(() => requestAnimationFrame(() => {
      if (gen !== state.gen) return;
      api.ready = true;
      schedulePoll(gen);
    }));
  }

  // ---- polling -----------------------------------------------------------------------------

  function schedulePoll(gen) {
    clearTimeout(state.timer);
    state.timer = setTimeout(() => poll(gen), POLL_MS);
  }

  async function poll(gen) {
    if (gen !== state.gen) return;
    try {
      const since = state.t.length ? state.t[state.t.length - 1] : null;
      const data = await call('GET', since === null ? '/api/metrics/json' : `/api/metrics/json?since=${since}`);
      if (gen !== state.gen) return;
      state.polls += 1;
      if (state.polls % PLUGINS_EVERY === 0) {
        const plugins = await call('GET', '/admin/plugins');
        if (gen !== state.gen) return;
        setPlugins(plugins);
        syncCharts();
      }
      if (data.settings) state.settings = data.settings;
      appendSeries(data.series);
      updateCharts();
      render(data);
      api.lastUpdate = Date.now();
      setLive();
    } catch (err) {
      if (gen !== state.gen) return;
      if (err instanceof AuthError) {
        signOut(authMessage(err));
        return;
      }
      setStatus('down', `Update failed: ${err.message} — retrying`);
    }
    if (gen === state.gen) schedulePoll(gen);
  }

  function setLive() {
    const d = state.last;
    const up = d && isNum(d.uptime_s) ? ` · collecting for ${fmtDuration(d.uptime_s)}` : '';
    setStatus('live', `Live · updated ${fmtClock(api.lastUpdate)}${up}`);
  }

  // Marks the status stale when polls stop succeeding (e.g. the proxy went away).
  setInterval(() => {
    if (api.ready && api.lastUpdate && Date.now() - api.lastUpdate > STALE_MS && !$('status').classList.contains('down')) {
      setStatus('stale', `No update since ${fmtClock(api.lastUpdate)}`);
    }
  }, 1000);

  function setPlugins(answer) {
    const set = new Set();
    for (const p of (answer && Array.isArray(answer.plugins)) ? answer.plugins : []) {
      if (p && typeof p.name === 'string' && p.enabled !== false) set.add(p.name);
    }
    state.plugins = set;
  }

  // ---- series ------------------------------------------------------------------------------

  function appendSeries(series) {
    if (!series || !Array.isArray(series.t)) return;
    const t = series.t;
    const lastT = state.t.length ? state.t[state.t.length - 1] : -Infinity;
    let from = 0;
    while (from < t.length && !(t[from] > lastT)) from += 1;
    for (const key of SERIES_KEYS) {
      const src = series[key];
      if (!Array.isArray(src)) state.missing.add(key);
      const dst = state.s[key] || (state.s[key] = []);
      for (let i = from; i < t.length; i += 1) {
        const v = Array.isArray(src) ? src[i] : null;
        dst.push(isNum(v) ? v : null);
      }
    }
    for (let i = from; i < t.length; i += 1) state.t.push(t[i]);
    // Keep history_s seconds.
    const keep = state.settings && isNum(state.settings.history_s) ? state.settings.history_s : 3600;
    if (state.t.length) {
      const minT = state.t[state.t.length - 1] - keep;
      let drop = 0;
      while (drop < state.t.length && state.t[drop] <= minT) drop += 1;
      if (drop) {
        state.t.splice(0, drop);
        for (const key of SERIES_KEYS) state.s[key].splice(0, drop);
      }
    }
  }

  // ---- charts ------------------------------------------------------------------------------

  function chartData(def) {
    return [state.t.slice(), ...def.series.map((s) => (state.s[s.key] || []).slice())];
  }

  // Time axis labels: 24-hour clock, seconds only when a tick is not on a whole minute.
  function timeTicks(_u, splits) {
    const whole = splits.every((s) => !isNum(s) || s % 60 === 0);
    return splits.map((s) => {
      if (!isNum(s)) return '';
      const c = fmtClock(s * 1000);
      return whole ? c.slice(0, 5) : c;
    });
  }

  function zeroBased(_u, min, max) {
    const hi = isNum(max) && max > 0 ? max : 1;
    return [0, hi * 1.08];
  }

  function plotWidth(box) {
    return Math.max(240, Math.floor(box.clientWidth));
  }

  function makeChart(def) {
    const box = el('div', { class: 'chart-plot' });
    const missing = def.series.filter((s) => state.missing.has(s.key)).map((s) => s.key);
    const card = el('div', { class: 'chart', 'data-chart': def.name },
      el('div', { class: 'chart-title' }, def.title, def.unit ? el('span', { class: 'muted', text: `${def.unit}` }) : null,
        el('span', { class: 'muted', text: def.note ? `· ${def.note}` : '' })),
      missing.length ? el('p', { class: 'notice', text: `Not served by the proxy: ${missing.join(', ')}` }) : null,
      box);
    $('charts').append(card);

    const axisStyle = {
      stroke: '#8b96a5',
      grid: { stroke: 'rgba(255,255,255,0.06)', width: 1 },
      ticks: { stroke: 'rgba(255,255,255,0.12)', width: 1 },
      font: '11px system-ui, sans-serif',
    };
    const twoScales = def.series.some((s) => s.scale);
    const scales = { x: { time: true } };
    const axes = [{ ...axisStyle, space: 80, values: timeTicks }]; // room for "18:04:20" labels
    if (twoScales) {
      def.series.forEach((s, i) => {
        scales[s.scale] = { range: zeroBased };
        axes.push({
          ...axisStyle,
          scale: s.scale,
          side: i === 0 ? 3 : 1,
          grid: i === 0 ? axisStyle.grid : { show: false },
          size: 52,
          values: (_u, vals) => vals.map((v) => `${fmtCompact(v)}${s.unit === '%' ? '%' : ''}`),
          label: s.unit,
          labelSize: 16,
          labelFont: '11px system-ui, sans-serif',
        });
      });
    } else {
      scales.y = { range: zeroBased };
      const bytes = def.series.some((s) => s.format === 'bytes');
      axes.push({ ...axisStyle, size: 52, values: (_u, vals) => vals.map((v) => (bytes ? fmtBytesAxis(v) : fmtCompact(v))) });
    }

    const opts = {
      width: plotWidth(box),
      height: CHART_HEIGHT,
      pxAlign: true,
      cursor: { sync: { key: 'glmp' }, drag: { x: true, y: false } },
      legend: { live: true },
      scales,
      axes,
      series: [
        { label: 'time', value: (_u, v) => (isNum(v) ? fmtClock(v * 1000) : DASH) },
        ...def.series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: 1.5,
          dash: s.dash,
          fill: s.fill,
          scale: s.scale || 'y',
          spanGaps: false,
          points: { size: 4 },
          value: (_u, v) => fmtSeries(v, s.unit || def.unit, s.format),
        })),
      ],
      hooks: {
        // Without a cursor on the plot, the legend shows the latest values.
        setCursor: [(u) => { if (u.cursor.idx == null) showLatest(u); }],
      },
    };
    const u = new window.uPlot(opts, chartData(def), box);
    showLatest(u);
    state.charts.set(def.name, { def, u, box });
    api.charts[def.name] = u;
    api.series[def.name] = ['t', ...def.series.map((s) => s.key)];
    if (state.resize) state.resize.observe(box);
  }

  function showLatest(u) {
    const n = u.data[0].length;
    if (n) u.setLegend({ idx: n - 1 }, false);
  }

  // Creates the charts that should be shown and removes those that should not (cache/batching).
  function syncCharts() {
    if (!state.resize && 'ResizeObserver' in window) {
      state.resize = new ResizeObserver((entries) => {
        requestAnimationFrame(() => {
          for (const entry of entries) {
            for (const c of state.charts.values()) {
              if (c.box !== entry.target) continue;
              const w = plotWidth(c.box);
              if (w !== c.u.width) c.u.setSize({ width: w, height: CHART_HEIGHT });
            }
          }
        });
      });
    }
    let changed = false;
    for (const def of CHARTS) {
      const want = !def.when || def.when(state.plugins);
      const have = state.charts.get(def.name);
      if (want && !have) changed = true;
      if (!want && have) {
        have.u.destroy();
        have.box.closest('.chart').remove();
        state.charts.delete(def.name);
        delete api.charts[def.name];
        delete api.series[def.name];
      }
    }
    if (changed) {
      // Rebuilt in the declared order.
      for (const { u } of state.charts.values()) u.destroy();
      state.charts.clear();
      $('charts').replaceChildren();
      api.charts = {};
      api.series = {};
      for (const def of CHARTS) if (!def.when || def.when(state.plugins)) makeChart(def);
    }
    const h = state.settings && state.settings.history_s;
    $('history-note').textContent = isNum(h) ? `last ${fmtWindow(h)} kept · 1 s resolution · hover a chart for values` : '';
  }

  function updateCharts() {
    for (const { def, u } of state.charts.values()) {
      u.setData(chartData(def));
      if (u.cursor.idx == null) showLatest(u);
    }
  }

  // ---- panels ------------------------------------------------------------------------------

  function render(data) {
    state.last = data;
    if ('baseline' in data) state.baseline = data.baseline;
    const sys = data.system || {};
    renderHeadline(data, sys);
    renderBaseline();
    renderPools(sys);
    renderCaches(sys);
    renderErrors(sys);
    renderModels(data.models);
    renderKeys(data.topKeys);
    renderSlowest(data.slowest);
  }

  function card(label, value, unit, sub, tone) {
    return el('div', { class: `card ${tone || ''}` },
      el('div', { class: 'card-label', text: label }),
      el('div', { class: 'card-value' }, value, unit && value !== DASH ? el('span', { class: 'card-unit', text: unit }) : null),
      el('div', { class: 'card-sub', text: sub || '\u00a0' }));
  }

  function renderHeadline(data, sys) {
    const r = sys.requests || {};
    const th = sys.throughput || {};
    const res = sys.resources || {};
    const win = state.settings && isNum(state.settings.summary_window_s) ? `last ${fmtWindow(state.settings.summary_window_s)}` : '';
    const errTone = isNum(r.errorRate) && r.errorRate >= 5 ? 'bad' : isNum(r.errorRate) && r.errorRate > 0 ? 'warn' : '';
    const cards = [
      card('Requests/s', fmtNum(r.requestRate, 2), '/s', `${win} · peak ${fmtNum(th.peakRequestsPerSecond, 1)}/s`),
      card('Error rate', fmtNum(r.errorRate, 2), '%', `${fmtInt(r.failedRequests)} failed of ${fmtInt(r.totalRequests)}`, errTone),
      card('Latency p50', fmtNum(r.p50, 1), 'ms', `${win} · avg ${fmtMs(r.avg)}`),
      card('Latency p95', fmtNum(r.p95, 1), 'ms', `${win} · min ${fmtMs(r.min)}`),
      card('Latency p99', fmtNum(r.p99, 1), 'ms', `${win} · max ${fmtMs(r.max)}`),
      card('TTFT p50', fmtNum(r.ttftP50, 1), 'ms', `${win} · p95 ${fmtMs(r.ttftP95)}`),
      card('Tokens in', fmtNum(th.tokensInPerSecond, 1), 'tok/s', win),
      card('Tokens out', fmtNum(th.tokensOutPerSecond, 1), 'tok/s', win),
      card('In flight', fmtInt(res.inFlight), '', `${fmtInt(res.activeStreams)} open streams`),
      card('Memory (RSS)', fmtNum(res.memoryUsageMB, 1), 'MB', `peak ${fmtNum(res.peakMemoryUsageMB, 1)} MB · ${fmtNum(res.memoryGrowthRate, 1)} MB/h`),
      card('CPU', fmtNum(res.cpuUsagePercent, 1), '%',
        `${isNum(res.cpuCores) ? `${fmtInt(res.cpuCores)} cores · ` : ''}${fmtInt(res.threads)} threads · ${fmtInt(res.openFds)} fds`),
      card('Requests total', fmtInt(r.totalRequests), '', `${fmtInt(r.successfulRequests)} ok · up ${fmtDuration(data.uptime_s)}`),
    ];
    $('headline').replaceChildren(...cards);
  }

  // Current figures for the baseline comparison; [label, key, current, unit, lowerIsBetter].
  function baselineRows() {
    const d = state.last || {};
    const sys = d.system || {};
    const r = sys.requests || {};
    const th = sys.throughput || {};
    const res = sys.resources || {};
    const rps = isNum(th.requestsPerSecond) ? th.requestsPerSecond : r.requestRate;
    return [
      ['Latency p50', 'p50', r.p50, 'ms', true],
      ['Latency p95', 'p95', r.p95, 'ms', true],
      ['Latency p99', 'p99', r.p99, 'ms', true],
      ['TTFT p50', 'ttftP50', r.ttftP50, 'ms', true],
      ['Requests/s', 'requestsPerSecond', rps, '/s', null],
      ['Error rate', 'errorRate', r.errorRate, '%', true],
      ['CPU', 'cpuUsagePercent', res.cpuUsagePercent, '%', true],
      ['Memory (RSS)', 'memoryUsageMB', res.memoryUsageMB, 'MB', true],
    ];
  }

  function withUnit(v, unit, digits = 1) {
    if (!isNum(v)) return DASH;
    return unit === '/s' ? `${fmtNum(v, 2)}/s` : `${fmtNum(v, digits)} ${unit}`;
  }

  function renderBaseline() {
    const b = state.baseline;
    const note = $('baseline-note');
    $('baseline-clear').disabled = !b;
    if (!b) {
      note.textContent = 'No baseline is set. "Save current as baseline" stores the current figures (last 60 s) to compare against later.';
      renderTable($('baseline-table'), [], [], 'No baseline.');
      return;
    }
    const src = b.source === 'settings' ? 'from the plugin settings' : `snapshot saved ${fmtWhen(b.savedAt)}`;
    note.textContent = `Baseline ${src}. Delta = current − baseline.`;
    const rows = baselineRows().map(([label, key, cur, unit, lowerBetter]) => {
      const base = b[key];
      let delta = DASH;
      let tone = 'delta-same';
      if (isNum(cur) && isNum(base)) {
        const diff = cur - base;
        const pct = base !== 0 ? (diff / Math.abs(base)) * 100 : null;
        const sign = diff > 0 ? '+' : diff < 0 ? '−' : '±';
        delta = `${sign}${withUnit(Math.abs(diff), unit)}${isNum(pct) ? ` (${sign}${fmtNum(Math.abs(pct), 1)} %)` : ''}`;
        const significant = isNum(pct) ? Math.abs(pct) >= 5 : diff !== 0;
        if (significant && lowerBetter !== null) tone = (diff > 0) === lowerBetter ? 'delta-worse' : 'delta-better';
      }
      return { label, cur: withUnit(cur, unit), base: isNum(base) ? withUnit(base, unit) : 'not set', delta, tone };
    });
    renderTable($('baseline-table'), [
      { label: 'Figure', value: (r) => r.label },
      { label: 'Current', num: true, value: (r) => r.cur },
      { label: 'Baseline', num: true, value: (r) => r.base },
      { label: 'Delta', num: true, value: (r) => r.delta, cls: (r) => r.tone },
    ], rows, 'No baseline.');
  }

  async function baselineAction(method) {
    const gen = state.gen;
    const save = $('baseline-save');
    const clear = $('baseline-clear');
    save.disabled = true;
    clear.disabled = true;
    try {
      const answer = await call(method, '/api/metrics/baseline');
      if (gen !== state.gen) return;
      // Both answer {"baseline": <object or null>} (a bare baseline object is accepted too).
      state.baseline = answer && typeof answer === 'object' && 'baseline' in answer ? answer.baseline : (answer || null);
      renderBaseline();
    } catch (err) {
      if (gen !== state.gen) return;
      if (err instanceof AuthError) {
        signOut(authMessage(err));
        return;
      }
      $('baseline-note').textContent = `Could not ${method === 'PUT' ? 'save' : 'clear'} the baseline: ${err.message}`;
    } finally {
      if (gen === state.gen) {
        save.disabled = false;
        clear.disabled = !state.baseline;
      }
    }
  }

  function renderPools(sys) {
    const pools = Array.isArray(sys.connectionPools) ? sys.connectionPools : [];
    renderTable($('pools-table'), [
      { label: 'Pool', value: (p) => str(p.name) },
      { label: 'Health', value: (p) => (p.healthy === false ? 'unhealthy' : p.healthy === true ? 'healthy' : DASH), cls: (p) => (p.healthy === false ? 'status-5' : 'status-2') },
      { label: 'In use', num: true, value: (p) => fmtInt(p.inUse) },
      { label: 'Idle', num: true, value: (p) => fmtInt(p.idle) },
      { label: 'Waiting', num: true, value: (p) => fmtInt(p.waiting), cls: (p) => (p.waiting > 0 ? 'status-4' : '') },
      { label: 'Size/max', num: true, value: (p) => `${fmtInt(p.size)} / ${fmtInt(p.max)}` },
      { label: 'Util.', num: true, value: (p) => utilization(p.utilization) },
      { label: 'Created', num: true, value: (p) => fmtInt(p.created) },
      { label: 'Reused', num: true, value: (p) => fmtInt(p.reused) },
      { label: 'Failed', num: true, value: (p) => fmtInt(p.failed), cls: (p) => (p.failed > 0 ? 'status-5' : '') },
      { label: 'Expired', num: true, value: (p) => fmtInt(p.expired) },
      { label: 'Timeouts', num: true, value: (p) => fmtInt(p.timeouts), cls: (p) => (p.timeouts > 0 ? 'status-5' : '') },
    ], pools, 'No upstream pool reported.');
  }

  // utilization: in use / max, a percentage.
  function utilization(v) {
    return fmtPct(v, 1);
  }

  function renderCaches(sys) {
    const caches = Array.isArray(sys.caches) ? sys.caches : [];
    renderTable($('caches-table'), [
      { label: 'Cache', value: (c) => str(c.name) },
      { label: 'Plugin', value: (c) => str(c.plugin) },
      { label: 'Hits', num: true, value: (c) => fmtInt(c.hits) },
      { label: 'Misses', num: true, value: (c) => fmtInt(c.misses) },
      { label: 'Hit rate', num: true, value: (c) => fmtPct(c.hitRate) },
      { label: 'Entries', num: true, value: (c) => fmtInt(c.entries) },
      { label: 'Bytes', num: true, value: (c) => fmtBytes(c.bytes) },
      { label: 'Evictions', num: true, value: (c) => fmtInt(c.evictions) },
      { label: 'Stored', num: true, value: (c) => fmtInt(c.stored) },
      { label: 'Tokens saved', num: true, value: (c) => fmtInt(c.tokensSaved) },
    ], caches, 'No cache reported.');

    const box = $('coalescing');
    const co = sys.coalescing;
    const sig = JSON.stringify([co, state.plugins.has('batching')]);
    if (box.dataset.sig === sig) return;
    box.dataset.sig = sig;
    if (!co) {
      box.replaceChildren(emptyNote(state.plugins.has('batching') ? 'No coalescing figures yet.' : 'The batching plugin is not loaded.'));
      return;
    }
    const kv = (k, v) => el('div', null, el('span', { class: 'k', text: k }), el('span', { class: 'v', text: v }));
    box.replaceChildren(el('div', { class: 'kv' },
      kv('Coalesced requests', fmtInt(co.coalescedRequests)),
      kv('Flights', fmtInt(co.flights)),
      kv('Followers', fmtInt(co.followers)),
      kv('Fallbacks', fmtInt(co.fallbacks)),
      kv('Bytes shared', fmtBytes(co.bytesShared)),
      kv('Active flights', fmtInt(co.activeFlights))));
  }

  const ERROR_TYPES = [
    ['rejected', 'rejected (4xx by the proxy or a plugin)'],
    ['upstream_4xx', 'upstream 4xx'],
    ['upstream_5xx', 'upstream 5xx'],
    ['gateway', 'gateway (502/503/504 by the proxy)'],
    ['internal', 'internal (other 5xx by the proxy)'],
  ];

  function renderErrors(sys) {
    const e = sys.errors || {};
    $('errors-note').textContent = `${fmtInt(e.totalErrors)} in total · ${fmtPct(e.errorRate, 2)} of requests`;
    const byType = e.errorsByType || {};
    const known = new Set(ERROR_TYPES.map(([k]) => k));
    const typeRows = ERROR_TYPES.map(([k, label]) => ({ label, count: byType[k] }))
      .concat(Object.keys(byType).filter((k) => !known.has(k)).map((k) => ({ label: k, count: byType[k] })));
    renderTable($('errors-type'), [
      { label: 'Class', value: (r) => r.label },
      { label: 'Count', num: true, value: (r) => fmtInt(r.count) },
    ], typeRows, 'No errors.');
    const byStatus = e.errorsByStatus || {};
    const statusRows = Object.keys(byStatus).sort().map((k) => ({ status: k, count: byStatus[k] }));
    renderTable($('errors-status'), [
      { label: 'Status', value: (r) => r.status, cls: (r) => `status-${String(r.status)[0]}` },
      { label: 'Count', num: true, value: (r) => fmtInt(r.count) },
    ], statusRows, 'No error status yet.');
    const top = Array.isArray(e.topErrors) ? e.topErrors : [];
    renderTable($('errors-top'), [
      { label: 'Status', value: (r) => str(r.status), cls: (r) => `status-${String(r.status)[0]}` },
      { label: 'Type', value: (r) => str(r.type) },
      { label: 'Message', wrap: true, value: (r) => str(r.message) },
      { label: 'Route', mono: true, value: (r) => str(r.route) },
      { label: 'Count', num: true, value: (r) => fmtInt(r.count) },
      { label: 'Last seen', value: (r) => fmtWhen(r.lastSeen) },
    ], top, 'No errors recorded.');
  }

  function renderModels(models) {
    const rows = (Array.isArray(models) ? models : []).slice()
      .sort((a, b) => ((b.tokensIn || 0) + (b.tokensOut || 0)) - ((a.tokensIn || 0) + (a.tokensOut || 0)));
    renderTable($('models-table'), [
      { label: 'Model', value: (m) => str(m.model) },
      { label: 'Flavour', value: (m) => str(m.flavour) },
      { label: 'Tokens in', num: true, value: (m) => fmtInt(m.tokensIn) },
      { label: 'Tokens out', num: true, value: (m) => fmtInt(m.tokensOut) },
      { label: 'Total', num: true, value: (m) => fmtInt((m.tokensIn || 0) + (m.tokensOut || 0)) },
    ], rows, 'No usage yet.');
  }

  function renderKeys(topKeys) {
    const tk = topKeys || {};
    $('keys-note').textContent = isNum(tk.windowSeconds) ? `last ${fmtWindow(tk.windowSeconds)}` : '';
    const err = $('keys-error');
    err.textContent = tk.error ? String(tk.error) : '';
    err.hidden = !tk.error;
    const keys = Array.isArray(tk.keys) ? tk.keys : [];
    renderTable($('keys-table'), [
      { label: 'Name', value: (k) => str(k.name) },
      { label: 'Key id', mono: true, value: (k) => str(k.id) },
      { label: 'Tokens', num: true, value: (k) => fmtInt(k.tokens) },
    ], keys, tk.error ? 'Top keys unavailable.' : 'No key used tokens in this window.');
  }

  function renderSlowest(slowest) {
    const rows = Array.isArray(slowest) ? slowest : [];
    const profiling = state.plugins.has('profiling');
    $('slowest-note').textContent = profiling ? 'Profile: where the time went (profiling plugin)' : 'load the profiling plugin for per-request profiles';
    const columns = [
      { label: 'When', value: (r) => fmtWhen(r.at) },
      { label: 'Status', value: (r) => str(r.status), cls: (r) => `status-${String(r.status)[0]}` },
      { label: 'Duration', num: true, value: (r) => fmtMs(r.durationMs) },
      { label: 'TTFB', num: true, value: (r) => fmtMs(r.ttfbMs) },
      { label: 'Request', value: (r) => `${str(r.method)} ${str(r.path)}` },
      { label: 'Model', value: (r) => str(r.model) },
      { label: 'Key', mono: true, value: (r) => str(r.keyId) },
      { label: 'Origin', value: (r) => str(r.origin) },
      { label: 'Request id', mono: true, value: (r) => str(r.requestId) },
    ];
    if (profiling) {
      columns.push({ label: 'Profile', action: { label: 'Profile', id: (r) => str(r.requestId), onClick: (r) => showProfile(r.requestId) } });
    }
    renderTable($('slowest-table'), columns, rows, 'No request yet.',
      (r) => (state.profileId !== null && r.requestId === state.profileId ? 'selected' : ''));
  }

  // ---- profile details ---------------------------------------------------------------------

  async function showProfile(requestId) {
    if (typeof requestId !== 'string' || !requestId) return;
    const gen = state.gen;
    state.profileId = requestId;
    const panel = $('profile');
    const errBox = $('profile-error');
    panel.hidden = false;
    errBox.hidden = true;
    $('profile-title').textContent = `Profile of ${requestId}`;
    $('profile-body').replaceChildren(emptyNote('Loading…'));
    delete $('slowest-table').dataset.sig;
    if (state.last) renderSlowest(state.last.slowest);
    try {
      const p = await call('GET', `/profiling/${encodeURIComponent(requestId)}`);
      if (gen !== state.gen || state.profileId !== requestId) return;
      renderProfile(p);
    } catch (err) {
      if (gen !== state.gen || state.profileId !== requestId) return;
      if (err instanceof AuthError) {
        signOut(authMessage(err));
        return;
      }
      $('profile-body').replaceChildren();
      errBox.textContent = err.status === 404
        ? 'The profiling plugin has no record of this request (not recorded, sampled out, or aged out).'
        : `Could not load the profile: ${err.message}`;
      errBox.hidden = false;
    }
  }

  function hideProfile() {
    state.profileId = null;
    $('profile').hidden = true;
    $('profile-body').replaceChildren();
    delete $('slowest-table').dataset.sig;
    if (state.last) renderSlowest(state.last.slowest);
  }

  function renderProfile(p) {
    const usage = p.usage && typeof p.usage === 'object'
      ? `${fmtInt(p.usage.input)} in / ${fmtInt(p.usage.output)} out` : DASH;
    const kv = (k, v) => el('div', null, el('span', { class: 'k', text: k }), el('span', { class: 'v', text: v }));
    const facts = el('div', { class: 'kv' },
      kv('Status', `${str(p.status)} (upstream ${str(p.upstream_status)})`),
      kv('Total', fmtMs(p.total_ms)),
      kv('Time to first byte', fmtMs(p.ttft_ms)),
      kv('Proxy overhead', fmtMs(p.overhead_ms)),
      kv('Model', str(p.model)),
      kv('Route', `${str(p.method)} ${str(p.path)}`),
      kv('Usage (tokens)', usage),
      kv('Bytes in / out', `${fmtBytes(p.bytes_in)} / ${fmtBytes(p.bytes_out)}`),
      kv('Streamed', p.streamed ? 'yes' : 'no'),
      kv('Origin', p.cached ? 'cache' : p.coalesced ? 'coalesced' : 'upstream'),
      kv('Key id', str(p.key_id)),
      kv('Started', str(p.started_at)));
    const parts = [facts];
    if (p.error) parts.push(el('p', { class: 'notice', text: `Error: ${String(p.error)}` }));

    const phases = Array.isArray(p.phases) ? p.phases : [];
    if (phases.length) {
      const total = Math.max(isNum(p.total_ms) ? p.total_ms : 0,
        ...phases.map((ph) => (isNum(ph.start_ms) ? ph.start_ms : 0) + (isNum(ph.dur_ms) ? ph.dur_ms : 0)), 0.001);
      const rows = phases.map((ph) => {
        const bar = el('div', { class: `phase-bar ${String(ph.name).includes('.') ? 'plugin' : ''}` });
        const start = isNum(ph.start_ms) ? ph.start_ms : 0;
        const dur = isNum(ph.dur_ms) ? ph.dur_ms : 0;
        bar.style.left = `${(start / total) * 100}%`;
        bar.style.width = `${Math.max((dur / total) * 100, 0)}%`;
        return el('tr', null,
          el('td', { class: 'mono', text: str(ph.name) }),
          el('td', { class: 'num', text: fmtMs(ph.start_ms) }),
          el('td', { class: 'num', text: fmtMs(ph.dur_ms) }),
          el('td', { class: 'phase-bar-cell' }, el('div', { class: 'phase-track' }, bar)));
      });
      parts.push(el('h3', { text: 'Phases and plugin hooks' }),
        el('div', { class: 'table-wrap' }, el('table', null,
          el('thead', null, el('tr', null, el('th', { text: 'Span' }), el('th', { class: 'num', text: 'Start' }),
            el('th', { class: 'num', text: 'Duration' }), el('th', { text: 'Timeline' }))),
          el('tbody', null, ...rows))));
    } else {
      parts.push(emptyNote('No timed span in this profile.'));
    }
    parts.push(el('details', { class: 'raw' }, el('summary', { text: 'Raw JSON' }),
      el('pre', { text: JSON.stringify(p, null, 2) })));
    $('profile-body').replaceChildren(...parts);
  }

  // ---- wiring ------------------------------------------------------------------------------

  function init() {
    $('signin-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const input = $('token');
      const token = input.value.trim();
      if (!token) {
        showSignIn('Enter the admin token.');
        return;
      }
      input.value = '';
      sessionStorage.setItem(TOKEN_KEY, token);
      start();
    });
    $('signout').addEventListener('click', () => signOut(''));
    $('baseline-save').addEventListener('click', () => baselineAction('PUT'));
    $('baseline-clear').addEventListener('click', () => baselineAction('DELETE'));
    $('profile-close').addEventListener('click', hideProfile);

    if (typeof window.uPlot !== 'function') {
      showSignIn('The chart library (/dashboard/uPlot.iife.min.js) did not load.');
      return;
    }
    if (sessionStorage.getItem(TOKEN_KEY)) start();
    else showSignIn('');
  }

  init();
})();

// Test harness for the SDK end-to-end tests: starts mock-upstream and glm-proxy on free ports,
// builds SDK clients that talk to the proxy or directly to the mock, reads the proxy's access
// log, and stops both processes at the end (also when a test fails or the runner dies).
//
// Binaries come from GLMP_PROXY_BIN / GLMP_MOCK_BIN (set by CTest); when unset, the release build
// in this repository is used.

import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..');

export const UPSTREAM_KEY = 'test-upstream-key';
export const MODEL = 'glm-4.7';
const STARTUP_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 3_000;

function binary(envName, fallback) {
  const path = process.env[envName] || join(repoRoot, 'build', 'release', 'bin', fallback);
  if (!existsSync(path)) {
    throw new Error(`${envName}: binary not found at ${path} (build it, or set ${envName})`);
  }
  return path;
}

// Every child still running when this process exits is killed, whatever ended the run
// (a normal exit, an uncaught error, or the test runner/CTest terminating this process).
const children = new Set();
const tempDirs = new Set();
function cleanUp() {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
}
process.on('exit', cleanUp);
for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]]) {
  process.once(signal, () => {
    cleanUp();
    process.exit(code);
  });
}

// A started child process with its output kept (the tail) for diagnostics.
class Child {
  constructor(name, file, args) {
    this.name = name;
    this.output = '';
    this.exited = false;
    this.exitInfo = null;
    this.proc = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(this.proc);
    this.exitPromise = new Promise((resolveExit) => {
      this.proc.on('exit', (code, signal) => {
        this.exited = true;
        this.exitInfo = { code, signal };
        children.delete(this.proc);
        resolveExit(this.exitInfo);
      });
      this.proc.on('error', (err) => {
        this.exited = true;
        this.exitInfo = { error: err };
        children.delete(this.proc);
        resolveExit(this.exitInfo);
      });
    });
    const keep = (chunk) => {
      this.output += chunk.toString('utf8');
      if (this.output.length > 64 * 1024) this.output = this.output.slice(-32 * 1024);
    };
    this.proc.stdout.on('data', keep);
    this.proc.stderr.on('data', keep);
  }

  // Resolves with the first match of `regex` in the output (stdout or stderr).
  waitFor(regex, what) {
    return new Promise((resolveMatch, reject) => {
      const cleanup = () => {
        clearTimeout(timer);
        this.proc.stdout.off('data', check);
        this.proc.stderr.off('data', check);
        this.proc.off('exit', onExit);
      };
      const check = () => {
        const m = regex.exec(this.output);
        if (m) {
          cleanup();
          resolveMatch(m);
        }
      };
      const onExit = () => {
        cleanup();
        reject(new Error(`${this.name} exited before ${what} (${JSON.stringify(this.exitInfo)}):\n${this.output}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`${this.name}: no ${what} within ${STARTUP_TIMEOUT_MS} ms:\n${this.output}`));
      }, STARTUP_TIMEOUT_MS);
      this.proc.stdout.on('data', check);
      this.proc.stderr.on('data', check);
      this.proc.on('exit', onExit);
      check();
    });
  }

  async stop() {
    if (this.exited) return this.exitInfo;
    this.proc.kill('SIGTERM');
    let timer;
    const timeout = new Promise((resolveTimeout) => {
      timer = setTimeout(() => resolveTimeout(null), STOP_TIMEOUT_MS);
    });
    const info = await Promise.race([this.exitPromise, timeout]);
    clearTimeout(timer);
    if (info) return info;
    this.proc.kill('SIGKILL');
    await this.exitPromise;
    return { ...this.exitInfo, killed: true };
  }
}

function proxyConfig(mockPort, accessLog, plugins, adminToken, tls, serverExtra) {
  return `[server]
listen = "127.0.0.1:0"
${tls ? `tls_cert = "${tls.cert}"\ntls_key = "${tls.key}"\n` : ''}${serverExtra ? `${serverExtra}\n` : ''}
[store]
path = "${join(dirname(accessLog), 'state.db')}"

[proxy]
model = "${MODEL}"

[log]
access_log = "${accessLog}"
${adminToken ? `\n[admin]\ntoken = "${adminToken}"\n` : ''}
[upstreams.openai]
base_url = "http://127.0.0.1:${mockPort}/api/coding/paas/v4"
auth_header = "Authorization"
auth_value = "Bearer ${UPSTREAM_KEY}"
min_connections = 0

[upstreams.anthropic]
base_url = "http://127.0.0.1:${mockPort}/api/anthropic"
auth_header = "x-api-key"
auth_value = "${UPSTREAM_KEY}"
min_connections = 0

[[routes]]
prefix = "/v1/messages"
flavour = "anthropic"
upstream = "anthropic"

[[routes]]
prefix = "/v1/"
flavour = "openai"
upstream = "openai"
strip_prefix = "/v1"
${plugins ? `\n${plugins}\n` : ''}`;
}

// Starts mock-upstream and glm-proxy. Call stop() when done (in an `after` hook).
// `plugins`: TOML appended to the proxy's config, e.g. `[[plugins]]` entries. Without a `path`
// the proxy loads <name>.so from its default plugin directory: <build>/plugins next to
// <build>/bin/glm-proxy in a build tree.
// `adminToken`: adds `[admin] token = "…"` (without one, admin routes answer 403).
// `tls`: `{ cert, key }` (PEM paths, e.g. from makePki): the proxy listens with TLS only, and
// proxyURL is https://.
// `serverExtra`: lines added to the [server] table (e.g. "max_concurrent_streams = 8").
export async function startStack({ plugins = '', adminToken = '', tls = null, serverExtra = '' } = {}) {
  const proxyBin = binary('GLMP_PROXY_BIN', 'glm-proxy');
  const mockBin = binary('GLMP_MOCK_BIN', 'mock-upstream');
  const dir = mkdtempSync(join(tmpdir(), 'glmp-e2e-'));
  tempDirs.add(dir);
  const accessLogPath = join(dir, 'access.log');
  const configPath = join(dir, 'glm-proxy.toml');

  let mock = null;
  let proxy = null;
  const stop = async () => {
    const results = {};
    if (proxy) results.proxy = await proxy.stop();
    if (mock) results.mock = await mock.stop();
    rmSync(dir, { recursive: true, force: true });
    tempDirs.delete(dir);
    return results;
  };

  try {
    mock = new Child('mock-upstream', mockBin, ['--host', '127.0.0.1', '--port', '0', '--api-key', UPSTREAM_KEY]);
    const mockPort = Number((await mock.waitFor(/^LISTENING (\d+)$/m, 'LISTENING line'))[1]);

    writeFileSync(configPath, proxyConfig(mockPort, accessLogPath, plugins, adminToken, tls, serverExtra));
    proxy = new Child('glm-proxy', proxyBin, ['--config', configPath]);
    const proxyPort = Number((await proxy.waitFor(/listening on 127\.0\.0\.1:(\d+)/, '"listening on" line'))[1]);

    return {
      dir,
      mockPort,
      proxyPort,
      accessLogPath,
      mock,
      proxy,
      stop,
      proxyURL: `${tls ? 'https' : 'http'}://127.0.0.1:${proxyPort}`,
      mockOpenAIURL: `http://127.0.0.1:${mockPort}/api/coding/paas/v4`,
      mockAnthropicURL: `http://127.0.0.1:${mockPort}/api/anthropic`,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

// Stops the stack and fails if the proxy or the mock died on its own during the tests.
export async function stopStack(stack) {
  if (!stack) return;
  const diedEarly = [stack.proxy, stack.mock].filter((c) => c.exited);
  const details = diedEarly.map((c) => `${c.name} exited during the tests (${JSON.stringify(c.exitInfo)}):\n${c.output}`);
  await stack.stop();
  if (details.length) throw new Error(details.join('\n'));
}

const CLIENT_TIMEOUT_MS = 10_000;

// OpenAI SDK client: through the proxy (any API key; the proxy adds the upstream's), or direct.
// `apiKey`: the key sent to the proxy (e.g. a proxy key when the auth plugin is loaded).
export function openaiClient(stack, { direct = false, apiKey = 'sk-client-key-the-proxy-must-strip' } = {}) {
  return new OpenAI({
    baseURL: direct ? stack.mockOpenAIURL : `${stack.proxyURL}/v1`,
    apiKey: direct ? UPSTREAM_KEY : apiKey,
    maxRetries: 0,
    timeout: CLIENT_TIMEOUT_MS,
  });
}

// Anthropic SDK client: through the proxy, or direct. `apiKey` as for openaiClient.
export function anthropicClient(stack, { direct = false, apiKey = 'sk-ant-client-key-the-proxy-must-strip' } = {}) {
  return new Anthropic({
    baseURL: direct ? stack.mockAnthropicURL : stack.proxyURL,
    apiKey: direct ? UPSTREAM_KEY : apiKey,
    maxRetries: 0,
    timeout: CLIENT_TIMEOUT_MS,
  });
}

// A test PKI made with the openssl CLI in `dir`: a CA, and a server certificate it signed for
// 127.0.0.1 and localhost. Returns the PEM paths { ca, cert, key }.
export function makePki(dir) {
  const run = (args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  run(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1',
    '-subj', '/CN=glmp-e2e-ca', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  run(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost']);
  writeFileSync(join(dir, 'ext.cnf'),
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  run(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem',
    '-days', '1', '-extfile', 'ext.cnf']);
  return { ca: join(dir, 'ca.pem'), cert: join(dir, 'server.pem'), key: join(dir, 'server.key') };
}

// A fresh temporary directory, removed when this process exits.
export function tempDir(prefix = 'glmp-e2e-') {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

let idCounter = 0;
// A unique X-Request-ID (the proxy keeps a sane client id and logs it as "id").
export function requestId(label) {
  idCounter += 1;
  return `e2e-${label}-${process.pid}-${Date.now()}-${idCounter}`;
}

// The access-log entry with this request id. The line is written when the request completes,
// which may be just after the client saw the end of the body, so this polls briefly.
export async function accessLogEntry(stack, id, timeoutMs = 3_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let text = '';
    try {
      text = readFileSync(stack.accessLogPath, 'utf8');
    } catch {
      // not created yet
    }
    for (const line of text.split('\n')) {
      if (!line.includes(id)) continue;
      const entry = JSON.parse(line);
      if (entry.id === id) return entry;
    }
    if (Date.now() > deadline) {
      throw new Error(`no access-log line with id ${id} in ${stack.accessLogPath} after ${timeoutMs} ms:\n${text}`);
    }
    await sleep(25);
  }
}

// Rejects if `promise` has not settled within `ms` (so a hang fails the test instead of
// blocking the run).
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const userMessages = (text) => [{ role: 'user', content: text }];

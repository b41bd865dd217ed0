#!/usr/bin/env python3
"""mock.h2: the mock upstream's HTTP/2 (and that its HTTP/1.1 did not change), end to end.

Starts the real mock-upstream binary (plain, TLS, TLS with --alpn http/1.1, and short-lived ones
for SIGTERM and the idle timeout) and checks it with curl (--http2-prior-knowledge, --http2 over
TLS with a throwaway CA made by the openssl CLI, plain HTTP/1.1), nghttp, and a raw HTTP/2 client
written here (frames by hand, requests HPACK-encoded as literals) for what the CLIs cannot show:
several streams with different control headers on one h2c connection, the exact GOAWAY,
RST_STREAM and PING frames, and flow control.

curl 7.88 cannot multiplex h2c with prior knowledge (a reused connection fails, curl issue
10634): multi-stream h2c checks use nghttp and the raw client; curl multiplexes over TLS.

usage: test_h2.py --mock PATH/TO/mock-upstream
Exit 0 when every check passed. Needs curl (with HTTP/2), nghttp, openssl.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

KEY = "test-upstream-key"
AUTH = "Authorization: Bearer " + KEY

PASSED = 0
FAILED = []
# Resident memory bounds for the constant-memory checks; a sanitized build (its runtime options in
# the environment, from GLMP_TEST_ENV) keeps freed memory in quarantine, so only runaway growth.
SANITIZED = any(k in os.environ for k in ("ASAN_OPTIONS", "TSAN_OPTIONS"))
RSS_LIMIT_KB = 1000000 if SANITIZED else 60000


def check(name, ok, detail=""):
    global PASSED
    if ok:
        PASSED += 1
        print("ok    " + name)
    else:
        FAILED.append(name)
        print("FAIL  " + name + ("\n      " + str(detail)[:2000] if detail else ""))
    return ok


# ------------------------------------------------------------------------------------------------
# Processes


class Mock:
    def __init__(self, binary, args, workdir):
        self.args = [binary, "--port", "0"] + args
        self.err = open(os.path.join(workdir, "mock-%d.log" % id(self)), "w+")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self.err, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"LISTENING (\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError("mock did not start: %r %s" % (line, self.args))
        self.port = int(m.group(1))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return None
        return self.proc.returncode

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


def run(cmd, timeout=30, stdin=None):
    return subprocess.run(cmd, capture_output=True, timeout=timeout, input=stdin)


class CurlResult:
    def __init__(self, rc, version, status, headers, body, stderr):
        self.rc, self.version, self.status = rc, version, status
        self.headers, self.body, self.stderr = headers, body, stderr

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body.decode("utf-8", "replace"))

    def __repr__(self):
        return "rc=%s version=%s status=%s headers=%s body=%r stderr=%r" % (
            self.rc, self.version, self.status, self.headers, self.body[:600], self.stderr[-600:])


def curl(workdir, url, *opts, timeout=30):
    hdr = os.path.join(workdir, "curl.headers")
    body = os.path.join(workdir, "curl.body")
    for p in (hdr, body):
        if os.path.exists(p):
            os.unlink(p)
    cmd = ["curl", "-sS", "--max-time", str(timeout), "-D", hdr, "-o", body,
           "-w", "%{http_version} %{http_code}", *opts, url]
    p = run(cmd, timeout=timeout + 10)
    out = p.stdout.decode().split()
    version, status = (out + ["", ""])[:2]
    headers = []
    if os.path.exists(hdr):
        # The last response's head (after a 100 Continue).
        blocks = [b for b in open(hdr, "rb").read().decode("latin-1").split("\r\n\r\n") if b.strip()]
        if blocks:
            for line in blocks[-1].split("\r\n")[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers.append((k.strip(), v.strip()))
    data = open(body, "rb").read() if os.path.exists(body) else b""
    return CurlResult(p.returncode, version, status, headers, data, p.stderr.decode("utf-8", "replace"))


WORKDIR = None


def stats(port, https=False, cafile=None):
    workdir = WORKDIR
    if https:
        r = curl(workdir, "https://127.0.0.1:%d/__mock/stats" % port, "--http1.1", "--cacert", cafile)
    else:
        r = curl(workdir, "http://127.0.0.1:%d/__mock/stats" % port, "--http1.1")
    return r.json()


def make_pki(d):
    cmd = (
        "cd '%s' && "
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=glmp-test-ca "
        "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign >/dev/null 2>&1 && "
        "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost >/dev/null 2>&1 && "
        "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf && "
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 "
        "-extfile ext.cnf >/dev/null 2>&1" % d)
    if subprocess.call(cmd, shell=True) != 0:
        raise RuntimeError("openssl failed to make the test PKI")
    return os.path.join(d, "ca.pem"), os.path.join(d, "server.pem"), os.path.join(d, "server.key")


# ------------------------------------------------------------------------------------------------
# A raw HTTP/2 client: frames by hand, request headers as HPACK literals (no Huffman, no table).

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
NO_ERROR, INTERNAL_ERROR, REFUSED_STREAM = 0, 2, 7


def frame(ftype, flags, sid, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


def hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack(headers):
    out = bytearray()
    for name, value in headers:
        n, v = name.encode(), value.encode()
        out += b"\x00" + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v  # literal, not indexed
    return bytes(out)


class Frame:
    def __init__(self, t, ftype, flags, sid, payload):
        self.t, self.type, self.flags, self.sid, self.payload = t, ftype, flags, sid, payload

    def __repr__(self):
        return "<%.3f type=%d flags=%#x sid=%d len=%d>" % (self.t, self.type, self.flags, self.sid,
                                                           len(self.payload))


class H2Raw:
    def __init__(self, port, settings=(), tls_ctx=None, window=None):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if tls_ctx is not None:
            s = tls_ctx.wrap_socket(s, server_hostname="localhost")
        self.sock = s
        self.buf = b""
        self.frames = []
        self.eof = False
        self.t0 = time.monotonic()
        settings = list(settings) + ([(0x4, window)] if window else [])
        payload = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in settings)
        out = PREFACE + frame(SETTINGS, 0, 0, payload)
        if window:  # the connection's window too
            out += frame(WINDOW_UPDATE, 0, 0, window.to_bytes(4, "big"))
        self.sock.sendall(out)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def request(self, sid, path, headers=(), body=None, method="POST", port=0, chunks=1):
        fields = [(":method", method), (":scheme", "http"), (":path", path),
                  (":authority", "127.0.0.1:%d" % port)] + list(headers)
        flags = END_HEADERS | (END_STREAM if body is None else 0)
        out = frame(HEADERS, flags, sid, hpack(fields))
        if body is not None:
            body = body.encode() if isinstance(body, str) else body
            step = max(1, (len(body) + chunks - 1) // chunks)
            parts = [body[i:i + step] for i in range(0, len(body), step)] or [b""]
            for i, part in enumerate(parts):
                out += frame(DATA, END_STREAM if i == len(parts) - 1 else 0, sid, part)
        self.send(out)

    def read(self, timeout, until=None):
        """Reads frames for up to `timeout` s, or until until(self) is true, or the end."""
        deadline = time.monotonic() + timeout
        while not self.eof and (until is None or not until(self)):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            except (ConnectionResetError, ssl.SSLError):
                self.eof = True
                break
            if not data:
                self.eof = True
                break
            self.buf += data
            while len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + n:
                    break
                f = Frame(time.monotonic() - self.t0, self.buf[3], self.buf[4],
                          int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF, self.buf[9:9 + n])
                self.buf = self.buf[9 + n:]
                self.frames.append(f)
                if f.type == SETTINGS and not f.flags & ACK:
                    self.send(frame(SETTINGS, ACK, 0))
        return self

    def of(self, sid, ftype=None):
        return [f for f in self.frames if f.sid == sid and (ftype is None or f.type == ftype)]

    def data(self, sid):
        return b"".join(f.payload for f in self.of(sid, DATA))

    def ended(self, sid):
        return any(f.flags & END_STREAM for f in self.of(sid) if f.type in (DATA, HEADERS))

    def rst(self, sid):
        r = self.of(sid, RST_STREAM)
        return int.from_bytes(r[0].payload, "big") if r else None

    def goaways(self):
        return [(int.from_bytes(f.payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(f.payload[4:8], "big"))
                for f in self.frames if f.type == GOAWAY]

    def index(self, pred):
        for i, f in enumerate(self.frames):
            if pred(f):
                return i
        return -1


# ------------------------------------------------------------------------------------------------
# Response checks shared by the protocols


def openai_events(body):
    out = []
    for line in body.decode("utf-8", "replace").split("\n"):
        if line.startswith("data: "):
            payload = line[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def anthropic_events(body):
    out = []
    for block in body.decode("utf-8", "replace").split("\n\n"):
        lines = block.strip().split("\n")
        if len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "):
            out.append((lines[0][7:], json.loads(lines[1][6:])))
    return out


def no_hop_by_hop(r):
    names = [k.lower() for k, _ in r.headers]
    return not any(n in names for n in ("connection", "transfer-encoding", "keep-alive"))


def check_flavours(tag, base, workdir, opts, want_version):
    """Non-streaming and streaming answers, both flavours, chunk counts, status, echo."""
    chat = base + "/v1/chat/completions"
    msgs = base + "/v1/messages"
    h2 = want_version == "2"
    body = json.dumps({"model": "glm-4.5-air", "messages": [{"role": "user", "content": "x" * 37}]})
    p_tokens = max(1, len(body) // 4)

    r = curl(workdir, chat, *opts, "-H", AUTH, "-d", body)
    ok = r.rc == 0 and r.version == want_version and r.status == "200"
    if ok:
        j = r.json()
        ok = (j["choices"][0]["message"]["content"] == "tok0 tok1 tok2 " and j["model"] == "glm-4.5-air"
              and j["usage"] == {"prompt_tokens": p_tokens, "completion_tokens": 3, "total_tokens": p_tokens + 3}
              and r.header("content-length") == str(len(r.body)) and (no_hop_by_hop(r) or not h2)
              and r.header("content-type") == "application/json" and r.header("date") is not None)
    check(tag + " openai non-streaming (HTTP/%s, usage P=body/4, content-length, no hop-by-hop)" % want_version,
          ok, r)

    r = curl(workdir, msgs, *opts, "-H", "x-api-key: " + KEY, "-H", "x-mock-chunks: 5",
             "-H", "x-mock-cache-read: 11", "-d", body)
    ok = r.rc == 0 and r.version == want_version and r.status == "200"
    if ok:
        j = r.json()
        ok = (j["content"][0]["text"] == "tok0 tok1 tok2 tok3 tok4 " and j["usage"]["input_tokens"] == p_tokens
              and j["usage"]["output_tokens"] == 5 and j["usage"]["cache_read_input_tokens"] == 11
              and r.header("content-length") == str(len(r.body)))
    check(tag + " anthropic non-streaming with x-api-key, x-mock-chunks: 5, cache headers", ok, r)

    sbody = json.dumps({"model": "glm-4.7", "stream": True, "stream_options": {"include_usage": True}})
    r = curl(workdir, chat, *opts, "-N", "-H", AUTH, "-H", "x-mock-chunks: 4", "-d", sbody)
    ok = r.rc == 0 and r.version == want_version and r.status == "200"
    if ok:
        ev = openai_events(r.body)
        content = "".join(e["choices"][0]["delta"].get("content", "") for e in ev[:-1] if e != "[DONE]" and e["choices"])
        ok = (ev[-1] == "[DONE]" and content == "tok0 tok1 tok2 tok3 " and ev[-2]["choices"] == []
              and ev[-2]["usage"]["completion_tokens"] == 4 and r.header("content-type") == "text/event-stream"
              and r.header("content-length") is None and (no_hop_by_hop(r) or not h2))
    check(tag + " openai streaming (include_usage, x-mock-chunks: 4, no transfer-encoding on h2)", ok, r)

    r = curl(workdir, chat, *opts, "-N", "-H", AUTH, "-H", "x-mock-usage-in-last-chunk: 1",
             "-d", json.dumps({"stream": True}))
    ok = r.rc == 0 and r.status == "200"
    if ok:
        ev = openai_events(r.body)
        ok = ev[-1] == "[DONE]" and ev[-2]["choices"][0]["finish_reason"] == "stop" and ev[-2]["usage"]["completion_tokens"] == 3
    check(tag + " openai streaming usage-in-last-chunk", ok, r)

    r = curl(workdir, msgs, *opts, "-N", "-H", "x-api-key: " + KEY, "-H", "x-mock-chunks: 2",
             "-H", "x-mock-cache-creation: 5", "-d", json.dumps({"stream": True, "model": "glm-4.7"}))
    ok = r.rc == 0 and r.version == want_version and r.status == "200"
    if ok:
        ev = anthropic_events(r.body)
        names = [n for n, _ in ev]
        ok = (names == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
                        "content_block_stop", "message_delta", "message_stop"]
              and ev[0][1]["message"]["usage"]["cache_creation_input_tokens"] == 5
              and ev[6][1]["usage"]["output_tokens"] == 2)
    check(tag + " anthropic streaming (x-mock-chunks: 2)", ok, r)

    r = curl(workdir, chat, *opts, "-H", AUTH, "-H", "x-mock-chunks: 0", "-d", "{}")
    check(tag + " x-mock-chunks: 0", r.rc == 0 and r.status == "200" and r.json()["choices"][0]["message"]["content"] == "", r)

    r = curl(workdir, chat, *opts, "-H", AUTH, "-H", "x-mock-status: 503", "-d", "{}")
    ok = r.rc == 0 and r.status == "503" and r.header("x-mock-error") == "1"
    ok = ok and r.json()["error"]["code"] == "service_unavailable"
    check(tag + " x-mock-status: 503 (openai error body, x-mock-error)", ok, r)

    r = curl(workdir, msgs, *opts, "-H", "x-api-key: " + KEY, "-H", "x-mock-status: 429",
             "-H", "x-mock-error-message: slow down", "-d", "{}")
    ok = r.rc == 0 and r.status == "429" and r.header("retry-after") == "7"
    ok = ok and r.json() == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    check(tag + " x-mock-status: 429 + x-mock-error-message (anthropic, retry-after)", ok, r)

    r = curl(workdir, chat, *opts, "-H", "Authorization: Bearer wrong", "-d", "{}")
    check(tag + " bad key is a 401", r.rc == 0 and r.status == "401", r)
    r = curl(workdir, chat, *opts, "-H", AUTH, "-H", "x-mock-nonsense: 1", "-d", "{}")
    check(tag + " unknown control header is a 400", r.rc == 0 and r.status == "400", r)
    r = curl(workdir, chat, *opts, "-H", AUTH, "-d", "{not json")
    check(tag + " malformed JSON is a 400", r.rc == 0 and r.status == "400", r)
    r = curl(workdir, base + "/v1/models", *opts, "-H", AUTH)
    check(tag + " GET /v1/models", r.rc == 0 and r.status == "200" and len(r.json()["data"]) == 2, r)
    r = curl(workdir, base + "/v1/models", *opts, "-I", "-H", "x-mock-echo: 1")
    # (with -I, curl writes the head where the body would go: nothing else may follow it)
    check(tag + " HEAD keeps the content-length, no body",
          r.rc == 0 and r.status == "200" and int(r.header("content-length") or 0) > 0
          and r.body.endswith(b"\r\n\r\n") and b"{" not in r.body, r)

    r = curl(workdir, chat, *opts, "-H", AUTH, "-H", "x-mock-garbage: 1", "-d", "{}")
    check(tag + " x-mock-garbage", r.rc == 0 and r.status == "200" and r.body == b"\x00\xffnot json{{{", r)

    t = time.monotonic()
    r = curl(workdir, chat, *opts, "-H", AUTH, "-H", "x-mock-stall-ms: 300", "-d", "{}")
    check(tag + " x-mock-stall-ms: 300", r.rc == 0 and r.status == "200" and time.monotonic() - t >= 0.29, r)

    host = base.split("//", 1)[1]
    r = curl(workdir, base + "/any/path?q=1&b=2", *opts, "-X", "PUT", "-H", "x-mock-echo: 1", "-H", "X-Custom: A",
             "-H", "x-custom: B", "--data-binary", "h\xe9llo")
    ok = r.rc == 0 and r.status == "200"
    if ok:
        j = r.json()
        h = j["headers"]
        ok = (j["method"] == "PUT" and j["path"] == "/any/path" and j["query"] == "q=1&b=2"
              and j["body"] == "h\xe9llo" and h.get("host") == host and h.get("x-custom") == "A, B"
              and h.get("x-mock-echo") == "1" and all(k == k.lower() for k in h))
    check(tag + " x-mock-echo (host, lowercase names, joined duplicates, body)", ok, r)


# ------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mock", required=True)
    args = ap.parse_args()
    for tool in ("curl", "nghttp", "openssl"):
        if shutil.which(tool) is None:
            print("FAIL  %s is not installed (Debian: curl, nghttp2-client, openssl)" % tool)
            return 1
    if "HTTP2" not in run(["curl", "--version"]).stdout.decode():
        print("FAIL  curl has no HTTP/2")
        return 1

    global WORKDIR
    workdir = WORKDIR = tempfile.mkdtemp(prefix="mock-h2-")
    mocks = []

    def start(mock_args):
        m = Mock(args.mock, mock_args, workdir)
        mocks.append(m)
        return m

    try:
        cafile, cert, key = make_pki(workdir)
        plain = start([])
        tls = start(["--https", "--cert", cert, "--key", key])
        h1only = start(["--https", "--cert", cert, "--key", key, "--alpn", "http/1.1"])
        tuned = start(["--max-concurrent-streams", "7", "--h2-window", "4096"])
        pbase = "http://127.0.0.1:%d" % plain.port
        tbase = "https://localhost:%d" % tls.port
        tls_opts = ["--http2", "--cacert", cafile]

        # --- HTTP/2: h2c with prior knowledge, TLS with ALPN h2 --------------------------------
        s0 = stats(plain.port)
        check("stats has the h2 fields", all(k in s0 for k in (
            "connections", "requests", "active", "current_connections", "h2_connections", "h2_streams",
            "max_streams_per_connection", "goaways")), s0)
        check_flavours("h2c", pbase, workdir, ["--http2-prior-knowledge"], "2")
        check_flavours("h2/tls", tbase, workdir, tls_opts, "2")
        s1 = stats(plain.port)
        check("stats: h2_connections and h2_streams count the h2c requests",
              s1["h2_connections"] - s0["h2_connections"] >= 15 and s1["h2_streams"] - s0["h2_streams"] >= 15
              and s1["active"] == 0, (s0, s1))

        # Request bodies in several DATA frames count as one body: P = bytes / 4.
        raw = H2Raw(plain.port)
        body = json.dumps({"model": "glm-4.7", "pad": "y" * 380})
        raw.request(1, "/v1/chat/completions", [("authorization", "Bearer " + KEY)], body, port=plain.port, chunks=5)
        raw.read(5, until=lambda c: c.ended(1))
        ok = raw.ended(1)
        if ok:
            ok = json.loads(raw.data(1))["usage"]["prompt_tokens"] == len(body) // 4
        check("h2c body in 5 DATA frames: prompt_tokens = bytes / 4", ok, raw.frames)
        # PING is ACKed with its payload.
        raw.send(frame(PING, 0, 0, b"12345678"))
        raw.read(5, until=lambda c: any(f.type == PING for f in c.frames))
        pings = [f for f in raw.frames if f.type == PING]
        check("h2c PING is ACKed", len(pings) == 1 and pings[0].flags & ACK and pings[0].payload == b"12345678", pings)
        raw.close()

        # The HTTP/1.1 request limits: a 400 on that stream, the connection goes on.
        r = curl(workdir, pbase + "/v1/models", "--http2-prior-knowledge", "-H", AUTH, "-H", "x-long: " + "a" * 9000)
        check("h2c header value over 8192 bytes: 400, no body", r.rc == 0 and r.status == "400" and r.body == b"", r)

        # Streamed events are DATA frames as they are produced, at the x-mock-delay-ms pace.
        sb = os.path.join(workdir, "stream.json")
        with open(sb, "w") as f:
            f.write(json.dumps({"stream": True}))
        p = run(["nghttp", "-nv", pbase + "/v1/chat/completions", "-H", AUTH, "-H", "x-mock-chunks: 3",
                 "-H", "x-mock-delay-ms: 150", "-d", sb])
        times = [float(m.group(1)) for m in re.finditer(r"\[\s*([\d.]+)\] recv DATA frame", p.stdout.decode())]
        check("nghttp h2c stream: DATA frames paced by x-mock-delay-ms (3 x 150 ms)",
              p.returncode == 0 and len(times) >= 4 and times[-1] - times[0] >= 0.42
              and all(b - a >= 0.13 for a, b in zip(times[:3], times[1:4])), p.stdout.decode()[-3000:])
        p = run(["nghttp", "-nv", tbase + "/v1/messages", "-H", "x-api-key: " + KEY, "-d", sb])
        out = p.stdout.decode()
        check("nghttp over TLS (ALPN h2): anthropic stream", p.returncode == 0 and ":status: 200" in out
              and "recv DATA frame" in out, out[-2000:])

        # Several streams at once on one connection (nghttp multiplexes h2c).
        p = run(["nghttp", "-n", "-m", "4", "-s", pbase + "/v1/chat/completions", "-H", AUTH,
                 "-H", "x-mock-delay-ms: 100", "-H", "x-mock-chunks: 2", "-d", sb])
        check("nghttp -m 4: four concurrent streams served", p.returncode == 0
              and p.stdout.decode().count("/v1/chat/completions") >= 4, p.stdout.decode() + p.stderr.decode())
        s2 = stats(plain.port)
        check("stats: max_streams_per_connection >= 4", s2["max_streams_per_connection"] >= 4, s2)

        # x-mock-reset-after: RST_STREAM(INTERNAL_ERROR) for that stream; curl reports a stream error.
        # (What curl shows of the bytes before it varies: a curl that reads the DATA and the
        # RST_STREAM in one go drops the DATA. The raw client below checks the frames exactly.)
        r = curl(workdir, pbase + "/v1/chat/completions", "--http2-prior-knowledge", "-N", "-H", AUTH,
                 "-H", "x-mock-reset-after: 1", "-d", json.dumps({"stream": True}))
        check("h2c x-mock-reset-after: curl reports the HTTP/2 stream error (92, INTERNAL_ERROR)",
              r.rc == 92 and "INTERNAL_ERROR" in r.stderr and b"tok1" not in r.body, r)
        r = curl(workdir, tbase + "/v1/chat/completions", *tls_opts, "-H", AUTH, "-H", "x-mock-reset-after: 0",
                 "-H", "x-mock-large-bytes: 300000", "-d", "{}")
        check("h2/tls x-mock-reset-after non-streaming: the stream error before the whole body",
              r.rc == 92 and "INTERNAL_ERROR" in r.stderr and len(r.body) < 200000, r)
        raw = H2Raw(plain.port, window=1 << 24)
        raw.request(1, "/v1/chat/completions", [("authorization", "Bearer " + KEY), ("x-mock-reset-after", "0"),
                                                ("x-mock-large-bytes", "300000")], "{}", port=plain.port)
        raw.read(5, until=lambda c: c.rst(1) is not None)
        total = len(raw.data(1))
        check("h2c x-mock-reset-after non-streaming: HEADERS, half the body as DATA, RST_STREAM(INTERNAL_ERROR)",
              raw.rst(1) == INTERNAL_ERROR and raw.of(1, HEADERS) and 150000 <= total <= 150200
              and not raw.ended(1), (total, raw.frames[:8]))
        raw.close()
        # ... and the connection and the other streams go on.
        raw = H2Raw(plain.port)
        sh = [("authorization", "Bearer " + KEY), ("x-mock-delay-ms", "100"), ("x-mock-chunks", "3")]
        raw.request(1, "/v1/chat/completions", sh, '{"stream":true}', port=plain.port)
        raw.request(3, "/v1/chat/completions", sh + [("x-mock-reset-after", "1")], '{"stream":true}', port=plain.port)
        raw.read(5, until=lambda c: c.ended(1) and c.rst(3) is not None)
        raw.request(5, "/v1/models", [("authorization", "Bearer " + KEY)], method="GET", port=plain.port)
        raw.read(5, until=lambda c: c.ended(5))
        check("h2c reset-after on one stream: RST_STREAM(INTERNAL_ERROR) after its first event, others go on",
              raw.rst(3) == INTERNAL_ERROR and b"tok0" in raw.data(3) and b"tok1" not in raw.data(3)
              and raw.ended(1) and b"[DONE]" in raw.data(1) and raw.ended(5) and not raw.goaways()
              and not raw.eof, raw.frames)
        raw.close()

        # The client cancels a stream (RST_STREAM(CANCEL)): its answer stops, the connection goes on.
        raw = H2Raw(plain.port)
        raw.request(1, "/v1/chat/completions", sh + [("x-mock-delay-ms", "200")], '{"stream":true}', port=plain.port)
        raw.read(5, until=lambda c: c.data(1))
        busy = stats(plain.port)["active"]
        raw.send(frame(RST_STREAM, 0, 1, (8).to_bytes(4, "big")))
        raw.read(0.3)
        n_after = len([f for f in raw.of(1) if f.t > raw.frames[-1].t - 0.25 and f.type == DATA])
        idle = stats(plain.port)["active"]
        raw.request(3, "/v1/models", [("authorization", "Bearer " + KEY)], method="GET", port=plain.port)
        raw.read(5, until=lambda c: c.ended(3))
        check("h2c client RST_STREAM(CANCEL): the answer stops (active back to 0), the connection goes on",
              busy >= 1 and idle == 0 and not raw.ended(1) and raw.ended(3) and not raw.eof, (busy, idle, n_after,
                                                                                               raw.frames))
        raw.close()

        # x-mock-goaway-after: GOAWAY(NO_ERROR, last = this stream) after N events; it and the
        # earlier streams complete, the later one is refused; then the connection closes.
        g0 = stats(plain.port)
        raw = H2Raw(plain.port)
        raw.request(1, "/v1/chat/completions", sh, '{"stream":true}', port=plain.port)
        raw.request(3, "/v1/chat/completions", sh + [("x-mock-goaway-after", "1")], '{"stream":true}',
                    port=plain.port)
        raw.request(5, "/v1/chat/completions", sh, '{"stream":true}', port=plain.port)
        raw.read(10)
        ga = raw.goaways()
        gi = raw.index(lambda f: f.type == GOAWAY)
        tok0 = raw.index(lambda f: f.sid == 3 and b"tok0" in f.payload)
        tok1 = raw.index(lambda f: f.sid == 3 and b"tok1" in f.payload)
        check("h2c x-mock-goaway-after: 1: GOAWAY(last=3, NO_ERROR) between the stream's 1st and 2nd events",
              ga == [(3, NO_ERROR)] and 0 <= tok0 < gi < tok1, raw.frames)
        check("h2c goaway-after: streams 1 and 3 complete, 5 is refused (nothing after the GOAWAY), close",
              raw.ended(1) and raw.ended(3) and b"[DONE]" in raw.data(1) and b"[DONE]" in raw.data(3)
              and not raw.ended(5) and not [f for f in raw.frames[gi:] if f.sid == 5] and raw.eof, raw.frames)
        raw.close()
        g1 = stats(plain.port)
        check("stats: goaways counts the GOAWAY", g1["goaways"] - g0["goaways"] == 1, (g0, g1))

        # x-mock-goaway-refuse: GOAWAY(last = id - 2) then RST_STREAM(REFUSED_STREAM); never processed.
        raw = H2Raw(plain.port)
        raw.request(1, "/v1/chat/completions", sh, '{"stream":true}', port=plain.port)
        raw.read(5, until=lambda c: c.data(1))
        raw.request(3, "/v1/chat/completions", [("authorization", "Bearer " + KEY), ("x-mock-goaway-refuse", "1")],
                    "{}", port=plain.port)
        raw.read(10)
        gi = raw.index(lambda f: f.type == GOAWAY)
        ri = raw.index(lambda f: f.type == RST_STREAM and f.sid == 3)
        check("h2c x-mock-goaway-refuse: GOAWAY(last=1) then RST_STREAM(3, REFUSED_STREAM)",
              raw.goaways() == [(1, NO_ERROR)] and raw.rst(3) == REFUSED_STREAM and 0 <= gi < ri
              and not raw.of(3, HEADERS), raw.frames)
        check("h2c goaway-refuse: stream 1 completes, then the connection closes",
              raw.ended(1) and b"[DONE]" in raw.data(1) and raw.eof, raw.frames)
        raw.close()
        g2 = stats(plain.port)
        check("stats: a refused request is not counted (requests +1, goaways +1)",
              g2["requests"] - g1["requests"] == 1 and g2["goaways"] - g1["goaways"] == 1, (g1, g2))
        # Over TLS, curl retries the refused request on a new connection (refused again there).
        r = curl(workdir, tbase + "/v1/chat/completions", *tls_opts, "-H", AUTH, "-H", "x-mock-goaway-refuse: 1",
                 "-d", "{}")
        check("h2/tls goaway-refuse: curl gets no answer", r.rc != 0 and r.status in ("000", ""), r)

        # Flow control: with the peer's window closed the stream stops; a WINDOW_UPDATE resumes it.
        raw = H2Raw(plain.port, settings=[(0x4, 4096)])
        raw.request(1, "/v1/chat/completions", [("authorization", "Bearer " + KEY),
                                                ("x-mock-large-bytes", "200000000")], "{}", port=plain.port)
        raw.read(1.0)
        first = len(raw.data(1))
        rss = plain.rss_kb()
        mid = stats(plain.port)
        raw.send(frame(WINDOW_UPDATE, 0, 1, (100000).to_bytes(4, "big"))
                 + frame(WINDOW_UPDATE, 0, 0, (100000).to_bytes(4, "big")))
        raw.read(1.0, until=lambda c: len(c.data(1)) >= 104096)
        raw.read(0.3)
        second = len(raw.data(1))
        check("h2c flow control: 4096-byte stream window = 4096 DATA bytes, then nothing",
              first == 4096 and mid["active"] >= 1, (first, mid))
        check("h2c flow control: WINDOW_UPDATE(100000) lets exactly 100000 more through", second == 104096, second)
        check("h2c flow control: a stalled 200 MB answer takes little memory", rss < RSS_LIMIT_KB, rss)
        raw.close()
        time.sleep(0.3)
        check("h2c connection closed mid-answer: the request is no longer active",
              stats(plain.port)["active"] == 0, stats(plain.port))

        # x-mock-large-bytes at full speed over h2: exact content-length, constant memory.
        r = curl(workdir, pbase + "/v1/chat/completions", "--http2-prior-knowledge", "-H", AUTH,
                 "-H", "x-mock-large-bytes: 50000000", "-d", "{}")
        ok = r.rc == 0 and r.status == "200" and r.header("content-length") == str(len(r.body))
        check("h2c x-mock-large-bytes: 50 MB non-streaming, content-length exact", ok and len(r.body) > 50000000,
              r.rc)
        r = curl(workdir, pbase + "/v1/chat/completions", "--http2-prior-knowledge", "-N", "-H", AUTH,
                 "-H", "x-mock-large-bytes: 20000000", "-d", json.dumps({"stream": True}))
        ev = openai_events(r.body) if r.rc == 0 else []
        check("h2c x-mock-large-bytes streaming: 20 MB of content in 16 KiB events",
              r.rc == 0 and ev and ev[-1] == "[DONE]" and sum(len(e["choices"][0]["delta"].get("content", ""))
                                                              for e in ev[:-1] if e["choices"]) == 20000000, r.rc)
        check("mock memory stays small after 50 MB + 200 MB answers", plain.rss_kb() < RSS_LIMIT_KB, plain.rss_kb())

        # Expect: 100-continue over h2: a 100 first.
        r = curl(workdir, pbase + "/v1/chat/completions", "--http2-prior-knowledge", "-v", "-H", AUTH,
                 "-H", "Expect: 100-continue", "-d", "{}")
        check("h2c Expect: 100-continue gets a 100, then the answer",
              r.rc == 0 and r.status == "200" and "HTTP/2 100" in r.stderr, r)

        # --max-concurrent-streams, --h2-window: the SETTINGS the mock sends.
        p = run(["nghttp", "-nv", "http://127.0.0.1:%d/__mock/stats" % tuned.port])
        out = p.stdout.decode()
        check("--max-concurrent-streams 7 --h2-window 4096 are in the SETTINGS",
              "SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7" in out and "SETTINGS_INITIAL_WINDOW_SIZE(0x04):4096" in out,
              out[:1500])
        check("default SETTINGS: 100 streams, window 65535", "SETTINGS_MAX_CONCURRENT_STREAMS(0x03):100" in
              run(["nghttp", "-nv", pbase + "/__mock/stats"]).stdout.decode())
        # A request body larger than the 4096 window still arrives whole (WINDOW_UPDATEs).
        big = json.dumps({"pad": "z" * 40000})
        r = curl(workdir, "http://127.0.0.1:%d/v1/chat/completions" % tuned.port, "--http2-prior-knowledge",
                 "-H", AUTH, "-d", big)
        check("--h2-window 4096: a 40 KB request body arrives whole",
              r.rc == 0 and r.status == "200" and r.json()["usage"]["prompt_tokens"] == len(big) // 4, r)

        # --- ALPN ---------------------------------------------------------------------------
        r = curl(workdir, "https://localhost:%d/v1/chat/completions" % h1only.port, *tls_opts, "-H", AUTH,
                 "-d", "{}")
        check("--alpn http/1.1: curl --http2 falls back to HTTP/1.1", r.rc == 0 and r.version == "1.1"
              and r.status == "200" and r.header("Connection") == "Keep-Alive", r)
        s = stats(h1only.port, True, cafile)
        check("--alpn http/1.1: no h2 connection", s["h2_connections"] == 0 and s["connections"] >= 2, s)
        r = curl(workdir, tbase + "/__mock/stats", "--http1.1", "--cacert", cafile)
        check("default ALPN: a client offering only http/1.1 gets HTTP/1.1", r.rc == 0 and r.version == "1.1", r)

        # --- HTTP/1.1 as before ------------------------------------------------------------
        check_flavours("http/1.1", pbase, workdir, ["--http1.1"], "1.1")
        r = curl(workdir, pbase + "/v1/chat/completions", "--http1.1", "-H", AUTH, "-d", "{}")
        check("http/1.1 head as before (Connection: Keep-Alive, Content-Length)",
              r.header("Connection") == "Keep-Alive" and r.header("Content-Length") == str(len(r.body)), r)
        r = curl(workdir, pbase + "/v1/chat/completions", "--http1.1", "-N", "-H", AUTH, "-d", '{"stream":true}')
        check("http/1.1 streams are chunked", r.header("Transfer-Encoding") == "chunked", r)
        r = curl(workdir, pbase + "/v1/chat/completions", "--http2", "-H", AUTH, "-d", "{}")
        check("plain curl --http2 (Upgrade: h2c) stays HTTP/1.1", r.rc == 0 and r.version == "1.1", r)
        r = curl(workdir, pbase + "/v1/chat/completions", "--http1.1", "-N", "-H", AUTH,
                 "-H", "x-mock-reset-after: 1", "-d", '{"stream":true}')
        check("http/1.1 x-mock-reset-after: connection reset", r.rc == 56 and b"tok1" not in r.body, r)
        # Pipelined requests, the first one sent a byte at a time (its first byte is the
        # preface's first byte, 'P').
        with socket.create_connection(("127.0.0.1", plain.port), timeout=10) as sock:
            req = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                   "Content-Length: 2\r\n\r\n{}" % KEY).encode()
            sock.sendall(req[:1])
            time.sleep(0.1)
            sock.sendall(req[1:] + b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         + KEY.encode() + b"\r\nConnection: close\r\n\r\n")
            got = b""
            while True:
                d = sock.recv(65536)
                if not d:
                    break
                got += d
        check("http/1.1 pipelined requests (first one byte by byte) both answered, in order",
              got.count(b"HTTP/1.1 200 OK") == 2 and got.index(b"chat.completion") < got.index(b"glm-4.5-air")
              and b"Connection: Close" in got, got[:400])
        with socket.create_connection(("127.0.0.1", plain.port), timeout=10) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
            got = sock.recv(65536)
        check("almost the preface (differs at byte 19) is HTTP/1.1: llhttp's 400 as before",
              got == b"HTTP/1.1 400 Bad Request\r\nConnection: Close\r\n\r\n", got[:200])

        # --- SIGTERM: GOAWAY, then the close; the idle timeout: GOAWAY, then the close ------------
        m = start([])
        raw = H2Raw(m.port)
        raw.request(1, "/v1/chat/completions", sh, '{"stream":true}', port=m.port)
        raw.read(5, until=lambda c: c.data(1))
        m.proc.send_signal(signal.SIGTERM)
        raw.read(5)
        rc = m.proc.wait(timeout=10)
        check("SIGTERM: h2 connection gets GOAWAY(NO_ERROR), then the end; exit 0",
              raw.goaways() == [(1, NO_ERROR)] and raw.eof and rc == 0, (raw.frames, rc))
        raw.close()

        m = start(["--keepalive-timeout-ms", "400"])
        raw = H2Raw(m.port)
        raw.request(1, "/v1/models", [("authorization", "Bearer " + KEY)], method="GET", port=m.port)
        t = time.monotonic()
        raw.read(5)
        waited = time.monotonic() - t
        check("idle h2 connection: GOAWAY after --keepalive-timeout-ms, then the close",
              raw.ended(1) and raw.goaways() == [(1, NO_ERROR)] and raw.eof and 0.3 < waited < 3, (waited, raw.frames))
        raw.close()

        for mk in (plain, tls, h1only, tuned):
            rc = mk.stop()
            check("mock exits 0 on SIGTERM (port %d)" % mk.port, rc == 0, rc)
    finally:
        for mk in mocks:
            if mk.proc.poll() is None:
                mk.proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    print("%d passed, %d failed" % (PASSED, len(FAILED)))
    for name in FAILED:
        print("failed: " + name)
    return 0 if not FAILED else 1


if __name__ == "__main__":
    sys.exit(main())

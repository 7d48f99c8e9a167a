#!/usr/bin/env python3
"""End-to-end checks of the browser client (/_switchyard/client.js) and the
live console, in headless Chromium (Debian's) driven by Playwright.

Run through tests/e2e/run.sh (after e2e.py), or directly with the venv's
python once the gateway is built. Prints `PASS name` / `FAIL name: reason`
per check, then one line `N passed, M failed` (or, when E2E_COUNTS_FILE is
set, writes `N M` there for run.sh and prints a subtotal line instead);
exits 1 if any check failed.

Each check starts its own gateway(s) (no dashboard, HOST=127.0.0.1,
LOG_FORMAT=json) and, where the page is not served by the gateway itself, a
small test page from a local http.server on another port; the gateway then
gets CORS_ORIGINS=<the page's origin>. Check 2 puts an asyncio TCP relay
between the browser and the gateway to cut connections. The token checks give the gateway
AUTH_SECRET and mint HS256 tokens here (common.mint_token); a function token
fetches them from the page server's /token-NAME route. Everything stays on
127.0.0.1; every process started here is stopped at the end of its check.
"""

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from playwright.sync_api import sync_playwright

from common import (
    CHROMIUM,
    CHROMIUM_ARGS,
    GATEWAY_BIN,
    OUT,
    ROOT,
    free_port,
    http_json,
    mint_token,
    record,
    report,
)

# Variables the gateway reads: none leaks in from the caller's environment.
GATEWAY_VARIABLES = [
    "PORT", "HOST", "WEBSOCKET_ENABLED", "WEBSOCKET_PATH", "DASHBOARD_URL", "DASHBOARD_COMMAND",
    "WORKER_COMMAND",
    "UPSTREAM_TIMEOUT_SECS", "TRUSTED_PROXIES", "PUBLISH_TOKEN", "CORS_ORIGINS", "HISTORY_SIZE",
    "MAX_CONNECTIONS", "MAX_MESSAGE_BYTES", "CLIENT_QUEUE", "PING_INTERVAL_SECS",
    "SHUTDOWN_GRACE_SECS", "REDIS_URL", "REDIS_PREFIX", "RAILWAY_DEPLOYMENT_DRAINING_SECONDS",
    "LOG_FORMAT", "RAILWAY_PUBLIC_DOMAIN", "RAILWAY_STATIC_URL", "PUBLIC_URL", "RUST_LOG",
    "AUTH_SECRET", "BASIC_AUTH",
]

# AUTH_SECRET of the token checks (>= 32 bytes), and one the gateway does
# not know, for tokens that must be refused.
SECRET = "client-e2e-secret-0123456789abcdef0123"
WRONG_SECRET = "not-the-gateway-secret-0123456789abcdef"

notes = []


def log(msg):
    print(f"[client-e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Interrupted(BaseException):
    """SIGTERM (run.sh's timeout): the running check fails, the rest are skipped."""


def run_test(name, fn):
    t0 = time.monotonic()
    log(f"--- {name}")
    try:
        detail = fn() or ""
    except Interrupted:
        record(name, False, f"interrupted by SIGTERM after {time.monotonic() - t0:.1f}s (run.sh's time budget?)")
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is reported
        reason = f"{type(exc).__name__}: {exc}".strip().splitlines()
        record(name, False, " | ".join(reason[:8]) + f"; {time.monotonic() - t0:.1f}s")
        traceback.print_exc(file=sys.stderr)
        return False
    took = f"{time.monotonic() - t0:.1f}s"
    record(name, True, f"{detail}; {took}" if detail else took)
    return True


# ---------------------------------------------------------------- gateway


class Gateway:
    """One switchyard process without a dashboard."""

    def __init__(self, label, port=None, **env):
        self.label = label
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.extra_env = {k: str(v) for k, v in env.items()}
        self.log_path = OUT / f"client-{label}.log"
        self.proc = None
        self.log_file = None

    def start(self, timeout=10):
        env = {k: v for k, v in os.environ.items()
               if k not in GATEWAY_VARIABLES and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        env.update(PORT=str(self.port), HOST="127.0.0.1", LOG_FORMAT="json", SHUTDOWN_GRACE_SECS="5")
        env.update(self.extra_env)
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            self.log_file = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [str(GATEWAY_BIN)], cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL,
                stdout=self.log_file, stderr=subprocess.STDOUT,
            )
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    status, _ = http_json(self.base + "/_switchyard/config", timeout=1)
                    if status == 200:
                        log(f"gateway {self.label} pid {self.proc.pid} on {self.base} "
                            f"{' '.join(f'{k}={v}' for k, v in self.extra_env.items())}")
                        return self
                except OSError:
                    pass
                time.sleep(0.05)
            self.log_file.close()
            # Exited (e.g. the port is not free yet after a restart): retry
            # until the deadline.
            if self.proc.poll() is None:
                self.kill()
                raise AssertionError(f"gateway {self.label} did not answer within {timeout}s")
            if time.monotonic() >= deadline:
                tail = self.log_path.read_text(errors="replace").splitlines()[-3:]
                raise AssertionError(
                    f"gateway {self.label} exited with {self.proc.returncode} ({attempt} attempts): {tail}")
            time.sleep(0.2)

    def publish(self, topic, data, retain=False):
        status, body = http_json(self.base + "/_switchyard/publish", {"topic": topic, "data": data, "retain": retain})
        if status != 202:
            raise AssertionError(f"publish {topic} answered {status}: {body}")
        return body

    def state(self, topics):
        status, body = http_json(self.base + "/_switchyard/state?topics=" + urllib.parse.quote(topics, safe=""))
        if status != 200:
            raise AssertionError(f"/_switchyard/state answered {status}: {body}")
        return body

    def stop(self, timeout=15):
        """SIGTERM; returns (exit code, seconds)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise AssertionError(f"gateway {self.label} still running {timeout}s after SIGTERM") from exc
        finally:
            if self.log_file:
                self.log_file.close()
        return code, time.monotonic() - t0

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.log_file:
            self.log_file.close()

    def problems(self):
        """WARN/ERROR/panic lines of the log (JSON lines)."""
        bad = []
        try:
            for raw in self.log_path.read_text(errors="replace").splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    if raw.strip():
                        bad.append(raw[:200])
                    continue
                if line.get("level") in ("WARN", "ERROR") or "panic" in raw.lower():
                    if "MAX_CONNECTIONS does not fit" in line.get("message", ""):
                        continue  # the sandbox's open-file limit, not the test
                    bad.append(f"{line.get('level')} {line.get('target')}: {line.get('message')}")
        except OSError:
            pass
        return bad


# ---------------------------------------------------------------- helpers


class PageServer:
    """A tiny http.server on its own port that serves registered pages."""

    def __init__(self):
        self.pages = {}
        pages = self.pages

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                body = pages.get(self.path.split("?", 1)[0])
                if callable(body):
                    # A dynamic route (the test's token endpoint): text/plain.
                    data = str(body()).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    self.send_header("Cache-Control", "no-store")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if body is None:
                    self.send_response(404 if self.path != "/favicon.ico" else 204)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="page-server", daemon=True)
        self.thread.start()

    def add(self, path, html):
        self.pages[path] = html
        return self.origin + path

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Relay:
    """An asyncio TCP relay 127.0.0.1:port -> 127.0.0.1:target in its own
    thread. abort_all() resets every open connection (both sockets); new
    connections keep being accepted."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.pairs = set()
        self.accepted = 0
        self.port = None
        self.server = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="relay", daemon=True)
        self.thread.start()
        if not ready.wait(5) or self.port is None:
            raise AssertionError("relay did not start")

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        try:
            self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = self.server.sockets[0].getsockname()[1]
        finally:
            ready.set()
        self.loop.run_forever()

    @staticmethod
    def _reset(writer):
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            # Linger 0: close() sends RST, an abrupt cut.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _handle(self, reader, writer):
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            self._reset(writer)
            return
        pair = (writer, up_writer)
        self.pairs.add(pair)

        async def pipe(src, dst):
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass

        try:
            await asyncio.wait(
                [asyncio.ensure_future(pipe(reader, up_writer)), asyncio.ensure_future(pipe(up_reader, writer))],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            self.pairs.discard(pair)
            for w in pair:
                w.transport.abort()

    async def _abort_all(self):
        pairs = list(self.pairs)
        for pair in pairs:
            for w in pair:
                self._reset(w)
        return len(pairs)

    def abort_all(self):
        return asyncio.run_coroutine_threadsafe(self._abort_all(), self.loop).result(5)

    def close(self):
        async def shutdown():
            self.server.close()
            await self._abort_all()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


TEST_PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>switchyard client.js e2e</title></head>
<body>
<h1>client.js e2e</h1>
<div>status: <b id="status">-</b></div>
<script>
  window.seen = []; window.statuses = []; window.resets = []; window.pageErrors = [];
  window.errorFrames = []; window.tokenCalls = 0;
  window.addEventListener("error", function (e) { window.pageErrors.push(String(e.message)); });
</script>
<script src="%(script)s"></script>
<script>
(function () {
  var options = %(options)s;
  %(setup)s
  var sy = Switchyard.connect(options);
  sy.onError(function (e) { window.errorFrames.push(e); });
  window.sy = sy;
  sy.on("#", function (data, ev) {
    window.seen.push({ seq: ev.seq, topic: ev.topic, data: data, retain: !!ev.retain, epoch: sy.position().epoch });
  });
  sy.onStatus(function (s) {
    window.statuses.push({ status: s, at: Date.now(), epoch: sy.position().epoch });
    document.getElementById("status").textContent = s;
  });
  sy.onReset(function (state, position) {
    window.resets.push({ state: JSON.parse(JSON.stringify(state)), position: position, at: Date.now() });
  });
})();
</script>
</body>
</html>
"""


def test_page(server, name, gateway_base, connect_url, topics, token=None, setup=""):
    """A page that connects with client.js. `token`: a string token for the
    options; `setup`: JS run before connect() that may change `options`
    (e.g. a function token)."""
    options = {"url": connect_url}
    if topics is not None:
        options["topics"] = topics
    if token is not None:
        options["token"] = token
    html = TEST_PAGE % {
        "script": gateway_base + "/_switchyard/client.js",
        "options": json.dumps(options),
        "setup": setup,
    }
    return server.add(f"/{name}.html", html)


# A function token: fetched from the page server's /token-NAME route, which
# mints a fresh one per call (window.tokenCalls counts the calls).
FUNCTION_TOKEN_SETUP = """
  options.token = function () {
    window.tokenCalls += 1;
    return fetch("/%s").then(function (r) { return r.text(); });
  };
"""


class Minter:
    """The page server's token route: each call mints a token (`claims`,
    `ttl` seconds) and records when."""

    def __init__(self, secret, ttl, **claims):
        self.secret, self.ttl, self.claims = secret, ttl, claims
        self.calls = []

    def __call__(self):
        self.calls.append(time.monotonic())
        # `n` makes each token distinct even within one second (same exp).
        return mint_token(self.secret, ttl=self.ttl, n=len(self.calls), **self.claims)


class Browser:
    """A fresh persistent Chromium context (temp profile) with recorders for
    console messages and WebSocket frames."""

    def __init__(self, pw, name):
        self.name = name
        self.profile = tempfile.mkdtemp(prefix="switchyard-client-e2e-chromium-")
        self.ctx = pw.chromium.launch_persistent_context(
            self.profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        self.page = self.ctx.pages[0] if self.ctx.pages else self.ctx.new_page()
        self.console = []
        self.sockets = []  # {"url", "opened", "frames": [parsed or raw], "closed"}
        self.page.on("console", lambda m: self.console.append(f"{time.strftime('%H:%M:%S')} {m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"{time.strftime('%H:%M:%S')} pageerror: {e}"))
        self.page.on("websocket", self._on_ws)

    def _on_ws(self, ws):
        entry = {"url": ws.url, "opened": time.monotonic(), "frames": [], "sent": [], "closed": None}
        self.sockets.append(entry)

        def on_sent(payload):
            try:
                frame = json.loads(payload)
            except (TypeError, ValueError):
                frame = {"type": "?"}
            entry["sent"].append({"type": frame.get("type"), "token": frame.get("token"), "at": time.monotonic()})

        ws.on("framesent", on_sent)

        def on_frame(payload):
            try:
                frame = json.loads(payload)
            except (TypeError, ValueError):
                frame = {"type": "?", "raw": str(payload)[:80]}
            entry["frames"].append({k: frame.get(k) for k in ("type", "seq", "topic", "epoch", "resumed", "code")})

        ws.on("framereceived", on_frame)
        ws.on("close", lambda _w: entry.__setitem__("closed", time.monotonic()))

    def eval(self, expression, arg=None):
        return self.page.evaluate(expression, arg)

    def snapshot(self):
        """What the test page recorded, for failure messages."""
        try:
            return self.eval("""() => ({
                statuses: (window.statuses || []).map(s => s.status),
                seen: (window.seen || []).length,
                lastSeen: (window.seen || []).slice(-3).map(e => e.seq + ' ' + e.topic),
                resets: (window.resets || []).length,
                position: window.sy ? window.sy.position() : null,
                errors: window.pageErrors || [],
            })""")
        except Exception as exc:  # noqa: BLE001
            return f"(page not readable: {type(exc).__name__})"

    def wait_for(self, expression, arg=None, timeout=10, what="condition"):
        try:
            self.page.wait_for_function(expression, arg=arg, timeout=timeout * 1000, polling=50)
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; page: {self.snapshot()}; "
                f"console: {self.console[-4:]}"
            ) from exc

    def ws_summary(self):
        out = []
        for s in self.sockets:
            events = [f["seq"] for f in s["frames"] if f["type"] == "event"]
            hello = next((f for f in s["frames"] if f["type"] == "hello"), None)
            out.append({
                "url": s["url"].split("?")[1] if "?" in s["url"] else s["url"],
                "hello": hello and {"seq": hello["seq"], "resumed": hello["resumed"]},
                "events": f"{events[0]}..{events[-1]} ({len(events)})" if events else "none",
                "closed": s["closed"] is not None,
            })
        return out

    def save_logs(self):
        path = OUT / f"client-{self.name}-browser.log"
        lines = list(self.console)
        for s in self.sockets:
            lines.append(f"websocket {s['url']}: {len(s['frames'])} frames, closed={s['closed'] is not None}")
        path.write_text("\n".join(lines) + "\n")

    def close(self):
        with contextlib.suppress(Exception):
            self.save_logs()
        with contextlib.suppress(Exception):
            self.ctx.close()
        shutil.rmtree(self.profile, ignore_errors=True)


class Resources:
    """Everything a check starts, stopped in reverse order at its end."""

    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)
        return item

    def close(self):
        for item in reversed(self.items):
            try:
                if isinstance(item, Gateway):
                    item.kill()
                else:
                    item.close()
            except Exception as exc:  # noqa: BLE001
                log(f"cleanup of {type(item).__name__} failed: {exc}")
        self.items.clear()


def gateway_notes(*gateways):
    for gw in gateways:
        bad = gw.problems()
        if bad:
            notes.append(f"gateway {gw.label} log: {len(bad)} warning/error line(s), first: {bad[0]}")


# ---------------------------------------------------------------- checks


def check_client_events_arrive(pw):
    res = Resources()
    try:
        pages = res.add(PageServer())
        gw = res.add(Gateway("events-arrive", CORS_ORIGINS=pages.origin).start())
        url = test_page(pages, "events", gw.base, gw.base, ["t/#"])
        br = res.add(Browser(pw, "events-arrive"))
        br.page.goto(url, wait_until="load", timeout=15000)
        br.wait_for("() => window.sy && window.sy.status === 'open'", timeout=15, what="status open")
        token = uuid.uuid4().hex[:8]
        expected = []
        for i in range(1, 21):
            data = {"i": i, "token": token}
            ack = gw.publish(f"t/e/{i % 3}", data)
            expected.append({"seq": ack["seq"], "topic": f"t/e/{i % 3}", "data": data})
            if i == 10:
                gw.publish("u/not-subscribed", {"token": token})  # filtered out by topics
        br.wait_for("n => window.seen.length >= n", 20, timeout=10, what="20 events")
        time.sleep(0.3)  # anything extra (a duplicate, the u/ event) would show now
        seen = br.eval("() => window.seen.map(e => ({seq: e.seq, topic: e.topic, data: e.data}))")
        assert seen == expected, f"seen {len(seen)} events, expected {len(expected)}; first difference: " + next(
            (f"#{k}: {a} != {b}" for k, (a, b) in enumerate(zip(seen, expected)) if a != b), "(length)")
        statuses = br.eval("() => window.statuses.map(s => s.status)")
        assert statuses == ["connecting", "open"], f"statuses {statuses}"
        assert br.eval("() => window.sy.status") == "open"
        assert not br.eval("() => window.pageErrors"), br.eval("() => window.pageErrors")
        assert not br.eval("() => window.resets.length"), "onReset fired on the first connect"
        return f"20/20 in order (seqs {seen[0]['seq']}..{seen[-1]['seq']}, u/ filtered out), statuses {statuses}"
    finally:
        res.close()


def check_resumes_exactly_once(pw):
    total, interval = 300, 0.010
    cut_at = [50, 125, 200]  # cut when the page has seen this many events
    res = Resources()
    try:
        pages = res.add(PageServer())
        gw = res.add(Gateway("resume", CORS_ORIGINS=pages.origin).start())
        relay = res.add(Relay(gw.port))
        via = f"http://127.0.0.1:{relay.port}"
        url = test_page(pages, "resume", gw.base, via, ["t/#"])
        br = res.add(Browser(pw, "resume"))
        br.page.goto(url, wait_until="load", timeout=15000)
        br.wait_for("() => window.sy && window.sy.status === 'open'", timeout=15, what="status open")
        assert all(f"127.0.0.1:{relay.port}" in s["url"] for s in br.sockets), [s["url"] for s in br.sockets]

        acks, errors = [], []
        done = threading.Event()

        def publisher():
            start = time.monotonic()
            try:
                for i in range(1, total + 1):
                    try:
                        acks.append(gw.publish(f"t/stream/{i % 5}", {"i": i})["seq"])
                    except Exception as exc:  # noqa: BLE001
                        errors.append(f"{i}: {exc}")
                    pause = start + i * interval - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
            finally:
                done.set()

        thread = threading.Thread(target=publisher, name="publisher", daemon=True)
        t0 = time.monotonic()
        thread.start()
        cuts = []
        for threshold in cut_at:
            opens_before = br.eval("() => window.statuses.filter(s => s.status === 'open').length")
            br.wait_for("n => window.seen.length >= n", threshold, timeout=15, what=f"{threshold} events before a cut")
            seen_now = br.eval("() => window.seen.length")
            aborted = relay.abort_all()
            cuts.append(f"{aborted} conn(s) at {seen_now} seen, {time.monotonic() - t0:.2f}s"
                        + ("" if not done.is_set() else " (publisher already done)"))
            log(f"cut {len(cuts)}: {cuts[-1]}")
            # Wait for the client to be back before the next cut.
            br.wait_for("n => window.statuses.filter(s => s.status === 'open').length > n", opens_before,
                        timeout=15, what=f"reopen after cut {len(cuts)}")
        if not done.wait(30):
            raise AssertionError("publisher did not finish within 30 s")
        thread.join(1)
        published_in = time.monotonic() - t0
        assert not errors, f"publish errors: {errors[:3]}"
        assert acks == list(range(1, total + 1)), f"acked seqs are not 1..{total}: {acks[:5]}...{acks[-5:]}"
        br.wait_for("n => window.seen.length >= n", total, timeout=20, what=f"all {total} events")
        time.sleep(0.5)  # a duplicate would arrive now
        seen = br.eval("() => window.seen.map(e => [e.seq, e.data.i])")
        seqs = [s for s, _ in seen]
        dupes = sorted({s for s in seqs if seqs.count(s) > 1})
        missing = sorted(set(acks) - set(seqs))
        assert seqs == acks, (
            f"page saw {len(seqs)} events; duplicates {dupes[:10]}, missing {missing[:10]}, "
            f"out of order at {next((k for k in range(1, len(seqs)) if seqs[k] <= seqs[k - 1]), None)}"
        )
        assert all(s == i for s, i in seen), "event data does not match its seq"
        resets = br.eval("() => window.resets")
        assert not resets, f"onReset fired {len(resets)} time(s): {resets[:1]}"
        statuses = br.eval("() => window.statuses.map(s => s.status)")
        opens = statuses.count("open")
        assert opens >= 1 + len(cut_at), f"expected a reopen after each of {len(cut_at)} cuts; statuses {statuses}"
        assert statuses[-1] == "open", statuses
        assert all(a == "connecting" and b == "open" for a, b in zip(statuses[::2], statuses[1::2])), statuses
        # On the wire: every event frame the browser received, over all sockets,
        # exactly once (the gateway resumed from the right point; the client's
        # own seq <= seen guard had nothing to drop).
        wire = [f["seq"] for s in br.sockets for f in s["frames"] if f["type"] == "event"]
        wire_dupes = sorted({s for s in wire if wire.count(s) > 1})
        hellos = [f for s in br.sockets for f in s["frames"] if f["type"] == "hello"]
        assert not wire_dupes, f"event frames received twice on the wire: {wire_dupes[:10]}; sockets {br.ws_summary()}"
        assert sorted(wire) == acks, f"wire events {len(wire)} != {total}"
        assert all(h["resumed"] for h in hellos[1:]), f"a reconnect hello was not resumed: {hellos}"
        notes.append(f"resume: {len(br.sockets)} WebSocket connections, relay accepted {relay.accepted} TCP "
                     f"connections; hellos {[(h['seq'], h['resumed']) for h in hellos]}")
        return (f"{total}/{total} exactly once in order, {len(cut_at)} cuts [{'; '.join(cuts)}], "
                f"{opens} opens, {len(br.sockets)} sockets, no reset; published in {published_in:.1f}s")
    finally:
        res.close()


def check_on_reset_after_restart(pw):
    res = Resources()
    try:
        pages = res.add(PageServer())
        first = res.add(Gateway("restart-a", CORS_ORIGINS=pages.origin).start())
        url = test_page(pages, "restart", first.base, first.base, ["t/#"])
        first.publish("t/state", {"gen": "A", "n": 1}, retain=True)
        first.publish("t/only-on-a", {"gen": "A"}, retain=True)
        first.publish("t/plain", {"gen": "A"})
        br = res.add(Browser(pw, "restart"))
        br.page.goto(url, wait_until="load", timeout=15000)
        br.wait_for("() => window.sy && window.sy.status === 'open'", timeout=15, what="status open")
        state_a = br.eval("() => window.sy.state")
        want_a = first.state("t/#")
        assert state_a == want_a["state"], f"initial sy.state {state_a} != gateway A's {want_a['state']}"
        ack = first.publish("t/plain", {"gen": "A", "live": True})
        br.wait_for("s => window.seen.some(e => e.seq === s)", ack["seq"], timeout=5, what="a live event from A")
        assert not br.eval("() => window.resets.length"), "onReset fired before the restart"

        code, took = first.stop()
        assert code == 0, f"gateway A exited with {code} after SIGTERM"
        log(f"gateway A stopped (exit 0 in {took:.2f}s); starting B on the same port {first.port}")
        second = res.add(Gateway("restart-b", port=first.port, CORS_ORIGINS=pages.origin).start())
        b1 = second.publish("t/state", {"gen": "B", "n": 2}, retain=True)
        second.publish("t/only-on-b", {"gen": "B"}, retain=True)
        epoch_b = b1["epoch"]
        assert epoch_b != ack["epoch"], "gateway B has gateway A's epoch"

        br.wait_for("e => window.resets.length > 0 && window.sy.position().epoch === e && window.sy.status === 'open'",
                    epoch_b, timeout=20, what="onReset and the new epoch")
        # New events arrive on the new gateway.
        token = uuid.uuid4().hex[:8]
        acks_b = [second.publish("t/after", {"gen": "B", "k": k, "token": token})["seq"] for k in range(3)]
        br.wait_for("t => window.seen.filter(e => e.data && e.data.token === t).length >= 3", token,
                    timeout=10, what="3 events from gateway B")
        time.sleep(0.3)
        after = br.eval("t => window.seen.filter(e => e.data && e.data.token === t).map(e => [e.seq, e.epoch])", token)
        assert after == [[s, epoch_b] for s in acks_b], f"events after the restart: {after}, acked {acks_b}"
        want_b = second.state("t/#")
        state_b = br.eval("() => window.sy.state")
        assert state_b == want_b["state"], f"sy.state {state_b} != gateway B's {want_b['state']}"
        assert "t/only-on-a" not in state_b, "gateway A's retained topic survived the reset"
        resets = br.eval("() => window.resets")
        assert len(resets) == 1, f"onReset fired {len(resets)} times: {resets}"
        statuses = br.eval("() => window.statuses.map(s => s.status)")
        position = br.eval("() => window.sy.position()")
        gateway_notes(second)
        return (f"A exit 0 in {took:.2f}s; onReset x1 with epoch {resets[0]['position']['epoch']} "
                f"state {sorted(resets[0]['state'])}; sy.state == B's ({sorted(state_b)}); "
                f"3 new events seqs {acks_b}; position {position}; statuses {statuses}")
    finally:
        res.close()


def check_falls_back_to_sse(pw):
    res = Resources()
    try:
        pages = res.add(PageServer())
        gw = res.add(Gateway("sse", CORS_ORIGINS=pages.origin, WEBSOCKET_ENABLED="false").start())
        status, body = http_json(gw.base + "/_switchyard/config")
        assert status == 200 and body["websocket_enabled"] is False, body
        gw.publish("t/state", {"kept": True}, retain=True)
        url = test_page(pages, "sse", gw.base, gw.base, ["t/#"])
        br = res.add(Browser(pw, "sse"))
        br.page.goto(url, wait_until="load", timeout=15000)
        br.wait_for("() => window.statuses.some(s => s.status === 'fallback-sse')", timeout=15,
                    what="status fallback-sse")
        state = br.eval("() => window.sy.state")
        assert state == {"t/state": {"seq": 1, "data": {"kept": True}}}, f"sy.state over SSE: {state}"
        token = uuid.uuid4().hex[:8]
        acks = [gw.publish(f"t/sse/{i}", {"i": i, "token": token})["seq"] for i in range(10)]
        br.wait_for("t => window.seen.filter(e => e.data && e.data.token === t).length >= 10", token,
                    timeout=10, what="10 events over SSE")
        time.sleep(0.3)
        seen = br.eval("t => window.seen.filter(e => e.data && e.data.token === t).map(e => e.seq)", token)
        assert seen == acks, f"SSE events {seen} != acked {acks}"
        statuses = br.eval("() => window.statuses.map(s => s.status)")
        assert statuses == ["connecting", "fallback-sse"], f"statuses {statuses}"
        assert not br.sockets, f"the client tried a WebSocket although it is disabled: {[s['url'] for s in br.sockets]}"
        return f"statuses {statuses}, retained state over SSE, 10/10 events in order (seqs {acks[0]}..{acks[-1]}), no WebSocket tried"
    finally:
        res.close()


def check_console_screenshot(pw):
    res = Resources()
    try:
        gw = res.add(Gateway("console").start())
        gw.publish("positions/NIFTY24DEC24000CE", {"qty": 50, "ltp": 101.5}, retain=True)
        gw.publish("positions/BANKNIFTY24DEC51000PE", {"qty": 15, "ltp": 287.1}, retain=True)
        gw.publish("positions/RELIANCE", {"qty": 10, "ltp": 1287.45}, retain=True)
        gw.publish("trades/1", {"side": "BUY", "symbol": "RELIANCE", "qty": 10})
        gw.publish("trades/2", {"side": "SELL", "symbol": "NIFTY24DEC24000CE", "qty": 25})
        br = res.add(Browser(pw, "console"))
        page = br.page
        page.goto(gw.base + "/", wait_until="load", timeout=15000)
        br.wait_for("() => document.querySelector('#status').textContent === 'open'", timeout=15,
                    what="#status 'open'")
        br.wait_for("() => document.querySelectorAll('#state tr').length === 3", timeout=5,
                    what="3 retained rows in #state")
        state_rows = page.eval_on_selector_all("#state tr", "rows => rows.map(r => r.children[0].textContent)")
        assert state_rows == sorted(state_rows) and len(state_rows) == 3, state_rows
        # The log starts with what was published before the page opened
        # (newest first), and retained data is pretty-printed.
        br.wait_for("() => document.querySelectorAll('#log div.history').length === 5", timeout=5,
                    what="5 history lines in #log")
        history = page.eval_on_selector_all("#log div.history", "ds => ds.map(d => d.children[1].textContent)")
        assert history == ["trades/2", "trades/1", "positions/RELIANCE", "positions/BANKNIFTY24DEC51000PE",
                           "positions/NIFTY24DEC24000CE"], f"history lines {history}"
        cell = page.text_content("#state tr:first-child td.data")
        assert cell.startswith("{\n  "), f"retained data not indented: {cell!r}"
        page.click("#log div.history >> nth=0")
        expanded = page.text_content("#log div.history >> nth=0")
        assert '"side": "SELL"' in expanded, f"a clicked line is not expanded: {expanded!r}"
        br.wait_for("() => document.querySelector('#where').textContent.includes('No dashboard is configured')",
                    timeout=5, what="the footer saying no dashboard is configured")

        token = uuid.uuid4().hex[:8]
        acks = []
        for i in range(1, 6):
            acks.append(gw.publish(f"ticks/{['NIFTY', 'BANKNIFTY', 'RELIANCE'][i % 3]}",
                                   {"i": i, "ltp": 100 + i * 1.25, "token": token})["seq"])
            time.sleep(0.05)
        br.wait_for("t => Array.from(document.querySelectorAll('#log div')).filter(d => d.textContent.includes(t)).length >= 5",
                    token, timeout=10, what="the 5 events in #log")
        lines = page.eval_on_selector_all("#log div", "ds => ds.map(d => d.textContent)")
        shown = [int(re.match(r"#(\d+)", line).group(1)) for line in lines if token in line]
        assert shown == sorted(acks, reverse=True), f"#log shows {shown}, acked {acks} (newest first expected)"
        # The header's seq and the retained state table are live too.
        br.wait_for("s => document.querySelector('#seq').textContent === String(s)", acks[-1], timeout=5,
                    what="#seq showing the last seq")
        # The header's client count comes from /health every 2 s (its first
        # fetch runs before the console's own WebSocket is up).
        br.wait_for("() => document.querySelector('#clients').textContent === '1'", timeout=5,
                    what="#clients showing the console's own connection")
        time.sleep(1.1)  # one tick of the events/s refresher
        path = OUT / "console.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000, f"screenshot only {path.stat().st_size} bytes"

        # The console's own publish form.
        form_token = uuid.uuid4().hex[:8]
        page.fill("#topic", f"console/e2e-{form_token}")
        page.fill("#data", json.dumps({"from": "form", "token": form_token}))
        page.click("#publish button[type=submit]")
        br.wait_for("() => /^202 published as seq \\d+$/.test(document.querySelector('#result').textContent)",
                    timeout=5, what="#result '202 published as seq N'")
        result = page.text_content("#result")
        form_seq = int(result.rsplit(" ", 1)[1])
        br.wait_for("t => Array.from(document.querySelectorAll('#log div')).some(d => d.textContent.includes(t))",
                    form_token, timeout=5, what="the form's event in #log")
        top = page.text_content("#log div:first-child")
        assert top.startswith(f"#{form_seq}console/e2e-{form_token}"), f"top #log line {top!r}"
        state = gw.state("console/#")
        assert state["seq"] == form_seq, f"gateway seq {state['seq']} != form's {form_seq}"
        page.screenshot(path=str(OUT / "console-after-form.png"), full_page=True)
        header = {k: page.text_content(f"#{k}") for k in ("status", "clients", "rate", "seq", "upstream", "count")}
        gateway_notes(gw)
        return (f"{path.relative_to(ROOT)} ({path.stat().st_size} bytes); header {header}; "
                f"#log newest-first {shown}; form -> '{result}' and shown in #log")
    finally:
        res.close()


# ---------------------------------------------------------------- access tokens (AUTH_SECRET)


def ws_requests_in_log(gw):
    """The gateway's debug `request` lines for its WebSocket path (needs
    RUST_LOG=switchyard=debug): one per connection attempt."""
    count = 0
    for raw in gw.log_path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("message") == "request" and line.get("path") == "/ws":
            count += 1
    return count


def check_token_reads_only_its_scope(pw):
    res = Resources()
    try:
        pages = res.add(PageServer())
        gw = res.add(Gateway("token-scope", CORS_ORIGINS=pages.origin, AUTH_SECRET=SECRET).start())
        status, config = http_json(gw.base + "/_switchyard/config")
        assert status == 200 and config.get("auth_required") is True, f"config {status} {config}"
        assert SECRET not in json.dumps(config), "AUTH_SECRET in /_switchyard/config"
        status, body = http_json(gw.base + "/_switchyard/state")
        assert status == 401, f"anonymous /_switchyard/state answered {status}: {body}"
        # Loopback without PUBLISH_TOKEN still publishes.
        gw.publish("pos/kept", {"qty": 50}, retain=True)
        gw.publish("secret/kept", {"balance": 1e6}, retain=True)
        token = mint_token(SECRET, ttl=600, sub="e2e-user", subscribe=["pos/#"])
        # No topics: the gateway gives the token's own patterns.
        url = test_page(pages, "scoped", gw.base, gw.base, None, token=token)
        br = res.add(Browser(pw, "token-scope"))
        br.page.goto(url, wait_until="load", timeout=15000)
        br.wait_for("() => window.sy && window.sy.status === 'open'", timeout=15, what="status open")
        state = br.eval("() => window.sy.state")
        assert sorted(state) == ["pos/kept"], f"hello state {state} (only pos/kept is covered)"
        mark = uuid.uuid4().hex[:8]
        acks = []
        for i in range(5):
            acks.append(gw.publish(f"pos/live/{i}", {"i": i, "mark": mark})["seq"])
            gw.publish(f"secret/live/{i}", {"i": i, "mark": mark})
        br.wait_for("m => window.seen.filter(e => e.data && e.data.mark === m).length >= 5", mark, timeout=10,
                    what="5 pos/ events")
        time.sleep(0.5)  # an out-of-scope event would show now
        seen = br.eval("m => window.seen.filter(e => e.data && e.data.mark === m).map(e => [e.seq, e.topic])", mark)
        assert [s for s, _ in seen] == acks and all(t.startswith("pos/") for _, t in seen), \
            f"seen {seen}, acked pos/ seqs {acks}"
        assert len(br.sockets) == 1, f"{len(br.sockets)} WebSocket connections"
        sock = br.sockets[0]
        assert "token" not in sock["url"], f"token in the WebSocket URL {sock['url']}"
        assert "topics" not in sock["url"], f"topics sent although none were asked: {sock['url']}"
        first = sock["sent"][0] if sock["sent"] else None
        assert first and first["type"] == "auth" and first["token"] == token, f"first frame sent: {first}"
        statuses = br.eval("() => window.statuses.map(s => s.status)")
        assert statuses == ["connecting", "open"], f"statuses {statuses}"
        gateway_notes(gw)
        return (f"config auth_required true; anonymous state 401; hello state {sorted(state)}; "
                f"5/5 pos/ events, 0 of 5 secret/; first frame sent 'auth', URL {sock['url'].split('/', 3)[-1]!r}")
    finally:
        res.close()


def check_token_forbidden_topic(pw):
    res = Resources()
    try:
        pages = res.add(PageServer())
        gw = res.add(Gateway("token-forbidden", CORS_ORIGINS=pages.origin, AUTH_SECRET=SECRET).start())
        token = mint_token(SECRET, ttl=600, subscribe=["pos/#"])
        url = test_page(pages, "forbidden", gw.base, gw.base, ["secret/#"], token=token)
        br = res.add(Browser(pw, "token-forbidden"))
        br.page.goto(url, wait_until="load", timeout=15000)
        br.wait_for("() => window.sy && window.sy.status === 'forbidden'", timeout=15, what="status forbidden")
        time.sleep(3)  # a reconnect would happen within this
        statuses = br.eval("() => window.statuses.map(s => s.status)")
        assert statuses[-1] == "forbidden" and "open" not in statuses, f"statuses {statuses}"
        assert len(br.sockets) == 1, f"{len(br.sockets)} WebSocket connections (expected 1, no retry)"
        assert not br.eval("() => window.seen.length"), "events seen on a forbidden subscription"
        return f"statuses {statuses}; 1 WebSocket in 3 s after it"
    finally:
        res.close()


def check_function_token_refreshed(pw):
    """A function token of 8 s, connected for 15 s, keeps receiving; a
    string token of 8 s beside it (the control) is cut at its expiry."""
    ttl, stay = 8, 15
    res = Resources()
    try:
        pages = res.add(PageServer())
        gw = res.add(Gateway("token-refresh", CORS_ORIGINS=pages.origin, AUTH_SECRET=SECRET).start())
        minter = Minter(SECRET, ttl, subscribe=["t/#"], sub="refresher")
        pages.add("/token-refresh", minter)
        refreshing = test_page(pages, "refresh", gw.base, gw.base, ["t/#"],
                               setup=FUNCTION_TOKEN_SETUP % "token-refresh")
        fixed = test_page(pages, "fixed", gw.base, gw.base, ["t/#"],
                          token=mint_token(SECRET, ttl=ttl, subscribe=["t/#"], sub="control"))
        control = res.add(Browser(pw, "token-fixed"))
        br = res.add(Browser(pw, "token-refresh"))
        control.page.goto(fixed, wait_until="load", timeout=15000)
        br.page.goto(refreshing, wait_until="load", timeout=15000)
        t0 = time.monotonic()
        br.wait_for("() => window.sy && window.sy.status === 'open'", timeout=10, what="status open")
        control.wait_for("() => window.sy && window.sy.status === 'open'", timeout=10, what="control open")
        acks = []
        while time.monotonic() - t0 < stay:
            acks.append(gw.publish("t/tick", {"n": len(acks)})["seq"])
            time.sleep(0.5)
        br.wait_for("s => window.seen.some(e => e.seq === s)", acks[-1], timeout=5, what="the last tick")
        seen = br.eval("() => window.seen.map(e => e.seq)")
        assert seen == acks, f"refreshing page saw {len(seen)} of {len(acks)} ticks; missing {sorted(set(acks) - set(seen))[:5]}"
        assert br.eval("() => window.sy.status") == "open"
        assert len(br.sockets) == 1 and br.sockets[0]["closed"] is None, \
            f"refreshing page: {len(br.sockets)} sockets, closed={[s['closed'] for s in br.sockets]}"
        auths = [f for f in br.sockets[0]["sent"] if f["type"] == "auth"]
        assert len(auths) >= 2 and len({a["token"] for a in auths}) == len(auths), \
            f"auth frames sent: {len(auths)} ({len({a['token'] for a in auths})} distinct)"
        # The first refresh was minted before the first token's exp (the
        # route's own clock: Playwright's events arrive late in sync mode).
        gap = minter.calls[1] - minter.calls[0]
        assert gap < ttl, f"first refresh {gap:.1f}s after the first token"
        errors = br.eval("() => window.errorFrames")
        assert not errors, f"error frames on the refreshing connection: {errors}"
        calls = br.eval("() => window.tokenCalls")
        assert calls == len(minter.calls) >= 2, f"token function called {calls}x, route {len(minter.calls)}x"
        # The control: told, then closed (4001) at exp + 5 s; unauthorized, no reconnect.
        control.wait_for("() => window.sy.status === 'unauthorized'", timeout=8, what="control unauthorized")
        control_statuses = control.eval("() => window.statuses.map(s => s.status)")
        control_errors = control.eval("() => window.errorFrames.map(e => e.code)")
        assert "token_expired" in control_errors, f"control's error frames {control_errors}"
        assert len(control.sockets) == 1, f"control made {len(control.sockets)} connections"
        control_seen = control.eval("() => window.seen.length")
        assert control_seen < len(acks), "the control (no refresh) received every tick"
        gateway_notes(gw)
        gaps = [round(b - a, 1) for a, b in zip(minter.calls, minter.calls[1:])]
        return (f"{len(seen)}/{len(acks)} ticks over {stay}s on 1 WebSocket, {len(auths)} auth frames, "
                f"token calls {calls} (gaps {gaps} s); control: {control_seen} ticks, error codes {control_errors}, "
                f"statuses {control_statuses}, 1 connection")
    finally:
        res.close()


def check_bad_token_no_reconnect_storm(pw):
    res = Resources()
    try:
        pages = res.add(PageServer())
        gw = res.add(Gateway("token-bad", CORS_ORIGINS=pages.origin, AUTH_SECRET=SECRET,
                             RUST_LOG="switchyard=debug").start())
        bad = mint_token(WRONG_SECRET, ttl=600, subscribe=["t/#"])
        minter = Minter(WRONG_SECRET, 600, subscribe=["t/#"])
        pages.add("/token-bad", minter)
        cases = [
            ("string", test_page(pages, "bad-string", gw.base, gw.base, ["t/#"], token=bad), 1),
            ("function", test_page(pages, "bad-function", gw.base, gw.base, ["t/#"],
                                   setup=FUNCTION_TOKEN_SETUP % "token-bad"), 2),
            ("none", test_page(pages, "no-token", gw.base, gw.base, ["t/#"]), 0),
        ]
        br = res.add(Browser(pw, "token-bad"))
        out = []
        for name, url, want_sockets in cases:
            before = len(br.sockets)
            log_before = ws_requests_in_log(gw)
            br.page.goto(url, wait_until="load", timeout=15000)
            br.wait_for("() => window.sy && window.sy.status === 'unauthorized'", timeout=15,
                        what=f"{name}: status unauthorized")
            time.sleep(4)  # a retry loop would show within this
            statuses = br.eval("() => window.statuses.map(s => s.status)")
            sockets = len(br.sockets) - before
            logged = ws_requests_in_log(gw) - log_before
            assert statuses[-1] == "unauthorized" and "open" not in statuses, f"{name}: statuses {statuses}"
            assert sockets == want_sockets, f"{name}: {sockets} WebSocket connections, expected {want_sockets}"
            assert logged == want_sockets, f"{name}: gateway logged {logged} /ws requests, expected {want_sockets}"
            out.append(f"{name}: {sockets} connection(s), statuses {statuses}")
        assert len(minter.calls) == 2, f"bad token function called {len(minter.calls)}x (expected 2)"
        text = gw.log_path.read_text(errors="replace")
        assert bad.split(".")[2] not in text, "a token's signature appears in the gateway log"
        return "; ".join(out) + "; gateway log agrees"
    finally:
        res.close()


def check_sse_with_token(pw):
    """WebSocket off: SSE with ?token=, a function token of 8 s refreshed by
    reconnecting the stream, resuming without a loss or a duplicate."""
    ttl, stay = 8, 12
    res = Resources()
    try:
        pages = res.add(PageServer())
        gw = res.add(Gateway("token-sse", CORS_ORIGINS=pages.origin, AUTH_SECRET=SECRET, WEBSOCKET_ENABLED="false",
                             RUST_LOG="switchyard=debug").start())
        minter = Minter(SECRET, ttl, subscribe=["t/#"])
        pages.add("/token-sse", minter)
        gw.publish("t/state", {"kept": True}, retain=True)
        gw.publish("u/hidden", {"kept": True}, retain=True)
        url = test_page(pages, "sse-token", gw.base, gw.base, None, setup=FUNCTION_TOKEN_SETUP % "token-sse")
        br = res.add(Browser(pw, "token-sse"))
        streams = []
        br.page.on("request", lambda r: streams.append(r.url) if "/_switchyard/events" in r.url else None)
        br.page.goto(url, wait_until="load", timeout=15000)
        t0 = time.monotonic()
        br.wait_for("() => window.sy && window.sy.status === 'fallback-sse'", timeout=15, what="status fallback-sse")
        state = br.eval("() => window.sy.state")
        assert sorted(state) == ["t/state"], f"sy.state over SSE {state}"
        acks = []
        while time.monotonic() - t0 < stay:
            acks.append(gw.publish("t/tick", {"n": len(acks)})["seq"])
            gw.publish("u/tick", {"n": len(acks)})
            time.sleep(0.5)
        br.wait_for("s => window.seen.some(e => e.seq === s)", acks[-1], timeout=5, what="the last tick")
        time.sleep(0.3)
        seen = br.eval("() => window.seen.map(e => e.seq)")
        assert seen == acks, f"SSE page saw {seen[:5]}... ({len(seen)}) != acked {len(acks)}"
        tokens = [urllib.parse.parse_qs(urllib.parse.urlsplit(u).query).get("token", [None])[0] for u in streams]
        assert len(streams) >= 2 and all(tokens) and len(set(tokens)) == len(tokens), \
            f"{len(streams)} /events requests, tokens present {[bool(t) for t in tokens]}, distinct {len(set(tokens))}"
        resumed = [u for u in streams[1:] if "since=" in u]
        assert len(resumed) == len(streams) - 1, f"a reconnect without a resume point: {streams}"
        statuses = br.eval("() => window.statuses.map(s => s.status)")
        assert statuses == ["connecting", "fallback-sse"], f"statuses {statuses}"
        assert not br.eval("() => window.resets.length"), "onReset fired"
        assert not br.sockets, "a WebSocket was tried although it is disabled"
        text = gw.log_path.read_text(errors="replace")
        leaked = [t for t in tokens if t in text]
        assert not leaked, "a ?token= value appears in the gateway's debug log"
        assert "token=***" in text, "no redacted token=*** in the debug request log"
        gateway_notes(gw)
        return (f"{len(seen)}/{len(acks)} ticks in order, state {sorted(state)}, {len(streams)} streams each with its "
                f"own ?token= (resumed with since=), token calls {len(minter.calls)}, debug log shows token=***")
    finally:
        res.close()


def check_console_asks_for_token(pw):
    res = Resources()
    try:
        gw = res.add(Gateway("console-token", AUTH_SECRET=SECRET).start())
        gw.publish("positions/NIFTY", {"qty": 50}, retain=True)
        gw.publish("positions/RELIANCE", {"qty": 10}, retain=True)
        admin = mint_token(SECRET, ttl=600, admin=True, sub="ops")
        br = res.add(Browser(pw, "console-token"))
        page = br.page
        answer = page.goto(gw.base + "/", wait_until="load", timeout=15000)
        assert answer.status == 401, f"console page answered {answer.status}"
        br.wait_for("() => !document.querySelector('#auth').hidden", timeout=10, what="the token form")
        assert page.text_content("#status") == "unauthorized", page.text_content("#status")
        assert not br.sockets, "the console connected without a token"
        # A bad token: refused, asked again.
        page.fill("#access-token", mint_token(WRONG_SECRET, ttl=600, admin=True))
        page.click("#login button[type=submit]")
        br.wait_for("() => /^Unauthorized/.test(document.querySelector('#auth-message').textContent) "
                    "&& !document.querySelector('#auth').hidden", timeout=10, what="'Unauthorized' message")
        refused_message = page.text_content("#auth-message")
        page.screenshot(path=str(OUT / "console-token-refused.png"), full_page=True)
        # A good one: live.
        page.fill("#access-token", admin)
        page.click("#login button[type=submit]")
        br.wait_for("() => document.querySelector('#status').textContent === 'open'", timeout=10, what="#status open")
        br.wait_for("() => document.querySelectorAll('#state tr').length === 2", timeout=5, what="2 retained rows")
        assert page.eval_on_selector("#auth", "e => e.hidden"), "the token form is still shown"
        mark = uuid.uuid4().hex[:8]
        gw.publish("trades/1", {"mark": mark})
        br.wait_for("m => document.querySelector('#log').textContent.includes(m)", mark, timeout=5,
                    what="a live event in #log")
        page.screenshot(path=str(OUT / "console-token.png"), full_page=True)
        kept = page.evaluate("() => sessionStorage.getItem('switchyard.console.token')")
        assert kept == admin, "the token is not kept in sessionStorage"
        # A reload uses the kept token without asking.
        page.reload(wait_until="load", timeout=15000)
        br.wait_for("() => document.querySelector('#status').textContent === 'open'", timeout=10,
                    what="#status open after a reload")
        # A fresh tab with #token= in the URL: connects, and the fragment is gone.
        other = res.add(Browser(pw, "console-fragment"))
        other.page.goto(gw.base + "/#token=" + admin, wait_until="load", timeout=15000)
        other.wait_for("() => document.querySelector('#status').textContent === 'open'", timeout=10,
                       what="#status open from #token=")
        fragment = other.eval("() => location.hash")
        assert fragment == "", f"the token stayed in the URL: {fragment!r}"
        gateway_notes(gw)
        return (f"page 401, form shown, bad token -> {refused_message[:40]!r}..., admin token -> open with 2 rows and "
                f"live #log; kept across a reload; #token= works and is removed from the URL")
    finally:
        res.close()


def check_polling_fallback_latency(pw):
    """Opt-in (not in the default run: it fails against client.js as of
    this writing). WebSocket disabled and SSE broken (every
    /_switchyard/events request aborted, as by a proxy that refuses
    streams): the client lands on long-polling, and from then on each event
    should arrive about as soon as it is published, the long poll answering
    at once."""
    res = Resources()
    try:
        pages = res.add(PageServer())
        gw = res.add(Gateway("poll", CORS_ORIGINS=pages.origin, WEBSOCKET_ENABLED="false").start())
        url = test_page(pages, "poll", gw.base, gw.base, ["t/#"])
        br = res.add(Browser(pw, "poll"))
        requests = []
        t0 = time.monotonic()
        br.page.on("request", lambda r: requests.append(
            (round(time.monotonic() - t0, 2), r.url.split("/_switchyard/", 1)[-1].split("?", 1)[0]))
            if "/_switchyard/" in r.url else None)
        br.page.route("**/_switchyard/events*", lambda route: route.abort())
        br.page.goto(url, wait_until="load", timeout=15000)
        br.wait_for("() => window.statuses.some(s => s.status === 'fallback-poll')", timeout=30,
                    what="status fallback-poll")
        on_poll_at = time.monotonic() - t0
        time.sleep(1.0)  # let the first long poll be waiting
        latencies, seqs = [], []
        for i in range(5):
            ack = gw.publish("t/poll", {"i": i})
            p0 = time.monotonic()
            br.wait_for("s => window.seen.some(e => e.seq === s)", ack["seq"], timeout=30,
                        what=f"event {ack['seq']} over polling")
            latencies.append(round(time.monotonic() - p0, 2))
            seqs.append(ack["seq"])
            time.sleep(0.5)
        seen = br.eval("() => window.seen.map(e => e.seq)")
        assert seen == seqs, f"events over polling {seen} != acked {seqs}"
        after = [name for at, name in requests if at > on_poll_at]
        sse_after = after.count("events")
        polls_after = after.count("state")
        detail = (f"latencies {latencies} s; after reaching fallback-poll at {on_poll_at:.1f}s the page made "
                  f"{polls_after} /state polls and {sse_after} (failing) /events attempts")
        assert max(latencies) < 2.0 and sse_after <= 1, "polling is not sticky: " + detail
        return detail
    finally:
        res.close()


# ---------------------------------------------------------------- main


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("client-*.log"):
        old.unlink()
    if not GATEWAY_BIN.exists():
        print(f"missing {GATEWAY_BIN}: run tests/e2e/run.sh", file=sys.stderr)
        return 2

    # SIGTERM (e.g. run.sh's timeout) unwinds through the finally blocks,
    # so no gateway or browser is left behind.
    def on_term(_signum, _frame):
        raise Interrupted()

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    checks = [
        ("client_events_arrive", check_client_events_arrive),
        ("client_resumes_exactly_once_after_a_cut", check_resumes_exactly_once),
        ("client_on_reset_after_gateway_restart", check_on_reset_after_restart),
        ("client_falls_back_to_sse", check_falls_back_to_sse),
        ("console_screenshot", check_console_screenshot),
        ("token_reads_only_its_scope", check_token_reads_only_its_scope),
        ("token_forbidden_topic_is_final", check_token_forbidden_topic),
        ("token_function_refreshed_before_exp", check_function_token_refreshed),
        ("token_bad_no_reconnect_storm", check_bad_token_no_reconnect_storm),
        ("token_sse_fallback", check_sse_with_token),
        ("console_asks_for_token", check_console_asks_for_token),
        ("client_polling_fallback_latency", check_polling_fallback_latency),
    ]
    only = set(sys.argv[1:])
    if only:
        unknown = only - {name for name, _ in checks}
        if unknown:
            print(f"unknown check(s): {sorted(unknown)}", file=sys.stderr)
            return 2
    try:
        with sync_playwright() as pw:
            for name, fn in checks:
                if only and name not in only:
                    continue
                run_test(name, lambda fn=fn: fn(pw))
    except Interrupted:
        pass
    except Exception as exc:  # noqa: BLE001
        record("harness", False, f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    for n in notes:
        log(f"note: {n}")
    log(f"total {time.monotonic() - started:.1f}s")

    return report("client_e2e.py")


if __name__ == "__main__":
    sys.exit(main())

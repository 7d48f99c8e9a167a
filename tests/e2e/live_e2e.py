#!/usr/bin/env python3
"""End-to-end test of switchyard.streamlit in Chromium: live_app.py (live()
inside an @st.fragment, a counter outside it, a live_table()) supervised and
proxied by the gateway, driven through Playwright with Debian's Chromium.

Checks: a publish shows in st.metric within 1 s and only the fragment
reruns; 200 events at 50/s cause at most max_reruns_per_sec fragment runs in
any second, every event reaches Python once and the last one is shown;
live_table draws a fast feed with no Python run; after a gateway restart the
page recovers with a reset (state replaced); with AUTH_SECRET the page works
and its token reads no other topic; neither live_app.py nor app.py makes
Streamlit log a deprecation. Saves tests/e2e/out/live.png.

Run by tests/e2e/run.sh after e2e.py (which empties tests/e2e/out). Prints
PASS/FAIL per check and writes `passed failed` to $E2E_COUNTS_FILE.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from playwright.sync_api import sync_playwright

from switchyard import Publisher

from common import (
    CHROMIUM,
    CHROMIUM_ARGS,
    GATEWAY_BIN,
    HERE,
    OUT,
    ROOT,
    free_port,
    http_json,
    record,
    report,
    run_test,
)

VENV = HERE / ".venv"
SECRET = "live-e2e-secret-0123456789abcdef0123"
MAX_RERUNS = 4  # live_app.py's max_reruns_per_sec
# What Streamlit 1.67 logs for components.html ("Please replace
# `st.components.v1.html` with `st.iframe`. ... will be removed after ...").
DEPRECATION = re.compile(r"deprecat|will be removed|please replace", re.IGNORECASE)


def log(msg):
    print(f"[live_e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)



class Gateway:
    """The gateway supervising `streamlit run <app>`; restart() keeps both ports."""

    def __init__(self, app, name, **env):
        self.app = app
        self.port = free_port()
        self.dash_port = free_port()
        while self.dash_port == self.port:
            self.dash_port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.extra_env = env
        self.log_path = OUT / f"{name}-gateway.log"
        self.proc = None
        self.publisher = None
        self.log_file = open(self.log_path, "wb")

    def start(self):
        command = (
            f"{VENV / 'bin' / 'python'} -m streamlit run {self.app} --server.address 127.0.0.1"
            " --server.port $PORT --server.headless true --browser.gatherUsageStats false"
        )
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        env.update(
            PORT=str(self.port),
            HOST="127.0.0.1",
            LOG_FORMAT="json",
            SHUTDOWN_GRACE_SECS="2",
            DASHBOARD_URL=f"http://127.0.0.1:{self.dash_port}",
            DASHBOARD_COMMAND=command,
            STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
            **self.extra_env,
        )
        self.proc = subprocess.Popen(
            [str(GATEWAY_BIN)], cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL,
            stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        log(f"gateway pid {self.proc.pid} on {self.base} running {self.app}")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}; see {self.log_path}")
            try:
                status, body = http_json(self.base + "/health", timeout=2)
                if status == 200 and isinstance(body, dict) and body.get("upstream") == "up":
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"gateway/streamlit not up after 90 s; see {self.log_path}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        self.stop()
        self.log_file.close()

    def publish(self, topic, data, retain=True):
        """As the engine does: switchyard.Publisher (loopback, no token)."""
        if self.publisher is None:
            self.publisher = Publisher(self.base + "/_switchyard/publish")
        return self.publisher.publish(topic, data, retain=retain)

    def log_text(self):
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")


# ---------------------------------------------------------------- the page


def stats(page):
    """The fragment's line, as {name: value}."""
    text = page.locator("text=/fragment runs:/").first.text_content(timeout=5000) or ""
    found = {}
    for part in text.split(" · "):
        name, _, value = part.partition(": ")
        found[name.strip()] = value.strip()
    return found


def page_runs(page):
    text = page.locator("text=/page runs:/").first.text_content(timeout=5000) or ""
    return int(re.search(r"page runs: (\d+)", text).group(1))


def metric(page):
    return page.locator('[data-testid="stMetricValue"]').first.text_content(timeout=5000)


def run_times(page):
    return json.loads(page.locator("code").last.text_content(timeout=5000) or "[]")


def wait_metric(page, want, timeout):
    """Seconds until st.metric shows `want` (raises after timeout)."""
    t0 = time.monotonic()
    page.wait_for_function(
        "want => { const e = document.querySelector('[data-testid=\"stMetricValue\"]');"
        " return !!e && e.textContent.trim() === want; }",
        arg=want,
        timeout=timeout * 1000,
        polling=10,
    )
    return time.monotonic() - t0


def open_page(page, gw):
    page.goto(gw.base + "/", wait_until="domcontentloaded", timeout=30000)
    page.locator("h1", has_text="switchyard live").wait_for(timeout=45000)
    try:
        page.wait_for_function("() => /status: open/.test(document.body.innerText)", timeout=20000, polling=50)
    except Exception as exc:  # noqa: BLE001 - say what the page shows
        entries = page.evaluate(
            "() => Object.fromEntries(Object.entries(window.__switchyard_live || {}).map(([k, e]) =>"
            " [k, {status: e.status || e.statusText, n: e.n, sends: e.sends, calls: e.calls, acked: e.acked,"
            " ackedSent: e.ackedSent, dirty: e.dirty, timer: e.sendTimer !== null, client: !!e.client}]))"
        )
        text = page.evaluate("() => document.body.innerText")
        raise AssertionError(f"status not open after 20 s; page: {text[-400:]!r}; live entries: {entries}") from exc


def mint(subscribe, ttl=60):
    """An HS256 token, the way switchyard.mint_token makes it (stdlib)."""
    def b64(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    payload = b64(json.dumps({"exp": int(time.time()) + ttl, "subscribe": subscribe}).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


# ---------------------------------------------------------------- checks


def main():
    # run.sh's timeout sends SIGTERM: leave through the finally below, which
    # stops the gateways (and their Streamlit children).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    OUT.mkdir(parents=True, exist_ok=True)
    if not GATEWAY_BIN.exists():
        print(f"missing {GATEWAY_BIN}: run tests/e2e/run.sh", file=sys.stderr)
        return 2
    started = time.monotonic()
    profile = tempfile.mkdtemp(prefix="switchyard-live-e2e-chromium-")
    gateways = []
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 1000},
            )
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            console = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            sockets = []
            page.on("websocket", lambda ws: sockets.append(ws.url))

            # The overflow check publishes 1500 events at once: a client
            # queue that holds them (the default 1024 would cut the page off).
            gw = Gateway("tests/e2e/live_app.py", "live", CLIENT_QUEUE="4096")
            gateways.append(gw)
            shared = {}

            def live_page_opens():
                gw.start()
                # Published before the page opens: live(history=5) and
                # live_table(history=20) start with them.
                for n in range(1, 8):
                    gw.publish(f"trades/T{n}", {"n": n}, retain=False)
                    gw.publish("tape/x", {"i": n - 8, "px": 99}, retain=False)
                open_page(page, gw)
                s = stats(page)
                runs = page_runs(page)
                assert runs == 1, f"page ran {runs} times on open"
                ws = [u for u in sockets if u.startswith(f"ws://127.0.0.1:{gw.port}/ws")]
                want = [f"ws://127.0.0.1:{gw.port}/ws?topics={t}%2F%23" for t in ("bulk", "live", "tape", "trades")]
                assert sorted(ws) == want, f"client.js WebSockets: {ws}"
                return f"status {s['status']}, fragment runs {s['fragment runs']}, one /ws per live()/live_table()"

            if not run_test("live_page_opens", live_page_opens):
                raise AssertionError("the page never opened")

            def history_starts_the_page():
                page.wait_for_function("() => /trade history: 3,4,5,6,7 /.test(document.body.innerText)",
                                       timeout=10000, polling=50)
                page.wait_for_function(
                    "() => Array.from(document.querySelectorAll('*')).filter(e => e.shadowRoot).some(e => {"
                    " const t = e.shadowRoot.querySelector('.sy-live-table');"
                    " return t && t.querySelectorAll('tbody tr').length === 7; })",
                    timeout=10000, polling=50,
                )
                first = page.locator(".sy-live-table tbody tr").first.locator("td").nth(2).text_content()
                assert first == "-1", f"newest tape row has i={first}"
                text = page.locator("text=/trade history:/").first.text_content(timeout=5000)
                assert "trade live: 0" in text, text
                return f"live(history=5): {text!r}; live_table(history=20): the 7 earlier rows, newest first"

            run_test("history_starts_the_page", history_starts_the_page)


            def publish_shows_within_1s():
                runs_before = page_runs(page)
                frag_before = int(stats(page)["fragment runs"])
                gw.publish("live/price", {"value": "p0", "i": 0})
                took = wait_metric(page, "p0", 1.0)
                time.sleep(0.5)  # anything else would have rerun by now
                runs_after = page_runs(page)
                frag_after = int(stats(page)["fragment runs"])
                assert runs_after == runs_before, f"page reran: {runs_before} -> {runs_after}"
                assert frag_after > frag_before, "the fragment did not rerun"
                shared["latency"] = took
                return (
                    f"st.metric shows it after {took * 1000:.0f} ms; fragment runs {frag_before}->{frag_after},"
                    f" page runs stay {runs_after}"
                )

            run_test("publish_shows_within_1s", publish_shows_within_1s)

            def burst_200_at_50_per_s():
                before = stats(page)
                runs_before = page_runs(page)
                events_before = int(before["events"])
                frag_before = int(before["fragment runs"])
                t0 = time.time()
                for i in range(1, 201):
                    due = t0 + (i - 1) / 50
                    if (wait := due - time.time()) > 0:
                        time.sleep(wait)
                    gw.publish("live/price", {"value": f"p{i}", "i": i})
                t1 = time.time()
                wait_metric(page, "p200", 5)
                time.sleep(1.0)
                after = stats(page)
                times = [t for t in run_times(page) if t >= t0 - 0.05]
                window = max(sum(1 for u in times if t <= u < t + 1.0) for t in times)
                frag_runs = int(after["fragment runs"]) - frag_before
                events = int(after["events"]) - events_before
                assert window <= MAX_RERUNS, f"{window} fragment runs within one second (times {times})"
                # The control: the fragment kept up (not stalled behind the
                # acknowledgement timeout): at least half the allowed rate.
                assert frag_runs >= (t1 - t0) * MAX_RERUNS / 2, f"only {frag_runs} fragment runs in {t1 - t0:.1f}s"
                assert events == 200, f"Python got {events} events for 200 published"
                assert after["gaps"] == "0" and after["repeats"] == "0", f"gaps/repeats: {after}"
                assert page_runs(page) == runs_before, "the page outside the fragment reran"
                assert metric(page) == "p200", metric(page)
                live_sockets = [u for u in sockets if "/ws?topics=live" in u]
                assert len(live_sockets) == 1, f"live() opened {len(live_sockets)} WebSockets over the reruns"
                return (
                    f"published in {t1 - t0:.1f}s; {frag_runs} fragment runs (at most {window} in any 1 s);"
                    f" 200 events handed to Python once each, none missing; metric p200"
                )

            run_test("burst_200_at_50_per_s", burst_200_at_50_per_s)

            def overflow_past_1000_is_counted():
                # live_app's "bulk" live() sends a batch every 2 s at most:
                # 1500 events published at once all arrive before Python's
                # next run, the page keeps the newest 1000 and Python counts
                # the numbers it never got as missed; the state stays exact.
                def bulk_stats():
                    text = page.locator("text=/bulk events:/").first.text_content(timeout=5000) or ""
                    return {k.strip(): v.strip() for k, _, v in (p.partition(": ") for p in text.split(" · "))}

                before = bulk_stats()
                for start in (1, 501, 1001):
                    batch = [{"topic": "bulk/x", "data": {"i": i}, "retain": True} for i in range(start, start + 500)]
                    status, answer = http_json(gw.base + "/_switchyard/publish", batch)
                    assert status == 202, f"batch publish answered {status}: {answer}"
                page.wait_for_function(
                    "() => /bulk last: 1500/.test(document.body.innerText)", timeout=10000, polling=50
                )
                time.sleep(2.5)  # the page's last batch, if any, is in
                after = bulk_stats()
                events = int(after["bulk events"]) - int(before["bulk events"])
                missed = int(after["bulk missed"]) - int(before["bulk missed"])
                assert after["bulk resets"] == before["bulk resets"], f"the gateway reset the stream: {after}"
                assert events + missed == 1500, f"{events} events + {missed} missed != 1500"
                assert missed > 0 and events >= 1000, f"events {events}, missed {missed}: the bound was not reached"
                return f"{events} events handed to Python, {missed} counted as missed, state shows the last (1500)"

            run_test("overflow_past_1000_is_counted", overflow_past_1000_is_counted)

            def full_page_rerun_keeps_the_subscription():
                runs = page_runs(page)
                before = stats(page)
                shown = metric(page)
                opened = len(sockets)
                page.get_by_role("button", name="rerun the page").click()
                page.wait_for_function(
                    "n => new RegExp('page runs: ' + n + ' ').test(document.body.innerText)",
                    arg=runs + 1, timeout=10000, polling=50,
                )
                time.sleep(0.5)
                after = stats(page)
                assert len(sockets) == opened, f"new WebSockets after the rerun: {sockets[opened:]}"
                assert metric(page) == shown and after["topics"] == before["topics"], (shown, after)
                assert after["events"] == before["events"], "events handed out again on a page rerun"
                return f"page runs {runs}->{runs + 1}, no new WebSocket, state kept, no event handed out twice"

            run_test("full_page_rerun_keeps_the_subscription", full_page_rerun_keeps_the_subscription)

            def live_table_without_reruns():
                runs_before = page_runs(page)
                frag_before = stats(page)["fragment runs"]
                status = page.locator(".sy-live-table .sy-status")
                status.wait_for(timeout=10000)
                t0 = time.time()
                for i in range(300):
                    gw.publish("tape/x", {"i": i, "px": 100 + i / 100}, retain=False)
                took = time.time() - t0
                page.wait_for_function(
                    "() => { const r = document.querySelector('[data-testid=\"stBidiComponentIsolated\"]');"
                    " const roots = Array.from(document.querySelectorAll('*')).filter(e => e.shadowRoot);"
                    " return roots.some(e => { const t = e.shadowRoot.querySelector('.sy-live-table');"
                    " return t && t.dataset.received === '300'; }); }",
                    timeout=10000,
                    polling=50,
                )
                first = page.locator(".sy-live-table tbody tr").first.locator("td").nth(2).text_content()
                rows = page.locator(".sy-live-table tbody tr").count()
                assert first == "299", f"newest row has i={first}"
                assert rows == 50, f"{rows} rows (max_rows=50)"
                time.sleep(0.5)
                assert page_runs(page) == runs_before, "the page reran"
                assert stats(page)["fragment runs"] == frag_before, "the fragment reran"
                return f"300 events in {took:.1f}s drawn, 50 rows kept, newest first; no page or fragment run"

            run_test("live_table_without_reruns", live_table_without_reruns)

            def streamlit_own_port_says_where_to_go():
                # The URL Streamlit prints (its own port): no /_switchyard/
                # there, so the page says to open the gateway instead.
                own = ctx.new_page()
                try:
                    own.goto(f"http://127.0.0.1:{gw.dash_port}/", wait_until="domcontentloaded", timeout=30000)
                    want = f"Open http://localhost:{gw.port}/ instead"
                    # Each live() on the page finds out on its own (prices,
                    # bulk, trades: three fragments), so the warning of one
                    # can show before the prices fragment's status line
                    # follows: wait for both.
                    own.wait_for_function(
                        "t => document.body.innerText.includes(t)"
                        " && document.body.innerText.includes('status: wrong-port')",
                        arg=want, timeout=20000, polling=100)
                    text = own.evaluate("() => document.body.innerText")
                    assert "status: wrong-port" in text, f"status not wrong-port: {text[-300:]!r}"
                    return f"page on Streamlit's port {gw.dash_port} shows status wrong-port and {want!r}"
                finally:
                    own.close()

            run_test("streamlit_own_port_says_where_to_go", streamlit_own_port_says_where_to_go)

            def screenshot():
                path = OUT / "live.png"
                page.screenshot(path=str(path), full_page=True)
                assert path.stat().st_size > 10_000, f"screenshot only {path.stat().st_size} bytes"
                return str(path.relative_to(ROOT))

            run_test("screenshot", screenshot)

            def gateway_restart_resets_the_page():
                gw.publish("live/old", {"gone": "after restart"})
                page.wait_for_function("() => /topics: [^\\n]*live\\/old/.test(document.body.innerText)",
                                       timeout=5000, polling=20)
                t0 = time.monotonic()
                gw.stop()
                gw.start()
                restarted = time.monotonic() - t0
                gw.publish("live/price", {"value": "after-restart", "i": 1000})
                try:
                    took = wait_metric(page, "after-restart", 30)
                except Exception as exc:  # noqa: BLE001 - say what the page shows
                    raise AssertionError(f"page still shows {metric(page)!r}, {stats(page)}") from exc
                # The new Streamlit session's first run has no payload yet
                # (empty state); the page's next send fills it.
                deadline = time.monotonic() + 5
                while (s := stats(page))["topics"] != "live/price" and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert s["topics"] == "live/price", f"state not replaced: topics {s['topics']}"
                assert metric(page) == "after-restart", metric(page)
                resets = page.evaluate("() => window.__switchyard_live.prices.resets")
                assert resets > 0, "client.js reported no reset"
                return (
                    f"gateway back in {restarted:.1f}s, page recovered by itself (no reload) {took:.1f}s later: "
                    f"state replaced (live/old gone, topics {s['topics']}), reset reported "
                    f"({s['resets']}), status {s['status']}"
                )

            run_test("gateway_restart_resets_the_page", gateway_restart_resets_the_page)

            def no_deprecation_warning_from_live_app():
                text = gw.log_text()
                bad = [line for line in text.splitlines() if DEPRECATION.search(line)]
                assert not bad, bad[:3]
                return f"{len(text.splitlines())} gateway/streamlit log lines, none mention a deprecation"

            run_test("no_deprecation_warning_from_live_app", no_deprecation_warning_from_live_app)
            gw.close()

            # AUTH_SECRET: the page mints its own token, scoped to live/#.
            # 20 s tokens: the refresh check sees two of them run out.
            auth = Gateway("tests/e2e/live_app.py", "live-auth", AUTH_SECRET=SECRET, SWITCHYARD_TOKEN_TTL="20")
            gateways.append(auth)

            def auth_page_works_and_is_scoped():
                auth.start()
                page.goto("about:blank")
                open_page(page, auth)
                auth.publish("live/price", {"value": "secured", "i": 0})
                auth.publish("secret/x", {"value": "hidden"})
                took = wait_metric(page, "secured", 1.0)
                token = page.evaluate("() => window.__switchyard_live.prices.token")
                assert token and token.count(".") == 2, f"page token {token!r}"
                probe = page.evaluate(
                    """async ([token, control]) => {
                        const get = async (q, t) => {
                          const r = await fetch('/_switchyard/state?topics=' + q,
                                                t ? {headers: {authorization: 'Bearer ' + t}} : {});
                          return r.status;
                        };
                        const ws = await new Promise((resolve) => {
                          const s = new WebSocket(location.origin.replace('http', 'ws') + '/ws?topics=secret/%23');
                          s.onopen = () => s.send(JSON.stringify({type: 'auth', token}));
                          s.onmessage = (m) => { const f = JSON.parse(m.data);
                            if (f.type === 'hello') resolve('hello ' + JSON.stringify(f.state)); };
                          s.onclose = (e) => resolve('closed ' + e.code);
                          setTimeout(() => resolve('timeout'), 8000);
                        });
                        return {own: await get('live/%23', token), other: await get('secret/%23', token),
                                anonymous: await get('live/%23', null), control: await get('secret/%23', control),
                                ws};
                    }""",
                    [token, mint(["secret/#"])],
                )
                assert probe["control"] == 200, probe  # a token for secret/# reads it
                assert probe["own"] == 200, probe
                assert probe["other"] == 403, probe
                assert probe["anonymous"] == 401, probe
                assert probe["ws"].startswith("closed 4003"), probe
                topics = stats(page)["topics"]
                assert "secret" not in topics, topics
                return (
                    f"metric after {took * 1000:.0f} ms; page token reads live/# ({probe['own']}), "
                    f"not secret/# ({probe['other']}, ws {probe['ws']}); no token: {probe['anonymous']}"
                )

            run_test("auth_page_works_and_is_scoped", auth_page_works_and_is_scoped)

            def auth_tokens_refreshed_before_expiry():
                # The session's tokens live 20 s; 45 s later the page still
                # reads, with fresh tokens minted by Python on its request.
                tokens = "() => [window.__switchyard_live.prices.token, window.__switchyard_live['table:tape'].token]"
                first = page.evaluate(tokens)
                seen = {tuple(first)}
                deadline = time.monotonic() + 45
                while time.monotonic() < deadline:
                    seen.add(tuple(page.evaluate(tokens)))
                    time.sleep(1)
                live_seen = {t[0] for t in seen}
                table_seen = {t[1] for t in seen}
                status = page.evaluate(
                    "() => [window.__switchyard_live.prices.status, window.__switchyard_live['table:tape'].statusText]"
                )
                assert status == ["open", "open"], f"statuses after 45 s: {status}; tokens seen {len(seen)}"
                auth.publish("live/price", {"value": "still-live", "i": 1})
                took = wait_metric(page, "still-live", 1.0)
                received = page.locator(".sy-live-table").get_attribute("data-received")
                auth.publish("tape/x", {"i": 7, "px": 1.5}, retain=False)
                page.wait_for_function(
                    "n => Array.from(document.querySelectorAll('*')).some(e => e.shadowRoot &&"
                    " e.shadowRoot.querySelector('.sy-live-table') &&"
                    " e.shadowRoot.querySelector('.sy-live-table').dataset.received === String(n))",
                    arg=int(received or 0) + 1, timeout=2000, polling=50,
                )
                assert len(live_seen) >= 3 and len(table_seen) >= 3, (
                    f"tokens seen in 45 s: live() {len(live_seen)}, live_table() {len(table_seen)}"
                )
                return (
                    f"45 s on 20 s tokens: live() used {len(live_seen)}, live_table() {len(table_seen)};"
                    f" both still open, event in st.metric after {took * 1000:.0f} ms and in the table"
                )

            run_test("auth_tokens_refreshed_before_expiry", auth_tokens_refreshed_before_expiry)
            auth.close()

            # app.py (e2e.py's page) must not use components.html any more.
            plain = Gateway("tests/e2e/app.py", "app")
            gateways.append(plain)

            def no_deprecation_warning_from_app_py():
                plain.start()
                page.goto(plain.base + "/", wait_until="domcontentloaded", timeout=30000)
                page.locator("h1", has_text="switchyard e2e").wait_for(timeout=45000)
                page.wait_for_timeout(2000)
                text = plain.log_text()
                bad = [line for line in text.splitlines() if DEPRECATION.search(line)]
                assert not bad, bad[:3]
                return f"{len(text.splitlines())} log lines after rendering app.py, none mention a deprecation"

            run_test("no_deprecation_warning_from_app_py", no_deprecation_warning_from_app_py)
            plain.close()

            if console:
                (OUT / "live-browser-console.log").write_text("\n".join(console) + "\n")
            ctx.close()
    except AssertionError:
        pass
    except Exception as exc:  # noqa: BLE001
        record("harness", False, f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    finally:
        for gw in gateways:
            try:
                gw.close()
            except Exception:  # noqa: BLE001
                pass
        shutil.rmtree(profile, ignore_errors=True)

    log(f"total {time.monotonic() - started:.1f}s")
    return report("live_e2e.py")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Several replicas, dashboard included (issue 22): three gateways, each
supervising its own real Streamlit (replicas_app.py), sharing one Redis,
behind a balancer that sends every request to a replica picked at random
(as Railway's edge does: no sticky sessions). Headless Chromium goes
through the balancer:

- the click counter keeps its state (the session stays on one Streamlit),
- 10 uploads (PUT /_stcore/upload_file) and the 3 session-unique /media
  images all succeed, and so they do again after each of 5 reloads,
- the balancer really spread the requests over all three replicas and the
  replicas forwarded the ones that belonged to another,
- SIGKILL the replica holding the session: within 30 s the page works
  again through the others.

The balancer (below) picks a replica per request: it reads the request
head, marks a plain request `Connection: close` (so the next request comes
on a new connection and gets a new pick) and pipes bytes both ways; an
upgrade is piped until either side closes. A replica refusing the
connection is skipped for another, as an edge proxy does.

Run through tests/e2e/run.sh (venv, Chromium, the gateway binary). Redis:
SWITCHYARD_TEST_REDIS (default redis://127.0.0.1:6379), with a key prefix
of this run's own.
"""

import asyncio
import collections
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback

from playwright.sync_api import sync_playwright

from common import GATEWAY_BIN, HTTP, OUT, free_port, launch_chromium, record, report
from e2e import Gateway

HERE_OUT = OUT / "replicas"
REDIS_URL = os.environ.get("SWITCHYARD_TEST_REDIS") or "redis://127.0.0.1:6379"
CONTROL = os.environ.get("REPLICAS_E2E_CONTROL") == "1"
KNOWN = 1 if CONTROL else 3


def log(msg):
    print(f"[replicas_e2e] {msg}", file=sys.stderr, flush=True)


class Balancer:
    """A per-request random balancer on 127.0.0.1, on a thread of its own."""

    def __init__(self, backends):
        self.backends = list(backends)
        self.port = free_port()
        self.counts = collections.Counter()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        if not self.ready.wait(10):
            raise AssertionError("balancer did not start")

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def serve():
            server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, limit=1 << 16)
            self.ready.set()
            async with server:
                await server.serve_forever()

        try:
            self.loop.run_until_complete(serve())
        except Exception:  # stopped with the process
            pass

    async def _handle(self, reader, writer):
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, OSError):
            writer.close()
            return
        lines = head[:-4].split(b"\r\n")
        upgrade = any(line.lower().startswith(b"upgrade:") for line in lines[1:])
        if not upgrade:
            kept = [l for l in lines[1:] if not l.lower().startswith((b"connection:", b"keep-alive:"))]
            lines = [lines[0], *kept, b"Connection: close"]
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        order = random.sample(self.backends, len(self.backends))
        upstream = None
        for port in order:
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
                self.counts[port] += 1
                break
            except (OSError, asyncio.TimeoutError):
                continue
        if upstream is None:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = upstream
        up_writer.write(head)

        async def pipe(source, sink):
            try:
                while True:
                    data = await source.read(1 << 16)
                    if not data:
                        break
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass

        to_upstream = asyncio.ensure_future(pipe(reader, up_writer))
        to_client = asyncio.ensure_future(pipe(up_reader, writer))
        await asyncio.wait([to_upstream, to_client], return_when=asyncio.FIRST_COMPLETED)
        if upgrade or to_client.done():
            to_upstream.cancel()
        await asyncio.wait([to_client], timeout=60)
        to_client.cancel()
        for w in (writer, up_writer):
            try:
                w.close()
            except OSError:
                pass


def metric(replica, name):
    try:
        with HTTP.open(replica.base + "/_switchyard/metrics", timeout=3) as resp:
            text = resp.read().decode()
    except OSError:
        return 0
    match = re.search(rf"^{name} (\d+)", text, re.M)
    return int(match.group(1)) if match else 0


def main():
    HERE_OUT.mkdir(parents=True, exist_ok=True)
    if not GATEWAY_BIN.exists():
        print(f"missing {GATEWAY_BIN}: run tests/e2e/run.sh", file=sys.stderr)
        return 2
    started = time.monotonic()
    prefix = f"switchyard-e2e-replicas:{os.getpid()}:{int(time.time())}:"
    replicas = []
    for index in range(3):
        replica = Gateway(label=f"replicas/replica-{index}", app="tests/e2e/replicas_app.py")
        replica.extra_env.update(
            REDIS_URL=REDIS_URL,
            # The control run (REPLICAS_E2E_CONTROL=1): each replica in a
            # Redis of its own, as it were, so none knows another and
            # nothing is forwarded: what the balancer does without us.
            REDIS_PREFIX=f"{prefix}{index}:" if CONTROL else prefix,
            REPLICA_URL=f"http://127.0.0.1:{replica.port}",
        )
        replicas.append(replica)
    profile = tempfile.mkdtemp(prefix="switchyard-e2e-replicas-chromium-")
    failures = collections.Counter()  # what the page saw fail, by kind
    try:
        for replica in replicas:
            replica.start()
        ids = {}
        for replica in replicas:
            health = replica.wait_health(
                lambda s, h: h.get("upstream") == "up" and h.get("replicas") == KNOWN,
                120,
                f'"upstream":"up" and "replicas":{KNOWN}',
            )
            ids[health["replica"]] = replica
        log(f"3 replicas up after {time.monotonic() - started:.1f}s: {sorted(ids)}")
        balancer = Balancer([r.port for r in replicas])
        balancer.start()
        base = f"http://127.0.0.1:{balancer.port}"

        with sync_playwright() as pw:
            ctx, page = launch_chromium(pw, profile)

            def on_response(response):
                url = response.url
                if ("/_stcore/upload_file" in url or "/media/" in url) and response.status >= 400:
                    failures[f"{response.request.method} {url.split('/')[3]} {response.status}"] += 1

            page.on("response", on_response)
            page.on(
                "requestfailed",
                lambda request: failures.update([f"failed {request.method} {request.url.split('?')[0][-40:]}"]),
            )

            def presses(timeout=30000):
                text = page.locator("text=/presses: \\d+/").first.text_content(timeout=timeout) or ""
                return int(text.split(":")[1])

            def click_and_see(before, timeout=15000):
                page.get_by_role("button", name="press me").click(timeout=timeout)
                page.locator(f"text=presses: {before + 1}").wait_for(timeout=timeout)

            def images_loaded(timeout=20):
                deadline = time.monotonic() + timeout
                state = []
                while time.monotonic() < deadline:
                    state = page.evaluate(
                        """() => Array.from(document.querySelectorAll('img'))
                            .filter(i => i.src.includes('/media/'))
                            .map(i => [i.src, i.complete && i.naturalWidth > 0])"""
                    )
                    if len(state) == 3 and all(ok for _, ok in state):
                        return state
                    time.sleep(0.2)
                raise AssertionError(f"/media images not all loaded: {state}")

            upload_count = [0]

            def upload(expected_in_session, timeout=20000):
                upload_count[0] += 1
                name = f"file-{upload_count[0]}.txt"
                size = 1000 + upload_count[0]
                page.locator('input[type="file"]').set_input_files(
                    files=[{"name": name, "mimeType": "text/plain", "buffer": b"u" * size}]
                )
                page.locator(
                    f"text=uploaded: {name} {size} bytes; uploads this session: {expected_in_session}"
                ).wait_for(timeout=timeout)

            def session_replica():
                cookies = {c["name"]: c["value"] for c in ctx.cookies()}
                return cookies.get("switchyard_replica")

            def first_visit():
                page.goto(base + "/", wait_until="domcontentloaded", timeout=60000)
                assert presses() == 0
                images_loaded()
                return f"pinned to {session_replica()}"

            def state_survives_clicks():
                for n in range(5):
                    click_and_see(n)
                return "presses: 5"

            def ten_uploads_and_three_images():
                for n in range(10):
                    upload(n + 1)
                state = images_loaded()
                assert not failures, dict(failures)
                return f"10 uploads, {len(state)} /media images"

            def five_reloads():
                for n in range(5):
                    page.reload(wait_until="domcontentloaded", timeout=60000)
                    before = presses()
                    images_loaded()
                    upload(1)
                    click_and_see(before)
                assert not failures, dict(failures)
                return "each rendered, uploaded, showed its images, counted a click"

            def balancer_spread_requests():
                counts = {port: balancer.counts[port] for port in balancer.backends}
                total = sum(counts.values())
                forwarded = {rid: metric(r, "switchyard_replica_forwarded_requests_total") for rid, r in ids.items()}
                assert all(c >= total * 0.15 for c in counts.values()), counts
                assert sum(forwarded.values()) >= total * 0.3, (forwarded, total)
                return f"per replica {sorted(counts.values())} of {total}; forwarded by each {forwarded}"

            def sigkill_the_session_replica():
                victim_id = session_replica()
                victim = ids.get(victim_id)
                assert victim is not None, f"cookie {victim_id} names no replica"
                victim.kill_hard()
                killed = time.monotonic()
                attempts = 0
                # First without touching the page: Streamlit's frontend
                # reconnects its WebSocket by itself; then reloads.
                while True:
                    attempts += 1
                    try:
                        if attempts > 1:
                            page.reload(wait_until="domcontentloaded", timeout=8000)
                        before = presses(8000)
                        click_and_see(before, 8000)
                        upload(1 if attempts > 1 else 2, 8000)
                        images_loaded(8)
                        break
                    except Exception as exc:  # the page is not back yet
                        log(f"attempt {attempts} after the SIGKILL: {str(exc).splitlines()[0]}")
                        if time.monotonic() - killed > 30:
                            raise AssertionError(f"not working 30 s after the SIGKILL: {exc}")
                took = time.monotonic() - killed
                now_on = session_replica()
                assert now_on != victim_id and now_on in ids, (victim_id, now_on)
                assert took <= 30, took
                return f"working again {took:.1f}s after the SIGKILL ({attempts} attempt(s)), now on {now_on}"

            for check in (
                first_visit,
                state_survives_clicks,
                ten_uploads_and_three_images,
                five_reloads,
                balancer_spread_requests,
            ):
                try:
                    record(f"replicas_{check.__name__}", True, check())
                except Exception as exc:
                    record(f"replicas_{check.__name__}", False, f"{exc}\n{traceback.format_exc()}")
                    page.screenshot(path=str(HERE_OUT / f"{check.__name__}.png"), full_page=True)
            failures.clear()
            try:
                record("replicas_sigkill_the_session_replica", True, sigkill_the_session_replica())
            except Exception as exc:
                record("replicas_sigkill_the_session_replica", False, f"{exc}\n{traceback.format_exc()}")
                page.screenshot(path=str(HERE_OUT / "sigkill.png"), full_page=True)
            ctx.close()
    except Exception as exc:
        record("replicas_setup", False, f"{exc}\n{traceback.format_exc()}")
    finally:
        for replica in replicas:
            replica.kill_hard()
            if replica.log_file:
                replica.log_file.close()
        shutil.rmtree(profile, ignore_errors=True)
    log(f"total {time.monotonic() - started:.1f}s")
    return report("replicas_e2e.py")


if __name__ == "__main__":
    sys.exit(main())

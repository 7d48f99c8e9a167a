"""What the e2e scripts share: paths, the Chromium command line, a
proxy-free HTTP helper, and the PASS/FAIL record (run_test, report) they print.

Imported by the scripts from their own directory (run.sh runs them as
`python tests/e2e/<script>.py`, so this directory is on sys.path).
"""

import json
import os
import socket
import sys
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = HERE / "out"
# SWITCHYARD_BIN overrides the binary (run.sh then skips the build).
GATEWAY_BIN = Path(os.environ.get("SWITCHYARD_BIN") or ROOT / "target" / "release" / "switchyard")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]

def launch_chromium(pw, profile):
    """Debian's headless Chromium with a persistent `profile` directory
    (a Playwright BrowserContext), and its first page."""
    ctx = pw.chromium.launch_persistent_context(
        profile,
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 900},
    )
    return ctx, ctx.pages[0] if ctx.pages else ctx.new_page()


# urllib without any proxy from the environment: loopback only.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

results = []  # (name, ok, detail), in the order the checks ran


def record(name, ok, detail=""):
    results.append((name, ok, detail))
    if ok:
        print(f"PASS {name}" + (f" ({detail})" if detail else ""), flush=True)
    else:
        print(f"FAIL {name}: {detail}", flush=True)


def run_test(name, fn):
    """Runs one check: `fn` returns a detail string (or None) or raises;
    either way the outcome is recorded with the time it took."""
    t0 = time.monotonic()
    try:
        detail = fn() or ""
    except Exception as exc:  # noqa: BLE001 - every failure is reported
        reason = f"{type(exc).__name__}: {exc}".strip().splitlines()
        record(name, False, " | ".join(reason[:6]))
        traceback.print_exc(file=sys.stderr)
        return False
    took = f"{time.monotonic() - t0:.1f}s"
    record(name, True, f"{detail}; {took}" if detail else took)
    return True


def report(script):
    """Prints this script's counts and returns its exit code. Under run.sh
    (E2E_COUNTS_FILE set) the counts go to that file and run.sh prints the
    one `N passed, M failed` line for every script."""
    passed = sum(1 for _, ok, _ in results if ok)
    failed = len(results) - passed
    counts_file = os.environ.get("E2E_COUNTS_FILE")
    if counts_file:
        Path(counts_file).write_text(f"{passed} {failed}\n")
        print(f"{script} subtotal: passed={passed} failed={failed}", flush=True)
    else:
        print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url, body=None, timeout=5):
    """GET (or POST `body` as JSON); returns (status, parsed JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with HTTP.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


def mint_token(secret, ttl=None, **claims):
    """An HS256 JWT signed with `secret` (AUTH_SECRET), as the Streamlit app
    or `switchyard token` would mint it: `ttl` seconds from now as `exp`
    (unless `exp` is given), plus `claims` (`subscribe`, `publish`, `admin`,
    `sub`). Stdlib only: base64url(header).base64url(payload).signature."""
    import base64
    import hashlib
    import hmac
    import time

    def b64(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    payload = dict(claims)
    if "exp" not in payload:
        payload["exp"] = int(time.time() + (ttl if ttl is not None else 3600))
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{head}.{body}".encode()
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"

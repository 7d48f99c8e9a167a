#!/usr/bin/env python3
"""examples/railway run the way Railway runs it, driven in headless Chromium.

What Railpack does with the example: a fresh venv, `pip install -r
requirements.txt` in the project directory (the wheel is a file in the
project), then the start command from railway.json (`bash -c switchyard`,
as Railpack's image runs it) with PORT and the example's variables
(variables.env). Then the checks:

- requirements.txt pins the wheel that was built, and mentions file:// so
  Railpack copies the project (wheels/ included) before `pip install`;
- the gateway answers /health within railway.json's healthcheckTimeout and
  reports the supervised worker (WORKER_COMMAND);
- the dashboard renders and the engine's events reach the page within 2 s;
- SIGKILL of the engine (the `python engine.py` process under the gateway):
  the gateway starts it again, the page follows the new engine with no error,
  and the engine picked up the positions and counters the gateway held;
- SIGTERM of the gateway: it exits 0 and every process it started is gone
  within the grace (RAILWAY_DEPLOYMENT_DRAINING_SECONDS - 1).

The wheel: $SWITCHYARD_WHEEL, else the newest target/wheels/switchyard_gateway-*.whl.
Without one (a contributor's machine; refused under CI=true) the wheel line is
replaced by ./clients/python[streamlit] and the gateway binary ($SWITCHYARD_BIN,
target/release or target/debug) is put on PATH: everything else is the same.

Saves tests/e2e/out/railway.png (and copies it to $RAILWAY_SCREENSHOT if set).
Prints PASS/FAIL per check and `N passed, M failed` (or writes the counts to
$E2E_COUNTS_FILE under run.sh).
"""

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
from datetime import datetime, timezone
from pathlib import Path

from playwright.sync_api import sync_playwright

from common import CHROMIUM, CHROMIUM_ARGS, GATEWAY_BIN, OUT, ROOT, free_port, http_json, record, report, run_test

EXAMPLE = ROOT / "examples" / "railway"
WHEEL_LINE = re.compile(r"^(?P<dist>switchyard-gateway)(?P<extras>\[[^\]]*\])?==(?P<version>[^\s]+)\s*$")
FIND_LINKS = "--find-links ./wheels"
# What Railpack puts in the deploy image's environment for a Python app
# (core/providers/python/python.go, GetPythonEnvVars).
RAILPACK_PYTHON_ENV = {
    "PYTHONFAULTHANDLER": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONHASHSEED": "random",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_DEFAULT_TIMEOUT": "100",
}
MAX_LAG_SECS = 2.0


def log(msg):
    print(f"[railway_e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)



# ---------------------------------------------------------------- processes


def _stat(pid):
    """(state, ppid) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _alive(pid):
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def comm(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root):
    """Live processes below `root`, by parent links."""
    children = {}
    for pid in all_pids():
        stat = _stat(pid)
        if stat and stat[0] not in ("Z", "X"):
            children.setdefault(stat[1], []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def in_directory(directory):
    """Live processes whose working directory is `directory` (the app's)."""
    found = []
    for pid in all_pids():
        try:
            if os.readlink(f"/proc/{pid}/cwd") == str(directory) and _alive(pid):
                found.append(pid)
        except OSError:
            pass
    return found


def describe(pids):
    return ", ".join(f"{pid} {b' '.join(cmdline(pid)).decode(errors='replace')[:80]!r}" for pid in pids)


def engine_processes(gateway_pid):
    """The Python processes running engine.py under the gateway (not the sh around them)."""
    return [
        pid
        for pid in descendants(gateway_pid)
        if comm(pid).startswith("python") and any(arg.endswith(b"engine.py") for arg in cmdline(pid))
    ]


def wait_for(predicate, timeout, poll=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    return predicate()


# ---------------------------------------------------------------- the project


def find_wheel():
    given = os.environ.get("SWITCHYARD_WHEEL")
    if given:
        return Path(given)
    built = sorted((ROOT / "target" / "wheels").rglob("switchyard_gateway-*.whl"), key=lambda p: p.stat().st_mtime)
    return built[-1] if built else None


def read_variables(path):
    """variables.env: KEY=value lines, as pasted into Railway's raw editor (no quoting)."""
    variables = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"variables.env: bad line {line!r}"
        variables[key] = value
    return variables


def gateway_bin_dir():
    for candidate in (GATEWAY_BIN, ROOT / "target" / "release" / "switchyard", ROOT / "target" / "debug" / "switchyard"):
        if candidate.exists():
            return candidate.parent
    raise AssertionError("no switchyard binary: build it (cargo build) or set SWITCHYARD_WHEEL")


class Deployment:
    """The example as Railway would hold it: a copy of the project, its venv, the gateway."""

    def __init__(self, work):
        self.app = work / "app"
        self.wheel = find_wheel()
        self.extra_path = []
        self.proc = None
        self.port = free_port()
        self.dash_port = free_port()
        while self.dash_port == self.port:
            self.dash_port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = json.loads((EXAMPLE / "railway.json").read_text())
        self.log_path = OUT / "railway-gateway.log"
        self.log_file = None

    # -- build: what Railpack does ------------------------------------------

    def copy_project(self):
        shutil.copytree(
            EXAMPLE, self.app, ignore=shutil.ignore_patterns(".venv", "__pycache__", ".mypy_cache", ".ruff_cache", "*.whl")
        )

    def pin_line(self):
        lines = [WHEEL_LINE.match(line) for line in (self.app / "requirements.txt").read_text().splitlines()]
        pins = [m for m in lines if m]
        assert len(pins) == 1, f"requirements.txt: want one switchyard-gateway[...]==VERSION line, found {len(pins)}"
        return pins[0]

    def install(self):
        requirements = self.app / "requirements.txt"
        pin = self.pin_line()
        if self.wheel is not None:
            (self.app / "wheels").mkdir(exist_ok=True)
            shutil.copy2(self.wheel, self.app / "wheels" / self.wheel.name)
            target = "requirements.txt"
        else:
            # A contributor's machine: the distribution from this checkout
            # (editable: maturin's dev profile), the binary from target/.
            text = requirements.read_text().replace(pin.group(0), f"-e {ROOT}")
            (self.app / "requirements-dev.txt").write_text(text)
            target = "requirements-dev.txt"
            self.extra_path = [str(gateway_bin_dir())]
        t0 = time.monotonic()
        subprocess.run([_base_python(), "-m", "venv", ".venv"], cwd=self.app, check=True)
        pip = subprocess.run(
            [str(self.app / ".venv" / "bin" / "pip"), "install", "--quiet", "-r", target],
            cwd=self.app, env=self.env(), capture_output=True, text=True, timeout=900,
        )
        took = time.monotonic() - t0
        (OUT / "railway-pip.log").write_text(pip.stdout + pip.stderr)
        assert pip.returncode == 0, f"pip install -r {target} failed: {pip.stderr.strip()[-600:]}"
        return took

    # -- deploy: the start command with the variables ---------------------------

    def env(self):
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        for key in list(env):
            if key.startswith(("SWITCHYARD_", "DASHBOARD_", "WORKER_", "STREAMLIT_", "RAILWAY_")) or key == "VIRTUAL_ENV":
                del env[key]
        venv_bin = str(self.app / ".venv" / "bin")
        env["PATH"] = ":".join([venv_bin, *self.extra_path, env.get("PATH", "/usr/bin:/bin")])
        env["VIRTUAL_ENV"] = str(self.app / ".venv")
        env.update(RAILPACK_PYTHON_ENV)
        return env

    @property
    def draining_secs(self):
        return int(self.config["deploy"]["drainingSeconds"])

    @property
    def grace_secs(self):
        # The gateway sizes its grace to RAILWAY_DEPLOYMENT_DRAINING_SECONDS - 1.
        return self.draining_secs - 1

    def start(self):
        env = self.env()
        env.update(read_variables(self.app / "variables.env"))
        env.update(
            PORT=str(self.port),  # Railway sets it
            RAILWAY_DEPLOYMENT_DRAINING_SECONDS=str(self.draining_secs),  # Railway sets it from railway.json
            # Test-only: loopback, and ports of our own so parallel runs never meet on 8501.
            HOST="127.0.0.1",
            DASHBOARD_URL=f"http://127.0.0.1:{self.dash_port}",
            STREAMLIT_SERVER_PORT=str(self.dash_port),
            LOG_FORMAT="json",
        )
        command = self.config["deploy"]["startCommand"]
        self.log_file = open(self.log_path, "wb")
        # Railpack's image: ENTRYPOINT ["/bin/bash", "-c"], CMD [startCommand], WORKDIR /app.
        self.proc = subprocess.Popen(
            ["/bin/bash", "-c", command], cwd=self.app, env=env, stdin=subprocess.DEVNULL,
            stdout=self.log_file, stderr=subprocess.STDOUT,
        )
        log(f"started {command!r} as pid {self.proc.pid} on {self.base} (dashboard port {self.dash_port})")

    def health(self):
        try:
            status, body = http_json(self.base + "/health", timeout=2)
        except (OSError, ValueError):
            return None, None
        return status, body

    def log_text(self):
        if self.log_file:
            self.log_file.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self):
        """Leaves nothing behind, whatever the checks did."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        leftovers = in_directory(self.app)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if leftovers:
            log(f"killed leftovers: {leftovers}")
        if self.log_file:
            self.log_file.close()


def _base_python():
    """A python3 outside any venv (Railpack's comes from mise)."""
    return getattr(sys, "_base_executable", None) or shutil.which("python3") or "python3"


# ---------------------------------------------------------------- the page


def engine_line(page):
    """The caption the book fragment writes: pid, tick and the engine's time."""
    text = page.locator("text=/engine pid/").first.text_content(timeout=5000) or ""
    found = re.search(r"engine pid (\d+) · tick #(\d+) · at (\d\d):(\d\d):(\d\d\.\d+) UTC · feed (\S+)", text)
    assert found, f"engine caption: {text!r}"
    pid, tick, hh, mm, ss, feed = found.groups()
    return {"pid": int(pid), "tick": int(tick), "clock": int(hh) * 3600 + int(mm) * 60 + float(ss), "feed": feed}


def lag_now(shown_clock):
    """Seconds between the engine's time shown on the page and now (UTC)."""
    now = datetime.now(timezone.utc)
    clock = now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6
    return (clock - shown_clock) % 86400


def measure_lag(page, seconds):
    """Samples the page for `seconds`: the largest delay between the engine's
    clock in its last event and the wall clock, and the ticks seen."""
    lags, first, last = [], None, None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = engine_line(page)
        lags.append(lag_now(line["clock"]))
        first = first or line
        last = line
        time.sleep(0.1)
    lags.sort()
    log(f"engine clock on the page behind by {lags[0]:.2f}..{lags[len(lags) // 2]:.2f}..{lags[-1]:.2f}s "
        f"(min..median..max of {len(lags)} samples)")
    return lags[-1], first, last


def page_errors(page):
    """Streamlit exceptions and error statuses on the page."""
    problems = []
    if page.locator('[data-testid="stException"]').count():
        problems.append("a Streamlit exception is shown")
    statuses = page.evaluate(
        "() => Object.fromEntries(Object.entries(window.__switchyard_live || {}).map(([k, e]) =>"
        " [k, e.status && typeof e.status === 'string' ? e.status : e.statusText]))"
    )
    for key, status in statuses.items():
        if status not in ("open",):
            problems.append(f"{key}: {status}")
    return problems, statuses


def table_received(page):
    value = page.locator(".sy-live-table").first.get_attribute("data-received", timeout=5000)
    return int(value or 0)


# ---------------------------------------------------------------- checks


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="switchyard-railway-e2e-"))
    profile = tempfile.mkdtemp(prefix="switchyard-railway-e2e-chromium-")
    deployment = Deployment(work)
    shared = {}
    try:
        deployment.copy_project()

        def requirements_pin_the_wheel():
            pin = deployment.pin_line()
            text = (deployment.app / "requirements.txt").read_text()
            # Railpack copies only requirements.txt into its install layer
            # unless the file mentions file:// (installNeedsAllFiles).
            assert "file://" in text, "requirements.txt never mentions file://: Railpack would install without wheels/"
            assert FIND_LINKS in text.splitlines(), f"requirements.txt has no {FIND_LINKS!r} line"
            assert pin.group("extras") == "[streamlit]", f"extras {pin.group('extras')!r}"
            if deployment.wheel is None:
                assert os.environ.get("CI") != "true", "CI must give the wheel (SWITCHYARD_WHEEL or target/wheels/)"
                log("no wheel (SWITCHYARD_WHEEL unset, none in target/wheels): contributor mode, "
                    "./clients/python[streamlit] and the gateway from target/ instead")
                return f"pins {pin.group(0)}; NO WHEEL GIVEN: installing from source"
            built_version = deployment.wheel.name.split("-")[1]
            assert built_version == pin.group("version"), (
                f"requirements.txt pins {pin.group('version')} but the build made {deployment.wheel.name}"
            )
            return f"pins {pin.group(0)} from ./wheels, the version that was built ({deployment.wheel.name})"

        run_test("requirements_pin_the_wheel", requirements_pin_the_wheel)

        def railway_json_as_railway_reads_it():
            build, deploy = deployment.config["build"], deployment.config["deploy"]
            assert build.get("builder") == "RAILPACK", build
            assert deploy["startCommand"] == "switchyard", deploy["startCommand"]
            assert deploy["healthcheckPath"] == "/health", deploy
            # Railway's parser rejects strings here ("Expected number").
            for key in ("drainingSeconds", "healthcheckTimeout"):
                assert type(deploy[key]) is int and deploy[key] > 0, f"{key}: {deploy[key]!r}"
            return f"RAILPACK, start {deploy['startCommand']!r}, health {deploy['healthcheckPath']}, drain {deploy['drainingSeconds']}s"

        run_test("railway_json_as_railway_reads_it", railway_json_as_railway_reads_it)

        def pip_install_provides_the_command():
            took = deployment.install()
            bin_dir = deployment.app / ".venv" / "bin"
            found = shutil.which("switchyard", path=deployment.env()["PATH"])
            assert found, "no switchyard on PATH after pip install"
            if deployment.wheel is not None:
                assert Path(found).parent == bin_dir, f"switchyard found at {found}, not in the venv"
            version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
            assert version.returncode == 0, version.stderr
            probe = subprocess.run(
                [str(bin_dir / "python"), "-c", "import streamlit, switchyard.streamlit; print(streamlit.__version__)"],
                capture_output=True, text=True, timeout=60,
            )
            assert probe.returncode == 0, probe.stderr[-400:]
            shared["pip_secs"] = took
            return f"fresh venv + pip install in {took:.1f}s; {version.stdout.strip()} at {found}; streamlit {probe.stdout.strip()}"

        if not run_test("pip_install_provides_the_command", pip_install_provides_the_command):
            raise AssertionError("nothing to run")

        def start_command_becomes_healthy():
            t0 = time.monotonic()
            deployment.start()
            timeout = int(deployment.config["deploy"]["healthcheckTimeout"])
            body = None
            deadline = t0 + timeout
            while time.monotonic() < deadline:
                if deployment.proc.poll() is not None:
                    raise AssertionError(f"gateway exited with {deployment.proc.returncode}: {deployment.log_text()[-800:]}")
                status, body = deployment.health()
                if status == 200 and body.get("upstream") == "up":
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(f"/health not 200 with the dashboard up after {timeout}s: {body}")
            assert comm(deployment.proc.pid) == "switchyard", f"pid {deployment.proc.pid} is {comm(deployment.proc.pid)!r}"
            took = time.monotonic() - t0
            shared["healthy_secs"] = took
            return f"/health 200, upstream up {took:.1f}s after the start command (bash -c exec'd switchyard)"

        if not run_test("start_command_becomes_healthy", start_command_becomes_healthy):
            raise AssertionError("the gateway never became healthy")

        def health_reports_the_worker():
            engines = wait_for(lambda: engine_processes(deployment.proc.pid), 15)
            _, body = deployment.health()
            worker = body.get("worker") if isinstance(body, dict) else None
            assert isinstance(worker, dict) and worker.get("state") == "running", f"/health worker: {worker!r} (body {body})"
            assert len(engines) == 1, f"engine.py processes under the gateway: {describe(engines) or 'none'}"
            return f"worker {worker}; engine.py is pid {engines[0]}"

        run_test("health_reports_the_worker", health_reports_the_worker)

        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 1400},
            )
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            console = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))

            def dashboard_renders():
                page.goto(deployment.base + "/", wait_until="domcontentloaded", timeout=30000)
                page.locator("h1", has_text="Trading desk").wait_for(timeout=45000)
                page.locator("text=/engine pid/").first.wait_for(timeout=20000)
                page.wait_for_function(
                    "() => { const l = window.__switchyard_live || {};"
                    " return l.book?.status === 'open' && l.prices?.status === 'open'"
                    " && l['table:trades']?.statusText === 'open'; }",
                    timeout=20000, polling=50,
                )
                charts = wait_for(lambda: page.locator('[data-testid="stVegaLiteChart"]').count() >= 4, 20, 0.2)
                assert charts, f"{page.locator('[data-testid=stVegaLiteChart]').count()} price charts"
                rows = page.locator('[data-testid="stDataFrame"]').count()
                assert rows == 1, f"{rows} positions tables"
                problems, statuses = page_errors(page)
                assert not problems, problems
                return f"title, positions, 4 price charts, trade tape; subscriptions {statuses}"

            if not run_test("dashboard_renders", dashboard_renders):
                raise AssertionError("the page never rendered")

            def engine_events_live_within_2s():
                worst, first, last = measure_lag(page, 4)
                assert last["tick"] > first["tick"], f"tick stayed at {first['tick']} for 4 s"
                assert worst < MAX_LAG_SECS, f"the page showed an engine event {worst:.2f}s old"
                received = table_received(page)
                t0 = time.monotonic()
                # ~0.8 trades/s: one within 15 s unless the tape is broken.
                grew = wait_for(lambda: table_received(page) > received, 15, 0.05)
                assert grew, f"no trade reached the tape in 15 s (received {received})"
                return (
                    f"ticks #{first['tick']}->#{last['tick']} in 4 s, the engine's clock on the page at most "
                    f"{worst:.2f}s behind; a trade drawn in the tape {time.monotonic() - t0:.1f}s after we looked"
                )

            run_test("engine_events_live_within_2s", engine_events_live_within_2s)

            def screenshot():
                time.sleep(3)  # a few seconds of chart
                path = OUT / "railway.png"
                page.screenshot(path=str(path), full_page=True)
                assert path.stat().st_size > 10_000, f"screenshot only {path.stat().st_size} bytes"
                if os.environ.get("RAILWAY_SCREENSHOT"):
                    shutil.copy2(path, os.environ["RAILWAY_SCREENSHOT"])
                return str(path.relative_to(ROOT))

            run_test("screenshot", screenshot)

            def engine_sigkill_restarts_and_page_follows():
                before = engine_line(page)
                trades_before = int(page.locator('[data-testid="stMetricValue"]').nth(2).text_content() or "0")
                engines = engine_processes(deployment.proc.pid)
                assert len(engines) == 1, f"engine.py processes under the gateway: {describe(engines) or 'none'}"
                old = engines[0]
                assert before["pid"] == old, f"page shows engine pid {before['pid']}, the process is {old}"
                _, health = deployment.health()
                restarts_before = (health.get("worker") or {}).get("restarts", 0)
                t0 = time.monotonic()
                os.kill(old, signal.SIGKILL)
                new = wait_for(lambda: [p for p in engine_processes(deployment.proc.pid) if p != old], 30)
                assert new, f"no new engine.py within 30 s; log: {deployment.log_text()[-600:]}"
                respawned = time.monotonic() - t0
                page.wait_for_function(
                    "pid => new RegExp('engine pid ' + pid + ' ').test(document.body.innerText)",
                    arg=new[0], timeout=30000, polling=50,
                )
                followed = time.monotonic() - t0
                worst, first, last = measure_lag(page, 3)
                assert last["tick"] > first["tick"], "ticks stopped after the restart"
                assert worst < MAX_LAG_SECS, f"after the restart the page showed an event {worst:.2f}s old"
                problems, statuses = page_errors(page)
                assert not problems, problems
                trades_after = int(page.locator('[data-testid="stMetricValue"]').nth(2).text_content() or "0")
                assert trades_after >= trades_before, f"trade count went back: {trades_before} -> {trades_after}"
                assert last["tick"] > before["tick"], f"tick count went back: {before['tick']} -> {last['tick']}"
                _, health = deployment.health()
                worker = health.get("worker") or {}
                assert worker.get("restarts", 0) > restarts_before, f"/health worker after the kill: {worker}"
                return (
                    f"engine {old} killed; new engine {new[0]} after {respawned:.1f}s, on the page after {followed:.1f}s; "
                    f"ticks go on (#{before['tick']}->#{last['tick']}, at most {worst:.2f}s behind), trades "
                    f"{trades_before}->{trades_after}; no error, subscriptions {statuses}; /health worker {worker}"
                )

            run_test("engine_sigkill_restarts_and_page_follows", engine_sigkill_restarts_and_page_follows)

            def sigterm_stops_everything_within_grace():
                gateway = deployment.proc.pid
                children = descendants(gateway)
                streamlit = [p for p in children if any(b"streamlit" in a for a in cmdline(p))]
                engines = engine_processes(gateway)
                assert streamlit, f"no streamlit process under the gateway: {describe(children)}"
                watched = set(children) | set(in_directory(deployment.app))
                t0 = time.monotonic()
                deployment.proc.send_signal(signal.SIGTERM)
                try:
                    code = deployment.proc.wait(deployment.grace_secs + 5)
                except subprocess.TimeoutExpired:
                    code = None
                exited = time.monotonic() - t0

                def nothing_left():
                    left = [p for p in watched if _alive(p)] + in_directory(deployment.app)
                    return not left

                wait_for(nothing_left, max(0.0, deployment.grace_secs - (time.monotonic() - t0)), 0.05)
                gone = time.monotonic() - t0
                left = sorted(set(p for p in watched if _alive(p)) | set(in_directory(deployment.app)))
                assert code is not None, f"gateway still running {exited:.1f}s after SIGTERM"
                assert code == 0, f"gateway exited with {code}"
                assert not left, f"still running {gone:.1f}s after SIGTERM: {describe(left)}"
                assert gone <= deployment.grace_secs, f"took {gone:.1f}s, grace {deployment.grace_secs}s"
                return (
                    f"gateway exit 0 after {exited:.1f}s; all {len(watched)} processes (streamlit {streamlit}, "
                    f"engine {engines}) gone after {gone:.1f}s (grace {deployment.grace_secs}s)"
                )

            run_test("sigterm_stops_everything_within_grace", sigterm_stops_everything_within_grace)

            if console:
                (OUT / "railway-browser-console.log").write_text("\n".join(console) + "\n")
            ctx.close()
    except AssertionError:
        pass
    except Exception as exc:  # noqa: BLE001
        record("harness", False, f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    finally:
        deployment.close()
        shutil.rmtree(profile, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    parts = [f"total {time.monotonic() - started:.1f}s"]
    if "pip_secs" in shared:
        parts.append(f"pip install {shared['pip_secs']:.1f}s")
    if "healthy_secs" in shared:
        parts.append(f"start to healthy {shared['healthy_secs']:.1f}s")
    log(", ".join(parts))
    return report("railway_e2e.py")


if __name__ == "__main__":
    sys.exit(main())

"""Runs the README's commands as a newcomer would, so the README cannot drift.

Every fenced shell or Python block in README.md carries a marker on the line
before it, an HTML comment GitHub does not show:

- ``<!-- readme-test: file NAME -->``: the block is written to NAME in a fresh
  directory (the newcomer's project);
- ``<!-- readme-test: run -->``: the block runs there with bash (``-e``) and
  must exit 0;
- ``<!-- readme-test: serve -->``: the block starts the gateway; it runs in the
  background until ``/health`` answers, the engine's event is in
  ``/_switchyard/state`` and the dashboard's page is served; then SIGTERM,
  and every process it started must be gone within the grace;
- ``<!-- readme-test: ci REASON -->``: the block is what ``.ci/run`` itself
  runs (``cargo test``), named so the reader of this file knows where.

An unmarked block is a failure: a new command cannot slip into the README
untested. The blocks run in a fresh virtualenv whose ``bin`` is first on
PATH (as after ``source .venv/bin/activate``), with ``PORT`` set to a free
port and ``PIP_FIND_LINKS`` set to the folder holding the wheel
(``SWITCHYARD_WHEEL``), which is how a team pins an unpublished wheel.

Prints ``N passed, M failed`` and exits non-zero on any failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- readme-test: (file|run|serve|ci)\b\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```(\w*)")
RUN_LIMIT_SECS = 900
SERVE_LIMIT_SECS = 120
EVENT_LIMIT_SECS = 60
GRACE_SECS = 15


@dataclass
class Block:
    line: int
    lang: str
    kind: str  # file | run | serve | ci | unmarked
    arg: str
    text: str


def blocks(readme: Path) -> list[Block]:
    """The fenced blocks of ``readme`` with the marker on the line before."""
    lines = readme.read_text(encoding="utf-8").split("\n")
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        lang = fence.group(1)
        if lang not in ("sh", "bash", "shell", "python", "py"):
            continue  # output, tables, JSON: nothing to run
        marker = MARKER.match(lines[start - 1].strip()) if start > 0 else None
        kind, arg = (marker.group(1), marker.group(2)) if marker else ("unmarked", "")
        found.append(Block(start + 1, lang, kind, arg, "\n".join(body) + "\n"))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for(what: str, limit: float, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + limit
    last = ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError) as error:
            last = f" ({error})"
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {limit:.0f} s{last}")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def serve(block: Block, cwd: Path, env: dict[str, str]) -> None:
    port = env["PORT"]
    base = f"http://127.0.0.1:{port}"
    log = open(cwd / "serve.log", "wb")  # closed in the finally below
    child = subprocess.Popen(
        ["bash", "-c", block.text],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for("/health 200", SERVE_LIMIT_SECS, lambda: get(base + "/health")[0] == 200)

        def has_event() -> bool:
            state = json.loads(get(base + "/_switchyard/state")[1])
            return bool(state.get("state"))

        wait_for("an event from the engine in /_switchyard/state", EVENT_LIMIT_SECS, has_event)
        status, page = get(base + "/")
        assert status == 200 and b"<html" in page.lower(), f"/ answered {status}"
        print(f"  serving on {base}: health 200, the engine's events arrive, / is the dashboard")
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            code = child.wait(timeout=GRACE_SECS)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise AssertionError(f"still running {GRACE_SECS} s after SIGTERM") from None
        finally:
            log.close()
    wait_for("every process of the command gone", GRACE_SECS, lambda: not group_alive(child.pid))
    assert code == 0, f"exit code {code} after SIGTERM"


def main() -> int:
    readme = ROOT / "README.md"
    wheel = os.environ.get("SWITCHYARD_WHEEL", "")
    if not wheel or not Path(wheel).is_file():
        print("SWITCHYARD_WHEEL must name the built wheel (see wheel/ci.sh)", file=sys.stderr)
        return 2
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="switchyard-readme-") as tmp:
        cwd = Path(tmp)
        subprocess.run([sys.executable, "-m", "venv", str(cwd / ".venv")], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SWITCHYARD_", "CARGO"))}
        env["PATH"] = f"{cwd / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(cwd / ".venv")
        env["PORT"] = str(free_port())
        env["PIP_FIND_LINKS"] = str(Path(wheel).resolve().parent)
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        env["PIP_PROGRESS_BAR"] = "off"  # CI's log: what ran and how it ended
        env["PIP_QUIET"] = "1"
        for block in blocks(readme):
            where = f"README.md:{block.line} ({block.kind} {block.arg})".replace(" )", ")")
            try:
                if block.kind == "unmarked":
                    raise AssertionError("no <!-- readme-test: … --> marker before this block")
                if block.kind == "file":
                    (cwd / block.arg).write_text(block.text, encoding="utf-8")
                elif block.kind == "run":
                    subprocess.run(
                        ["bash", "-e", "-c", block.text],
                        cwd=cwd,
                        env=env,
                        check=True,
                        timeout=RUN_LIMIT_SECS,
                    )
                elif block.kind == "serve":
                    serve(block, cwd, env)
                elif block.kind == "ci":
                    assert block.arg, "say which .ci/run step runs it"
                passed += 1
                print(f"PASS {where}")
            except (AssertionError, subprocess.SubprocessError, OSError) as error:
                failed += 1
                print(f"FAIL {where}: {error}")
                log = cwd / "serve.log"
                if block.kind == "serve" and log.exists():
                    print(log.read_text(errors="replace")[-4000:])
    print(f"readme: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

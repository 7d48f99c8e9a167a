"""The binary that ships with the package: `find_switchyard_bin()` and
`python -m switchyard`, run for real (the venv clients/python/ci.sh installs
with `pip install -e .` at the repository root carries the binary)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import ROOT, Gateway

from switchyard import find_switchyard_bin

SRC = ROOT / "clients" / "python" / "src"


def crate_version() -> str:
    for line in (ROOT / "Cargo.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in Cargo.toml")


def test_the_binary_is_installed_beside_python() -> None:
    found = find_switchyard_bin()
    assert Path(found).parent == Path(sysconfig.get_path("scripts"))
    out = subprocess.run([found, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout == f"switchyard {crate_version()}\n"


def test_python_m_passes_arguments_and_exit_code() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "switchyard", "--version"], capture_output=True, text=True
    )
    assert (version.returncode, version.stdout) == (0, f"switchyard {crate_version()}\n")
    bad = subprocess.run(
        [sys.executable, "-m", "switchyard", "no-such-command"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert 'unknown command "no-such-command"' in bad.stderr


def test_python_m_becomes_the_gateway() -> None:
    """exec, not a child: the pid Python started is the gateway's, and
    SIGTERM to it drains and exits 0."""
    gateway = Gateway({}, command=[sys.executable, "-m", "switchyard"])
    try:
        assert gateway.process is not None
        exe = os.readlink(f"/proc/{gateway.process.pid}/exe")
        assert exe == os.path.realpath(find_switchyard_bin())
        assert gateway.get_json("/health")["status"] == "healthy"
    finally:
        gateway.stop()
    assert gateway.process.returncode == 0


def test_search_order_user_scheme_then_path_then_a_clear_error(tmp_path: Path) -> None:
    """In a venv without the binary: the user scheme's scripts directory
    wins over PATH; with neither, the error names every place it looked."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    user_bin = tmp_path / "user" / "bin"
    path_bin = tmp_path / "path"
    user_bin.mkdir(parents=True)
    path_bin.mkdir()
    real = find_switchyard_bin()
    env = {
        # The package from source; websockets from this venv.
        "PYTHONPATH": os.pathsep.join([str(SRC), sysconfig.get_path("purelib")]),
        "PYTHONUSERBASE": str(tmp_path / "user"),
        "PATH": str(path_bin),
    }
    find = [python, "-c", "import switchyard; print(switchyard.find_switchyard_bin())"]

    def found() -> str:
        return subprocess.run(find, env=env, capture_output=True, text=True, check=True).stdout

    shutil.copy(real, path_bin / "switchyard")
    assert found() == f"{path_bin / 'switchyard'}\n"
    shutil.copy(real, user_bin / "switchyard")
    assert found() == f"{user_bin / 'switchyard'}\n"

    (user_bin / "switchyard").unlink()
    (path_bin / "switchyard").unlink()
    missing = subprocess.run(
        [python, "-m", "switchyard", "--version"], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 1
    assert "no switchyard binary in any of these places" in missing.stderr
    assert f" - {user_bin}\n" in missing.stderr
    assert " - PATH\n" in missing.stderr

"""Where the `switchyard` binary that this package was installed with lives.

The `switchyard-gateway` wheel puts the gateway binary in the environment's
scripts directory (`bin/`), beside `python`, as uv and ruff do. This module
only finds it; `switchyard.__main__` runs it.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

__all__ = ["SwitchyardNotFoundError", "find_switchyard_bin"]


class SwitchyardNotFoundError(FileNotFoundError):
    """No `switchyard` binary in any place a Python install puts it, nor on PATH."""


def find_switchyard_bin() -> str:
    """Return the path of the `switchyard` binary installed with this package.

    Looks where pip puts scripts, in this order: the environment's scripts
    directory, the scripts directory of a `pip install --prefix` or
    `--target` around this package, the user scheme's (`pip install --user`,
    e.g. ``~/.local/bin``), the directory of ``sys.executable``; then PATH.
    Raises :class:`SwitchyardNotFoundError` naming every place it looked.
    """
    name = "switchyard" + (sysconfig.get_config_var("EXE") or "")
    looked: list[str] = []
    for directory in _script_dirs():
        if directory in looked:
            continue
        looked.append(directory)
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(name)
    if on_path is not None:
        return on_path
    places = "\n".join(f" - {directory}" for directory in [*looked, "PATH"])
    raise SwitchyardNotFoundError(
        f"no {name} binary in any of these places:\n{places}\n"
        "install the switchyard-gateway wheel (pip install switchyard-gateway) "
        "or build it with `cargo build`"
    )


def _script_dirs() -> list[str]:
    """Directories where an install of this package puts its scripts, best first."""
    package = Path(__file__).resolve().parent
    dirs = [sysconfig.get_path("scripts")]
    # `pip install --prefix P`: P/lib/pythonX.Y/site-packages/switchyard.
    if package.parent.name == "site-packages" and package.parent.parent.name.startswith("python"):
        dirs.append(str(package.parents[3] / "bin"))
    # `pip install --target T`: T/switchyard, scripts in T/bin.
    dirs.append(str(package.parent / "bin"))
    dirs.append(sysconfig.get_path("scripts", scheme=sysconfig.get_preferred_scheme("user")))
    dirs.append(os.path.dirname(sys.executable))
    return dirs

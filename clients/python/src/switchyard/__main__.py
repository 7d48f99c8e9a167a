"""`python -m switchyard ARGS…`: runs the bundled `switchyard` binary with ARGS.

The process becomes the binary (exec), so signals, exit codes and the
supervised children behave exactly as with the `switchyard` command.
"""

from __future__ import annotations

import os
import sys

from ._find_bin import SwitchyardNotFoundError, find_switchyard_bin


def main() -> None:
    """Replace this process with the gateway binary, passing the arguments on."""
    try:
        binary = find_switchyard_bin()
    except SwitchyardNotFoundError as error:
        print(f"switchyard: {error}", file=sys.stderr)
        sys.exit(1)
    os.execv(binary, [binary, *sys.argv[1:]])


if __name__ == "__main__":
    main()

"""Compares a kosoku run with the expected Autobahn results.

Usage: compare.py INDEX_JSON EXPECTED_JSON [--update]

Prints the per-section counts of (behavior, close behavior), then every case
that differs from the expected file. Exits 1 when a case got worse than
expected, or when a case of sections 1-7, 9 or 10 is not OK, NON-STRICT or
INFORMATIONAL, or a case of 12 or 13 (permessage-deflate, which the gateway
does not negotiate) is not UNIMPLEMENTED. `--update` rewrites the expected
file from the run (only when nothing got worse).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import TypedDict


class Verdict(TypedDict):
    behavior: str
    behaviorClose: str


# Lower is better. INFORMATIONAL is a case's own kind of verdict (it probes
# what the RFC leaves open), as good as OK.
RANK = {
    "OK": 0,
    "INFORMATIONAL": 0,
    "NON-STRICT": 1,
    "UNIMPLEMENTED": 2,
    "WRONG CODE": 3,
    "UNCLEAN": 3,
    "FAILED BY CLIENT": 3,
    "FAILED": 4,
    "ERROR": 4,
}
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
COMPRESSION_SECTIONS = {"12", "13"}
# Most cases listed per kind of difference.
SHOWN = 20


def rank(verdict: Verdict) -> int:
    return max(RANK.get(verdict["behavior"], 4), RANK.get(verdict["behaviorClose"], 4))


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def load_run(path: Path) -> dict[str, Verdict]:
    index = json.loads(path.read_text())
    cases: dict[str, Verdict] = {}
    for agent_cases in index.values():
        for case_id, result in agent_cases.items():
            cases[case_id] = {
                "behavior": result["behavior"],
                "behaviorClose": result["behaviorClose"],
            }
    return cases


def rule_broken(case_id: str, verdict: Verdict) -> bool:
    if case_id.split(".")[0] in COMPRESSION_SECTIONS:
        return verdict["behavior"] != "UNIMPLEMENTED"
    return verdict["behavior"] not in PASSING or verdict["behaviorClose"] not in PASSING


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4) or (len(argv) == 4 and argv[3] != "--update"):
        print(__doc__, file=sys.stderr)
        return 2
    run = load_run(Path(argv[1]))
    expected_path = Path(argv[2])
    expected: dict[str, Verdict] = (
        json.loads(expected_path.read_text()) if expected_path.exists() else {}
    )

    sections: dict[str, Counter[str]] = {}
    for case_id, verdict in run.items():
        label = verdict["behavior"]
        if verdict["behaviorClose"] not in ("OK", verdict["behavior"]):
            label += f" (close {verdict['behaviorClose']})"
        sections.setdefault(case_id.split(".")[0], Counter())[label] += 1
    print("Autobahn per section:")
    for section in sorted(sections, key=int):
        counts = ", ".join(f"{n} {label}" for label, n in sorted(sections[section].items()))
        print(f"  {section:>2}: {counts}")

    worse, better, changed = [], [], []
    for case_id in sorted(set(run) | set(expected), key=case_key):
        got = run.get(case_id)
        want = expected.get(case_id)
        if got == want:
            continue
        line = f"  {case_id}: expected {want}, got {got}"
        if got is None or (want is not None and rank(got) > rank(want)):
            worse.append(line)
        elif want is None or rank(got) < rank(want):
            better.append(line)
        else:
            changed.append(line)
    broken = [
        f"  {case_id}: {verdict}"
        for case_id, verdict in sorted(run.items(), key=lambda item: case_key(item[0]))
        if rule_broken(case_id, verdict)
    ]

    for title, lines in (
        ("worse than expected", worse),
        ("better than expected", better),
        ("changed, neither better nor worse", changed),
        ("not OK, NON-STRICT or INFORMATIONAL (12, 13: not UNIMPLEMENTED)", broken),
    ):
        if lines:
            print(f"{len(lines)} case(s) {title}:")
            print("\n".join(lines[:SHOWN]))
            if len(lines) > SHOWN:
                print(f"  ... and {len(lines) - SHOWN} more")

    if worse or broken:
        print("autobahn: FAILED")
        return 1
    if len(argv) == 4:
        lines = [
            f"  {json.dumps(case_id)}: {json.dumps(run[case_id])}"
            for case_id in sorted(run, key=case_key)
        ]
        expected_path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
        print(f"autobahn: {expected_path} updated")
    elif better or changed:
        print(
            "autobahn: better than expected; record it with UPDATE_EXPECTED=1 tests/autobahn/run.sh"
        )
    print(f"autobahn: {len(run)} cases, none worse than expected")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

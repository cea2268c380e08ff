"""Longer fuzzing than CI: the boundaries of tests/fuzz at SCALE times their CI case counts.

    .venv/bin/python bench/fuzz.py [--scale 10] [--random] [--json fuzz.json]

CI runs a few thousand derandomised cases per boundary; this runs more (and, with --random, cases CI never
sees). Prints one row per boundary: cases run, failures, seconds and cases per second. A failing case is
printed by hypothesis; keep it as an `@example` in tests/fuzz once fixed. It is a campaign, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0, help="multiple of the CI case counts")
    parser.add_argument("--random", action="store_true", help="new random cases instead of CI's fixed ones")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = {**os.environ, "UNIMEDVL_FUZZ_SCALE": str(args.scale), "UNIMEDVL_FUZZ_RANDOM": "1" if args.random else "0"}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
                          "--hypothesis-show-statistics", "--durations=0", str(ROOT / "tests" / "fuzz")],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    total = time.perf_counter() - start
    stats = re.findall(r"::(test_\w+):\n(?:.*\n)*?\s+- (\d+) passing, (\d+) failing", run.stdout)
    seconds = {name: float(s) for s, name in re.findall(r"([\d.]+)s call\s+\S+::(test_\w+)", run.stdout)}
    rows = [{"boundary": name.removeprefix("test_"), "cases": int(p) + int(f), "failing": int(f),
             "seconds": seconds.get(name, float("nan"))} for name, p, f in stats]
    print("| boundary | cases | failing | seconds | cases/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['boundary']} | {r['cases']} | {r['failing']} | {r['seconds']:.1f} | "
              f"{r['cases'] / r['seconds']:.0f} |")
    print(f"\nscale {args.scale}x, {'random' if args.random else 'CI'} cases, {total:.0f} s in all; pytest exit {run.returncode}")
    if run.returncode:
        print(run.stdout[-6000:])
    if args.json:
        args.json.write_text(json.dumps({"scale": args.scale, "random": args.random, "rows": rows}, indent=1) + "\n")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())

"""Start-up cost of the commands people wait on, as ratios against a bare interpreter start.

`labctl --help` and `labctl validate RECIPE` are timed next to `python -c pass` (the same
interpreter, same venv, same run: the machine's load cancels out of the ratio). Each figure is
the median of several runs. Issue 18's goals: --help <= 8x, validate <= 15x.

    .venv/bin/python bench/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "electrolyte_conductivity.json"
CONFIG = ROOT / "config" / "sim.toml"

CASES: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "labctl --help": [sys.executable, "-m", "labctl", "--help"],
    "labctl validate RECIPE": [sys.executable, "-m", "labctl", "validate", str(RECIPE),
                               "--config", str(CONFIG)],
}


def once(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run of `argv`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    for argv in CASES.values():  # warm the page cache and pint's disk cache
        once(argv)
    wall: dict[str, list[float]] = {name: [] for name in CASES}
    cpu: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.runs):  # interleaved, so a burst of load hits every case alike
        for name, argv in CASES.items():
            w, c = once(argv)
            wall[name].append(w)
            cpu[name].append(c)
    base_w = statistics.median(wall["python -c pass"])
    base_c = statistics.median(cpu["python -c pass"])
    # CPU time is the steadier figure on a shared machine (another process's load shows in the
    # wall clock, not in ours); both are printed.
    print(f"{'command':<26}{'wall s':>8}{'x bare':>9}{'cpu s':>8}{'x bare':>9}")
    for name in CASES:
        w = statistics.median(wall[name])
        c = statistics.median(cpu[name])
        print(f"{name:<26}{w:>8.3f}{w / base_w:>8.1f}x{c:>8.3f}{c / base_c:>8.1f}x")


if __name__ == "__main__":
    main()

"""The demo recipe end to end, as a user runs it: simulated seconds per wall second of a
whole `labctl run recipes/electrolyte_conductivity.json --time-scale 10000`, start-up (imports,
simulators, connecting) included. The peer is the plan's own duration (`labctl plan`), so the
figure is planned simulated seconds / wall seconds of the whole process. Issue 18's goal:
>= 1000x. Median of several runs.

    .venv/bin/python bench/demo_speed.py [--runs 3] [--time-scale 10000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "electrolyte_conductivity.json"
CONFIG = ROOT / "config" / "sim.toml"


def planned_s() -> float:
    out = subprocess.run([sys.executable, "-m", "labctl", "plan", str(RECIPE), "--config",
                          str(CONFIG), "--json"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return float(json.loads(out)["plan"]["estimated_s"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time-scale", type=float, default=10000)
    args = ap.parse_args()
    planned = planned_s()
    walls: list[float] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as data:
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "labctl", "run", str(RECIPE), "--config", str(CONFIG),
                 "--data-dir", data, "--time-scale", f"{args.time_scale:g}", "--json"],
                cwd=ROOT, capture_output=True, text=True)
            walls.append(time.perf_counter() - t0)
            if done.returncode != 0:
                raise SystemExit(f"run failed ({done.returncode}): {done.stdout[-800:]}"
                                 f"{done.stderr[-800:]}")
    wall = statistics.median(walls)
    print(f"demo recipe at --time-scale {args.time_scale:g}: planned {planned:.0f} simulated s, "
          f"whole `labctl run` {wall:.2f} wall s (median of {args.runs}) -> "
          f"{planned / wall:.0f}x simulated/wall (goal >= 1000x; ideal {args.time_scale:g}x)")


if __name__ == "__main__":
    main()

"""The simulated sol-gel coating: gel time and film thickness against the recipe's knobs
(prints figures, asserts nothing).

Runs recipes/coating_synthesis.json on the simulated bench (config/sim.toml, `labctl run`,
30 min hydrolysis, 1 min drying segments) once per setting, one knob at a time from the
defaults (TEOS:EtOH:H2O:HCl = 1:4:4:0.01 at 40 °C), and prints the gel time the `sol_gel`
analysis reads from the coat stirrer's recorded viscosity trend next to the gel time of the
world's model (`simulators.solgel`) for the same composition held at the set temperature
(the run starts from 22 °C: the block's ramp makes the measured one a little longer), and
the Landau-Levich wet film at 1 mm/s.

Usage: .venv/bin/python bench/bench_solgel.py [--time-scale 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from simulators import solgel

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "coating_synthesis.json"
SWEEPS: list[tuple[str, list[float]]] = [
    ("water_ratio", [2, 4, 6, 8]),
    ("acid_ratio", [0.004, 0.01, 0.02, 0.04]),
    ("temperature", [30, 40, 50, 60]),
]
DEFAULTS = {"water_ratio": 4.0, "acid_ratio": 0.01, "temperature": 40.0, "ethanol_ratio": 4.0}


def model_gel_time_s(water_ratio: float, acid_ratio: float, temperature: float,
                     ethanol_ratio: float, teos_ml: float = 2.0) -> float:
    n = teos_ml * 0.933 / 208.33
    volume_l = (teos_ml + n * (ethanol_ratio * 46.07 / 0.789 + water_ratio * 18.015 / 0.997)
                ) * 1e-3
    return solgel.gel_time_s(n * water_ratio / volume_l, n * acid_ratio / volume_l,
                             n / volume_l, temperature)


def run(scale: float, data: Path, knob: str, value: float) -> dict[str, float]:
    shown = f"{value:g} degC" if knob == "temperature" else f"{value:g}"
    out = subprocess.run(
        [sys.executable, "-m", "labctl", "run", str(RECIPE), "--data-dir", str(data),
         "--time-scale", f"{scale:g}", "--json", "--param", "hydrolysis_time=30 min",
         "--param", "segment=1 min", "--param", f"{knob}={shown}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {f["name"]: f["value"] for f in result.get("figures_of_merit") or []}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time-scale", type=float, default=1000.0)
    scale = ap.parse_args().time_scale
    print(f"coating_synthesis on the simulated bench, time scale {scale:g}")
    print(f"{'knob':<12} {'value':>7} {'gel time (h)':>13} {'model (h)':>10} "
          f"{'ratio':>6} {'wet film (um)':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for knob, values in SWEEPS:
            for value in values:
                figs = run(scale, Path(tmp), knob, value)
                model = model_gel_time_s(**{**DEFAULTS, knob: value}) / 3600
                gel = figs.get("gel_time")
                film = figs.get("wet_film_thickness")
                if gel is None or film is None:
                    print(f"{knob:<12} {value:>7g} {'refused':>13} {model:>10.2f}")
                    continue
                print(f"{knob:<12} {value:>7g} {gel / 3600:>13.2f} {model:>10.2f} "
                      f"{gel / 3600 / model:>6.2f} {film * 1e6:>14.2f}")


if __name__ == "__main__":
    main()

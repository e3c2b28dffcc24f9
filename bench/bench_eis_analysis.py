"""Conductivity from impedance spectra: accuracy and cost of the analysis (prints figures,
asserts nothing).

Spectra of the simulated cell (simulators.electrochem_cell, Randles circuit with the
electrolyte's R_s) over a grid of electrolytes, with the potentiostat simulator's noise
(Gaussian, 0.1 % of |Z| on each part, seeded), 31 frequencies from 100 kHz to 0.1 Hz,
written as BDF CSV and analysed by `ANALYSES["ionic_conductivity"]` (default method: the
equivalent-circuit fit). Prints the largest and median |error| of σ against the model's
truth, the median time per analysis (first call apart: it pays the imports), and the time
to import the analysis module. Runs against whichever labctl is importable, so the same
script measures two versions: `PYTHONPATH=/other/tree python bench/bench_eis_analysis.py`.

Usage: .venv/bin/python bench/bench_eis_analysis.py
"""

from __future__ import annotations

import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

t0 = time.perf_counter()
from labctl.analysis import ANALYSES  # noqa: E402  (timed)

IMPORT_S = time.perf_counter() - t0

from simulators.conductivity import conductivity_s_m  # noqa: E402
from simulators.electrochem_cell import Cell  # noqa: E402

ELECTROLYTES = [(m, w, t) for m in (0.3, 1.0, 2.0) for w in (0.3, 0.5, 0.7) for t in (10, 40)]


def spectrum(path: Path, sigma: float, rng: np.random.Generator) -> None:
    cell = Cell(conductivity=lambda: (sigma, 25.0))
    f = np.geomspace(1e5, 0.1, 31)
    z = np.array([cell.impedance(x) for x in f])
    noise = np.abs(z) * 0.001
    zr, zi = z.real + rng.normal(0, noise), z.imag + rng.normal(0, noise)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Test Time / s", "Frequency / Hz", "Real Impedance / ohm",
                    "Imaginary Impedance / ohm"])
        for k in range(len(f)):
            w.writerow([k, f[k], zr[k], zi[k]])


def main() -> None:
    rng = np.random.default_rng(11)
    errors: list[float] = []
    times: list[float] = []
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for n, (m, w, t) in enumerate(ELECTROLYTES):
            truth = conductivity_s_m(m, w, t)
            path = Path(tmp) / f"eis{n}.bdf.csv"
            spectrum(path, truth, rng)
            start = time.perf_counter()
            out = ANALYSES["ionic_conductivity"]([path], cell_constant="1.0 /cm")
            took = time.perf_counter() - start
            if first is None:
                first = took
            else:
                times.append(took)
            errors.append(abs(out["ionic_conductivity"]["value"] / truth - 1) * 100)
    print(f"labctl from {sys.modules['labctl'].__file__}")
    print(f"import labctl.analysis: {IMPORT_S * 1000:.0f} ms")
    print(f"{len(ELECTROLYTES)} spectra: |sigma error| max {max(errors):.2f} %, "
          f"median {statistics.median(errors):.2f} %")
    print(f"analysis time: first call {first * 1000:.0f} ms (imports), then median "
          f"{statistics.median(times) * 1000:.0f} ms")


if __name__ == "__main__":
    main()

"""impedance.py is imported without its plotting stack, and that changes no figure.

Each case runs in a fresh interpreter: what a process has imported is the thing under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# a noisy R0-p(R1,CPE1) spectrum with a diffusion tail, the shape the EmStat simulator gives
ANALYSE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from labctl.analysis import eis

    f = np.logspace(5, -1, 50)
    w = 2 * np.pi * f
    cpe = 1 / (2e-5 * (1j * w) ** 0.9)
    z = 90 + 1 / (1 / 400 + 1 / cpe) + 300 / np.sqrt(1j * w)
    z = z * (1 + 0.001 * np.random.default_rng(7).standard_normal(len(f)))
    kk = eis.check_spectrum(f, z.real, z.imag)
    fit = eis.fit_circuit(f, z.real, z.imag)
    loaded = {name: type(sys.modules[name]).__name__ if name in sys.modules else None
              for name in ("pandas", "altair", "matplotlib", "matplotlib.pyplot")}
    print(json.dumps({"kk": kk.as_dict(), "fit": fit.as_dict(), "loaded": loaded}))
""")


def _run(prelude: str, after: str = "") -> dict:
    done = subprocess.run([sys.executable, "-c", prelude + ANALYSE + after], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[0])


def test_the_fits_do_not_import_the_plotting_modules() -> None:
    out = _run("")
    assert out["loaded"] == {"pandas": None, "altair": None, "matplotlib": None,
                             "matplotlib.pyplot": None}
    assert out["kk"]["valid"] is True
    assert abs(out["fit"]["parameters"]["R0"] - 90) < 2


def test_the_figures_are_those_of_an_ordinary_import_of_impedance() -> None:
    deferred = _run("")
    ordinary = _run("import impedance.models.circuits, impedance.validation\n")
    assert ordinary["loaded"]["pandas"] == "module"  # the peer really imported them
    assert deferred["kk"] == ordinary["kk"]
    assert deferred["fit"] == ordinary["fit"]


def test_impedance_plotting_still_reaches_the_real_modules() -> None:
    after = textwrap.dedent("""
        import impedance.visualization as vis
        import impedance.models.circuits.circuits as circuits
        import pandas
        from labctl.analysis.impedance_py import Deferred
        assert not isinstance(pandas, Deferred), "a later import pandas got the placeholder"
        assert vis.pd.DataFrame is pandas.DataFrame
        import matplotlib
        matplotlib.use("Agg")
        figure = circuits.plt.figure()
        import matplotlib.pyplot
        assert type(figure).__module__ == "matplotlib.figure"
        assert circuits.plt.gcf() is matplotlib.pyplot.gcf()
        print("plotting ok")
    """)
    done = subprocess.run([sys.executable, "-c", ANALYSE + after], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "plotting ok"

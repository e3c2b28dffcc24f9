"""impedance.py without the plotting stack it imports and labctl never calls.

impedance 1.7 imports altair, pandas and matplotlib.pyplot at module level (for
`CustomCircuit.plot` and `impedance.visualization`), even when only its fitting and Lin-KK code
is used. Those three cost ~0.7 s of the 1.0 s its import takes on this machine, which is more
than a whole simulated demo run spends on everything else (docs/performance.md).

`load()` imports impedance with a `Deferred` placeholder standing in for each plotting module
that is not imported yet. The placeholders leave `sys.modules` as soon as impedance is
imported, so every later `import pandas` (by labctl, a plugin or a user) gets the real module.
impedance keeps its names bound to the placeholders; the first attribute it reads from one
(a user calling `CustomCircuit.plot`) imports the real module and reads from that. Nothing in
impedance runs a plotting module at import time, so the fits are the same either way
(`tests/test_eis_impedance_import.py` compares them with an ordinary import).
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import Any

#: what impedance 1.7 imports only to draw (impedance/visualization.py, circuits.py)
PLOTTING_MODULES = ("altair", "pandas", "matplotlib", "matplotlib.pyplot")

# re-entrant: a placeholder read during the import (by the importing thread) resolves itself
_lock = threading.RLock()
_loaded = False


class Deferred(types.ModuleType):
    """Stands in for a module until one of its attributes is read, then imports it."""

    def __init__(self, name: str) -> None:
        super().__init__(name, f"placeholder for {name}, imported on first use")
        self._real: types.ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        # only called for names the placeholder does not hold itself; `__path__` too, so
        # that another thread importing e.g. matplotlib.colors meanwhile gets the real one
        return getattr(self._resolve(), attr)

    def _resolve(self) -> types.ModuleType:
        with _lock:
            if self._real is None:
                _drop_placeholders()  # read while impedance is being imported: end the window
                self._real = importlib.import_module(self.__name__)
            return self._real


def _drop_placeholders() -> None:
    for name in PLOTTING_MODULES:
        if isinstance(sys.modules.get(name), Deferred):
            del sys.modules[name]


def load() -> None:
    """Import the parts of impedance.py labctl uses (circuits, fitting, Lin-KK), once per
    process, from any thread."""
    global _loaded
    with _lock:
        if _loaded:
            return
        placeholders = {name: Deferred(name) for name in PLOTTING_MODULES
                        if name not in sys.modules}
        parent = placeholders.get("matplotlib")
        if parent is not None and "matplotlib.pyplot" in placeholders:
            # `import matplotlib.pyplot as plt` reads the attribute from the package
            parent.pyplot = placeholders["matplotlib.pyplot"]  # type: ignore[attr-defined]
        sys.modules.update(placeholders)
        try:
            importlib.import_module("impedance.models.circuits")
            importlib.import_module("impedance.validation")
        finally:
            _drop_placeholders()
        _loaded = True

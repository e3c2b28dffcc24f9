"""Figures of merit from BDF data: the `AnalysisSpec` base, labctl's own analyses
(`builtin`), and the `ANALYSES` table of every analysis installed (`labctl.analyses`
entry points).

The names below are imported on first use (PEP 562), not with the package: `labctl run`
imports `labctl.analysis.worker` first thing to start the analysis process, and the base
(units, pint) would hold that start up by ~0.2 s.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labctl.analysis.base import (
        AnalysisRefused,
        AnalysisSpec,
        ArgSpec,
        Refusal,
        fig,
        load,
    )
    from labctl.analysis.registry import ANALYSES, AnalysisTable, analysis_catalogue

_WHERE = {
    "AnalysisRefused": "base", "AnalysisSpec": "base", "ArgSpec": "base", "Refusal": "base",
    "fig": "base", "load": "base",
    "ANALYSES": "registry", "AnalysisTable": "registry", "analysis_catalogue": "registry",
}

__all__ = ["ANALYSES", "AnalysisRefused", "AnalysisSpec", "AnalysisTable", "ArgSpec", "Refusal",
           "analysis_catalogue", "fig", "load"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'labctl.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"labctl.analysis.{module}"), name)
    globals()[name] = value  # found directly next time
    return value

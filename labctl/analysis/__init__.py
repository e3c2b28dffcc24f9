"""Figures of merit from BDF data: the `AnalysisSpec` base, labctl's own analyses
(`builtin`), and the `ANALYSES` table of every analysis installed (`labctl.analyses`
entry points)."""

from labctl.analysis.base import AnalysisRefused, AnalysisSpec, ArgSpec, Refusal, fig, load
from labctl.analysis.registry import ANALYSES, AnalysisTable, analysis_catalogue

__all__ = ["ANALYSES", "AnalysisRefused", "AnalysisSpec", "AnalysisTable", "ArgSpec", "Refusal",
           "analysis_catalogue", "fig", "load"]

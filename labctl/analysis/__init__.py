"""Figures of merit from BDF data: pure functions, and the `ANALYSES` registry recipes use."""

from labctl.analysis.registry import ANALYSES, AnalysisSpec, ArgSpec

__all__ = ["ANALYSES", "AnalysisSpec", "ArgSpec"]

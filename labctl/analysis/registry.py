"""The analyses a recipe can name, found through the `labctl.analyses` entry-point group
exactly as drivers are found through `labctl.drivers`: `ANALYSES[name](files, **args)` →
figures of merit. labctl's own (labctl.analysis.builtin) are registered by its pyproject
like any plugin's. An entry point names an `AnalysisSpec`; its name is the one recipes use.

`files` is `{step_id: path}` or a list of BDF paths (data/<step_id>.bdf.csv); args are
quantities with units (strings like "1.0 /cm", "25 degC") or floats already in the unit the
spec states. The result holds `figures` (each with name, value, unit, method and the
ontology IRI of formats.md where one exists) and the same figures by name.

Physically meaningless input (an open-circuit spectrum, a sweep that never sweeps, cycles
without current) is refused: `AnalysisRefused` carries the reason and the analysis's main
figures marked `"status": "failed"` with `value` None, which the executor records before the
step fails. A refusal never yields a number.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache

from labctl.analysis.base import (
    AnalysisRefused,
    AnalysisSpec,
    ArgSpec,
    Files,
    Refusal,
    fig,
    load,
)
from labctl.errors import ConfigError
from labctl.registry import ANALYSES_GROUP, load_plugin, plugin_entry_points


@lru_cache(maxsize=1)
def _load() -> dict[str, AnalysisSpec]:
    table: dict[str, AnalysisSpec] = {}
    origin: dict[str, str] = {}
    for ep in plugin_entry_points(ANALYSES_GROUP):
        where = f"{ANALYSES_GROUP} entry point {ep.name!r} ({ep.value})"
        spec = load_plugin(ep)
        if not isinstance(spec, AnalysisSpec):
            raise ConfigError(f"{where}: {spec!r} is not a labctl AnalysisSpec")
        if ep.name in table and table[ep.name] is not spec:
            raise ConfigError(f"analysis {ep.name!r} is registered twice: by {origin[ep.name]}"
                              f" and by {where}")
        table[ep.name] = spec
        origin[ep.name] = where
    return table


class AnalysisTable(Mapping[str, AnalysisSpec]):
    """name -> spec, loaded from the entry points on first use."""

    def __getitem__(self, name: str) -> AnalysisSpec:
        return _load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(_load())

    def __len__(self) -> int:
        return len(_load())


ANALYSES = AnalysisTable()


def analysis_catalogue() -> list[dict[str, object]]:
    """Every analysis with its arguments (name, unit, default, required, description) and
    main figures, sorted by name: what generated docs list."""
    return [{"name": name, "description": spec.description, "iri": spec.iri,
             "columns": list(spec.columns),
             "args": [{"name": a, "unit": s.unit, "default": s.default,
                       "required": s.required, "description": s.description}
                      for a, s in spec.args.items()],
             "figures": [{"name": n, "unit": u} for n, u in spec.main_figures]}
            for name, spec in sorted(ANALYSES.items())]


__all__ = ["ANALYSES", "AnalysisRefused", "AnalysisSpec", "AnalysisTable", "ArgSpec", "Files",
           "Refusal", "analysis_catalogue", "fig", "load"]

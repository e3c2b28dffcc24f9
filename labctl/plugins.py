"""The public catalogue of what is installed: every action (by capability) with its
arguments, and every analysis with its arguments and figures, whether labctl's own or a
plugin's (they are all found through the same entry points). For generated docs and for
tools that build requests."""

from __future__ import annotations

from labctl.actions import action_catalogue
from labctl.analysis import analysis_catalogue
from labctl.registry import available_drivers, driver_class


def driver_catalogue() -> list[dict[str, object]]:
    """Every installed driver with the capabilities its class declares and its protocol."""
    out: list[dict[str, object]] = []
    for name in available_drivers():
        cls = driver_class(name)
        out.append({"name": name, "capabilities": list(cls.capabilities),
                    "protocol": cls.protocol, "class": f"{cls.__module__}.{cls.__qualname__}"})
    return out


def catalogue() -> dict[str, list[dict[str, object]]]:
    """{"drivers": [...], "actions": [...], "analyses": [...]}: each action as {capability,
    name, summary, moves_material, records_data, args: [{name, kind, key, unit, dimension,
    required, default, choices, minimum, description}]}, each analysis as {name,
    description, iri, columns, args: [{name, unit, default, required, description}],
    figures: [{name, unit}]}."""
    return {"drivers": driver_catalogue(), "actions": action_catalogue(),
            "analyses": analysis_catalogue()}

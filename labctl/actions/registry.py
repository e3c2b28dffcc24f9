"""The action catalogue, found through the `labctl.actions` entry-point group exactly as
drivers are found through `labctl.drivers`: labctl's own actions are registered by its
pyproject like any plugin's. An entry point names an `ActionSpec` subclass or a sequence
of them (`labctl.actions.valve:ACTIONS`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from labctl.actions.base import ActionSpec
from labctl.errors import ConfigError
from labctl.registry import (
    ACTIONS_GROUP,
    driver_class,
    forget_entry_points,
    load_plugin,
    plugin_entry_points,
)

#: any action of any capability
AnySpec = ActionSpec[Any]


def _specs_of(obj: object, where: str) -> list[AnySpec]:
    """The specs an entry point names: a class, an instance, or a sequence of either."""
    items = obj if isinstance(obj, (list, tuple)) else [obj]
    out: list[AnySpec] = []
    for item in items:
        if isinstance(item, type) and issubclass(item, ActionSpec):
            spec: AnySpec = item()
        elif isinstance(item, ActionSpec):
            spec = item
        else:
            raise ConfigError(f"{where}: {item!r} is not a labctl ActionSpec")
        if not spec.capability or not spec.name:
            raise ConfigError(f"{where}: {type(spec).__name__} sets no capability or name")
        out.append(spec)
    return out


@lru_cache(maxsize=1)
def _load() -> dict[str, dict[str, AnySpec]]:
    table: dict[str, dict[str, AnySpec]] = {}
    origin: dict[tuple[str, str], str] = {}
    for ep in plugin_entry_points(ACTIONS_GROUP):
        where = f"{ACTIONS_GROUP} entry point {ep.name!r} ({ep.value})"
        for spec in _specs_of(load_plugin(ep), where):
            key = (spec.capability, spec.name)
            known = table.setdefault(spec.capability, {}).get(spec.name)
            if known is not None and type(known) is not type(spec):
                raise ConfigError(f"action {spec.capability}.{spec.name} is registered twice: "
                                  f"by {origin[key]} and by {where}")
            table[spec.capability][spec.name] = spec
            origin[key] = where
    return table


class ActionTable(Mapping[str, dict[str, AnySpec]]):
    """capability -> action name -> spec, loaded from the entry points on first use."""

    def __getitem__(self, capability: str) -> dict[str, AnySpec]:
        return _load()[capability]

    def __iter__(self) -> Iterator[str]:
        return iter(_load())

    def __len__(self) -> int:
        return len(_load())


ACTIONS = ActionTable()


def reload() -> None:
    """Forget the loaded catalogue (after installing a plugin in the same process)."""
    forget_entry_points()
    _load.cache_clear()


def get_action(capability: object, name: str) -> AnySpec | None:
    """The spec for a capability name, or for a device (any of its `capabilities`)."""
    if isinstance(capability, str):
        return ACTIONS.get(capability, {}).get(name)
    for cap in getattr(capability, "capabilities", ()):
        spec = ACTIONS.get(cap, {}).get(name)
        if spec is not None:
            return spec
    return None


def driver_capabilities(driver: str) -> tuple[str, ...]:
    """Capabilities of a driver, as its class declares them (the capability interfaces it
    inherits): the core keeps no table of vendors."""
    try:
        return tuple(driver_class(driver).capabilities)
    except Exception:  # a driver that is not installed or cannot load offers nothing
        return ()


def catalogue_schema() -> dict[str, dict[str, dict[str, object]]]:
    """The catalogue as plain data (for `labctl schema` and AI servers)."""
    return {cap: {name: {"summary": spec.summary, "moves_material": spec.moves_material,
                         "args": spec.args_schema()}
                  for name, spec in actions.items()}
            for cap, actions in ACTIONS.items()}


def action_catalogue() -> list[dict[str, object]]:
    """Every action of every capability with its arguments (name, kind, unit, required,
    default...), sorted by capability and name: what generated docs list."""
    return [spec.describe_spec() for cap in sorted(ACTIONS)
            for _, spec in sorted(ACTIONS[cap].items())]

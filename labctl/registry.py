"""Driver discovery through the `labctl.drivers` entry-point group (built-ins included),
so third-party drivers plug in without touching labctl."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from labctl.device import Device
from labctl.errors import ConfigError

GROUP = "labctl.drivers"


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_drivers() -> list[str]:
    return sorted(_entry_points())


def driver_class(name: str) -> type[Device]:
    eps = _entry_points()
    if name not in eps:
        raise ConfigError(f"unknown driver {name!r} (installed: {', '.join(sorted(eps))})")
    try:
        cls = eps[name].load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"driver {name!r} cannot be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Device)):
        raise ConfigError(f"driver {name!r} ({eps[name].value}) is not a labctl Device")
    return cls

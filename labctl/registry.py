"""Driver discovery through the `labctl.drivers` entry-point group (built-ins included),
so third-party drivers plug in without touching labctl."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import EntryPoint, EntryPoints, entry_points
from typing import Any

from labctl.device import Device
from labctl.errors import ConfigError

GROUP = "labctl.drivers"


@lru_cache(maxsize=1)
def _installed() -> Any:
    """Every installed entry point: EntryPoints on Python >= 3.12, SelectableGroups on 3.11
    (both select by group)."""
    return entry_points()


def installed_entry_points(group: str) -> EntryPoints:
    """The installed entry points of `group`, from one read per process: each
    `entry_points(group=...)` reads every distribution's metadata again (~7 ms on this
    machine), and one `labctl run` asked 20 times (drivers, simulators, timing models)."""
    found: EntryPoints = _installed().select(group=group)
    return found


def forget_entry_points() -> None:
    """Read the installed entry points again at the next question (after installing a
    plugin in the same process)."""
    _installed.cache_clear()
    _entry_points.cache_clear()


@lru_cache(maxsize=1)
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in installed_entry_points(GROUP)}


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


# ---------------------------------------------------------------- actions and analyses

ACTIONS_GROUP = "labctl.actions"
ANALYSES_GROUP = "labctl.analyses"


def plugin_entry_points(group: str) -> list[EntryPoint]:
    """The entry points of a plugin group, each once (a distribution found twice on the
    path, as an editable install run from its source tree is, lists them twice)."""
    seen: set[tuple[str, str]] = set()
    out: list[EntryPoint] = []
    for ep in installed_entry_points(group):
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            out.append(ep)
    return out


def load_plugin(ep: EntryPoint) -> object:
    """What an entry point names, or a ConfigError that names the entry point and the
    distribution that declared it."""
    try:
        return ep.load()
    except Exception as exc:  # a broken plugin is named, not hidden
        dist = getattr(ep.dist, "name", None) or "unknown distribution"
        raise ConfigError(f"{ep.group} entry point {ep.name!r} = {ep.value!r} ({dist}) "
                          f"cannot be loaded: {type(exc).__name__}: {exc}") from exc

"""A bench config changed for a test: the TOML data edited before it is parsed (a loaded
config is converted once and its device tables are frozen, labctl.config)."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labctl.config import BenchConfig, parse_config


def load_edited(path: Path, edit: Callable[[dict[str, Any]], None]) -> BenchConfig:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    edit(data)
    return parse_config(data, str(path))


def long_watchdog(data: dict[str, Any]) -> None:
    """A long hotplate watchdog: a loaded test machine may pause the keep-alive for a few
    hundred ms."""
    data["devices"]["hotplate"].setdefault("params", {})["watchdog"] = "1500 s"


def every_device_enabled(data: dict[str, Any]) -> None:
    """The bench as it is once every driver has landed (until then some devices are
    declared `enabled = false`)."""
    for d in data["devices"].values():
        d["enabled"] = True


def reply_timeout(timeout: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        for dev in data["devices"].values():
            dev["timeout"] = timeout
    return edit

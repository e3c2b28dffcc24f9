"""The bench config is converted once, when it loads, into typed device specs that flow
down to the drivers: no conversion at each use, and no change after loading that the
running bench would silently ignore."""

from __future__ import annotations

from pathlib import Path

import pint
import pytest
from pydantic import ValidationError

from labctl.config import load_config
from labctl.device import DeviceSpec
from labctl.registry import driver_class
from labctl.transport import SerialSettings

SIM = Path(__file__).resolve().parent.parent / "config" / "sim.toml"


def test_every_enabled_device_has_its_spec_from_the_load_on() -> None:
    cfg = load_config(SIM)
    for name in cfg.enabled_devices():
        spec = cfg.device_spec(name)
        assert isinstance(spec, DeviceSpec) and spec is cfg.device_spec(name), name
        assert isinstance(spec.serial, SerialSettings)
        assert spec.timeout_s > 0


def test_limits_are_parsed_once_into_quantities_and_drivers_read_those() -> None:
    cfg = load_config(SIM)
    spec = cfg.device_spec("pump_ec")
    raw = dict(spec.limits)
    assert raw, "pump_ec declares limits in config/sim.toml"
    for key, value in raw.items():
        q = spec.limit_quantity(key)
        assert isinstance(q, pint.Quantity), key
        assert isinstance(value, str | int | float)  # the record keeps what was written
    dev = driver_class(spec.driver)(spec)
    key = next(iter(raw))
    q = spec.limit_quantity(key)
    assert q is not None
    assert dev.limit(key, str(q.units)) == pytest.approx(float(q.magnitude))


def test_a_loaded_device_table_cannot_be_changed_behind_the_bench() -> None:
    cfg = load_config(SIM)
    with pytest.raises(ValidationError):
        cfg.devices["hotplate"].timeout = "0.1 s"
    with pytest.raises(TypeError):
        cfg.devices["hotplate"].params["watchdog"] = "1 s"  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.devices["pump_ec"].limits["max_flow"] = "1 L/s"  # type: ignore[index]

"""labctl: control middleware for autonomous battery-materials labs.

The public API of the core is re-exported here; see the README for the architecture.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from labctl._version import __version__

# The public API is re-exported lazily (PEP 562): `import labctl` is what every `labctl`
# command and the CLI's `--help` pay first, and importing these eagerly pulled pydantic, pyserial
# and pint (config -> units), 0.75 s of a 1.1 s `labctl --help` measured by
# bench/startup.py. A name is imported from its module on first use and cached here.
_EXPORTS: dict[str, str] = {
    "Balance": "labctl.capabilities",
    "DataPoint": "labctl.capabilities",
    "Dispenser": "labctl.capabilities",
    "Potentiostat": "labctl.capabilities",
    "Pump": "labctl.capabilities",
    "PumpDirection": "labctl.capabilities",
    "Stirrer": "labctl.capabilities",
    "SyringePump": "labctl.capabilities",
    "TemperatureController": "labctl.capabilities",
    "Valve": "labctl.capabilities",
    "Clock": "labctl.clock",
    "RealClock": "labctl.clock",
    "ScaledClock": "labctl.clock",
    "make_clock": "labctl.clock",
    "BenchConfig": "labctl.config",
    "load_config": "labctl.config",
    "Device": "labctl.device",
    "DeviceInfo": "labctl.device",
    "DeviceSpec": "labctl.device",
    "DeviceState": "labctl.device",
    "DeviceStatus": "labctl.device",
    "ConfigError": "labctl.errors",
    "DeviceBusy": "labctl.errors",
    "DeviceError": "labctl.errors",
    "DeviceFault": "labctl.errors",
    "DeviceTimeout": "labctl.errors",
    "LabctlError": "labctl.errors",
    "LimitError": "labctl.errors",
    "NotInitialized": "labctl.errors",
    "ProtocolError": "labctl.errors",
    "Instruments": "labctl.instruments",
    "Link": "labctl.transport",
    "LinkPool": "labctl.transport",
    "SerialSettings": "labctl.transport",
    # labctl.catalogue() loads every action and analysis (numpy, scipy), which `import
    # labctl` and `labctl --help` must not; like the rest it is imported on first use.
    "catalogue": "labctl.plugins",
}

if TYPE_CHECKING:
    from labctl.capabilities import (
        Balance,
        DataPoint,
        Dispenser,
        Potentiostat,
        Pump,
        PumpDirection,
        Stirrer,
        SyringePump,
        TemperatureController,
        Valve,
    )
    from labctl.clock import Clock, RealClock, ScaledClock, make_clock
    from labctl.config import BenchConfig, load_config
    from labctl.device import Device, DeviceInfo, DeviceSpec, DeviceState, DeviceStatus
    from labctl.errors import (
        ConfigError,
        DeviceBusy,
        DeviceError,
        DeviceFault,
        DeviceTimeout,
        LabctlError,
        LimitError,
        NotInitialized,
        ProtocolError,
    )
    from labctl.instruments import Instruments
    from labctl.plugins import catalogue as catalogue  # not in __all__: see _EXPORTS
    from labctl.transport import Link, LinkPool, SerialSettings


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'labctl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *_EXPORTS})


__all__ = [
    "Balance",
    "BenchConfig",
    "Clock",
    "ConfigError",
    "DataPoint",
    "Device",
    "DeviceBusy",
    "DeviceError",
    "DeviceFault",
    "DeviceInfo",
    "DeviceSpec",
    "DeviceState",
    "DeviceStatus",
    "DeviceTimeout",
    "Dispenser",
    "Instruments",
    "LabctlError",
    "LimitError",
    "Link",
    "LinkPool",
    "NotInitialized",
    "Potentiostat",
    "ProtocolError",
    "Pump",
    "PumpDirection",
    "RealClock",
    "ScaledClock",
    "SerialSettings",
    "Stirrer",
    "SyringePump",
    "TemperatureController",
    "Valve",
    "__version__",
    "load_config",
    "make_clock",
]

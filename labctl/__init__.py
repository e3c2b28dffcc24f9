"""labctl: control middleware for autonomous battery-materials labs.

The public API of the core is re-exported here; see the README for the architecture.
"""

from labctl._version import __version__
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
from labctl.transport import Link, LinkPool, SerialSettings


def __getattr__(name: str) -> object:
    """`labctl.catalogue()` (labctl.plugins), imported on first use: it loads every
    action and analysis (numpy, scipy), which `import labctl` and `labctl --help` must not."""
    if name == "catalogue":
        from labctl.plugins import catalogue

        return catalogue
    raise AttributeError(f"module 'labctl' has no attribute {name!r}")


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

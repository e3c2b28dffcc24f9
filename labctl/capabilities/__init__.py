"""Capability interfaces: what the core knows of devices (never a vendor)."""

from labctl.capabilities.balance import Balance
from labctl.capabilities.dispenser import Dispenser
from labctl.capabilities.potentiostat import DataPoint, Potentiostat
from labctl.capabilities.pump import Pump, PumpDirection
from labctl.capabilities.stirrer import Stirrer
from labctl.capabilities.syringe_pump import SyringePump
from labctl.capabilities.temperature_controller import TemperatureController
from labctl.capabilities.valve import Valve

__all__ = [
    "Balance",
    "DataPoint",
    "Dispenser",
    "Potentiostat",
    "Pump",
    "PumpDirection",
    "Stirrer",
    "SyringePump",
    "TemperatureController",
    "Valve",
]

"""The device model every driver implements: identity, status, safe state, life cycle.

A driver is built from its `DeviceSpec` (one `[devices.NAME]` table of the bench config),
a `LinkPool` (so devices on one bus share a link) and the bench `Clock`.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import pint
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from labctl.clock import Clock, RealClock
from labctl.errors import LimitError
from labctl.transport import Link, LinkPool, SerialSettings
from labctl.units import quantity, to


@dataclass(frozen=True)
class DeviceInfo:
    """Who the instrument says it is (from its identify commands)."""

    model: str
    serial: str = ""
    firmware: str = ""
    vendor: str = ""

    def to_dict(self) -> dict[str, str]:
        # by hand, not dataclasses.asdict: asdict deep-copies field by field, and every
        # submit describes every device (0.02 ms -> 0.001 ms each)
        return {"model": self.model, "serial": self.serial, "firmware": self.firmware,
                "vendor": self.vendor}


class DeviceState(StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    FAULT = "fault"
    OFFLINE = "offline"
    UNKNOWN = "unknown"


@dataclass
class DeviceStatus:
    """A snapshot: state, key readings (SI floats named by suffix), and the fault if any."""

    state: DeviceState
    readings: dict[str, Any] = field(default_factory=dict)
    fault: str | None = None
    timestamp: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "readings": dict(self.readings),
            "fault": self.fault,
            "timestamp": self.timestamp,
        }


class DeviceSpec(BaseModel):
    """One configured device, converted once when the bench config loads
    (labctl.config.BenchConfig.device_spec): line settings merged with the driver's,
    the reply timeout in seconds, every limit parsed to a quantity. `params` and `limits`
    keep the config's raw values for the record; `limit_quantity` is the parsed limit."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    name: str
    driver: str
    endpoint: str = ""
    address: int | str | None = None
    serial: SerialSettings | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    limits: dict[str, Any] = Field(default_factory=dict)
    simulator: str | None = None
    bus: str | None = None
    timeout_s: float = 2.0
    _quantities: dict[str, pint.Quantity] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        # parsed here, once: a driver asks for its limits at every command
        self._quantities = {k: quantity(v) for k, v in self.limits.items()}

    def limit_quantity(self, name: str) -> pint.Quantity | None:
        """A configured limit as a quantity (None when not configured)."""
        return self._quantities.get(name)


class Device(ABC):
    """Base of every driver. Subclasses also inherit one or more capability classes."""

    #: capability names this class implements ("syringe_pump", "valve", ...), set by the
    #: capability base classes.
    capabilities: ClassVar[tuple[str, ...]] = ()
    #: the protocol's default line settings; a config's `serial` table overrides them.
    default_serial: ClassVar[SerialSettings] = SerialSettings()
    #: the wire protocol's name, for provenance.
    protocol: ClassVar[str] = ""

    def __init__(
        self, spec: DeviceSpec, *, links: LinkPool | None = None, clock: Clock | None = None
    ):
        self.spec = spec
        self.name = spec.name
        self.clock: Clock = clock or RealClock()
        self._links = links or LinkPool()
        self.info: DeviceInfo | None = None
        self.link: Link | None = None

    @classmethod
    def config_problems(
        cls, name: str, address: Any, params: dict[str, Any], limits: dict[str, Any]
    ) -> list[tuple[str, str]]:
        """What this protocol refuses in a `[devices.NAME]` table (address range, its own
        options), as (key, reason): checked when the config loads, before anything moves.
        Quantities and references every driver shares are checked by labctl itself."""
        return []

    # -- helpers for drivers ---------------------------------------------------------------
    def open_link(self) -> Link:
        """The (possibly shared) link of this device's endpoint."""
        if self.link is None:
            self.link = self._links.get(
                self.spec.endpoint, self.spec.serial or self.default_serial, name=self.name
            )
        return self.link

    def limit(self, name: str, unit: str, default: float | None = None) -> float | None:
        """A configured limit (e.g. `max_flow = "10 mL/min"`) converted to `unit`."""
        q = self.spec.limit_quantity(name)
        if q is None:
            return default
        return to(q, unit)

    def check_range(
        self, parameter: str, value: float, lo: float | None, hi: float | None, unit: str
    ) -> None:
        """Raise LimitError (before anything is sent) if value is outside [lo, hi]."""
        from labctl.units import fmt

        if lo is not None and value < lo:
            raise LimitError(
                f"{parameter} {fmt(value, unit)} is below the minimum {fmt(lo, unit)}",
                device=self.name, parameter=parameter, value=value, limit=lo,
            )
        if hi is not None and value > hi:
            raise LimitError(
                f"{parameter} {fmt(value, unit)} exceeds the maximum {fmt(hi, unit)}",
                device=self.name, parameter=parameter, value=value, limit=hi,
            )

    # -- the contract --------------------------------------------------------------------
    @abstractmethod
    async def connect(self) -> None:
        """Open the link and bring the device to a known, usable state."""

    async def close(self) -> None:
        """Release the link (shared links are closed by their pool)."""

    @abstractmethod
    async def identify(self) -> DeviceInfo:
        """Model, serial number and firmware as the instrument reports them."""

    @abstractmethod
    async def status(self) -> DeviceStatus:
        """Current state and key readings."""

    @abstractmethod
    async def safe_state(self) -> None:
        """Bring the device to its declared safe state (pumps stopped, heaters off...).
        Must be safe to call at any time, repeatedly, even after a fault."""

    def describe(self) -> dict[str, Any]:
        """Provenance: driver, protocol, endpoint, configuration and identity."""
        return {
            "name": self.name,
            "driver": self.spec.driver,
            "protocol": self.protocol,
            "capabilities": list(self.capabilities),
            "endpoint": self.spec.endpoint,
            "address": self.spec.address,
            "params": dict(self.spec.params),
            "limits": dict(self.spec.limits),
            "identity": self.info.to_dict() if self.info else None,
        }


async def safe_state_of(device: Device) -> str | None:
    """Apply one device's safe state within a bound; None when done, else what went wrong
    as `ErrorType: text` (never an empty text: a bound that ran out says so)."""
    bound_s = max(5.0, device.spec.timeout_s * 3)
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
        async with asyncio.timeout(bound_s):
            await device.safe_state()
    except Exception as exc:  # the caller reports it and goes on with the other devices
        text = str(exc) or (f"not confirmed within {bound_s:g} s (no answer)"
                            if isinstance(exc, TimeoutError) else "no details")
        return f"{type(exc).__name__}: {text}"
    return None

"""Modbus instruments driven by a register-map file: a peristaltic pump (`modbus-pump`) and
an Omega CN7500 temperature controller (`omega-cn7500`).

Written from shared/protocols/modbus-devices.md. The register map (a TOML file, format
documented at the top of the maps shipped in drivers/maps/) names every data point, so a pump
with another map is configuration, not code. `spec.params.map` names the file: a path
(absolute, or relative to the working directory), or the name of a map shipped with the
drivers as package data ("peristaltic_pump", "omega_cn7500"; default: the device's own).

Transport: pymodbus' async clients own the line (labctl's Link is not used).
- a device path (`/dev/ttyUSB3`, a pty) is Modbus RTU over serial, with the line settings of
  the config (`serial` table; defaults 9600 8N1 for the pump, 9600 8E1 for the CN7500);
  pymodbus (>= 3.16) opens it with pyserial's `exclusive=True` (an flock), so a second
  process on the line is refused: the driver then raises PortInUse naming the holder;
- `tcp://host:port` and `socket://host:port` are Modbus TCP (MBAP framing); with
  `params.framer = "rtu"` they carry RTU frames instead (a serial device server).
The unit id is `spec.address` (default 1). Devices configured on the same endpoint share one
client and take its lock around each request, so several units can share one RS-485 line.

Errors: Modbus exceptions 01 (illegal function) and 02 (illegal data address) mean the map
does not fit the instrument: ProtocolError. 03 (illegal data value): LimitError (the device
refused the value and changed nothing). 04 (server device failure): DeviceFault with the
code. 06 (busy): DeviceBusy. 0A/0B (gateway: target did not answer) and no answer at all:
DeviceTimeout. Limits (map ranges and the config's `limits`) are checked before any byte is
sent.

Modbus has no standard identity on these instruments: `identify()` reports the map's name as
the model (and the vendor it names), plus `params.serial` when the bench declares one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from labctl.capabilities.pump import Pump, PumpDirection
from labctl.capabilities.temperature_controller import TemperatureController
from labctl.clock import Deadline
from labctl.device import Device, DeviceInfo, DeviceState, DeviceStatus
from labctl.errors import (
    ConfigError,
    DeviceBusy,
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    LimitError,
    ProtocolError,
)
from labctl.transport import SerialSettings, _is_pty, port_holder, port_in_use
from labctl.units import to

log = logging.getLogger("labctl.drivers.modbus")

#: the package holding the register maps shipped with the drivers (package data)
MAPS_PACKAGE = "drivers.maps"
#: where a labctl checkout kept them before: configs naming that path still find them
LEGACY_MAP_DIR = Path("config/modbus")
KINDS = ("coil", "discrete", "holding", "input")
TYPES: dict[str, tuple[int, int, int]] = {  # type: (registers, min raw, max raw)
    "bool": (1, 0, 1),
    "uint16": (1, 0, 0xFFFF),
    "int16": (1, -0x8000, 0x7FFF),
    "uint32": (2, 0, 0xFFFFFFFF),
    "int32": (2, -0x80000000, 0x7FFFFFFF),
}
READ_FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
EXCEPTION_TEXT = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


# ---------------------------------------------------------------------------- register map
@dataclass(frozen=True)
class Point:
    """One named data point of a register map."""

    name: str
    kind: str
    address: int
    type: str = "uint16"
    scale: float = 1.0
    units: str = ""
    access: str = "rw"
    min: float | None = None
    max: float | None = None
    word_order: str = "high_first"
    read_function: int = 0
    bits: dict[str, int] = field(default_factory=dict)
    values: dict[int, str] = field(default_factory=dict)
    description: str = ""

    @property
    def is_bit(self) -> bool:
        return self.kind in ("coil", "discrete")

    @property
    def width(self) -> int:
        """Registers (or bits) the point spans."""
        return TYPES[self.type][0]

    @property
    def fc(self) -> int:
        """Function code that reads the point."""
        return self.read_function or READ_FC[self.kind]

    def code_of(self, meaning: str) -> int:
        """Raw value of an enumeration meaning ("volume" -> 1)."""
        for raw, text in self.values.items():
            if text == meaning:
                return raw
        raise ConfigError(f"point {self.name} has no value meaning {meaning!r} "
                          f"(known: {', '.join(self.values.values())})")

    def to_registers(self, raw: int) -> list[int]:
        """A raw integer as the registers that carry it."""
        if self.width == 1:
            return [raw & 0xFFFF]
        u = raw & 0xFFFFFFFF
        words = [u >> 16, u & 0xFFFF]
        return words if self.word_order == "high_first" else words[::-1]

    def from_registers(self, regs: list[int]) -> int:
        """Registers back to the raw integer (signed types sign-extended)."""
        if self.width == 1:
            raw = regs[0] & 0xFFFF
            return raw - 0x10000 if self.type == "int16" and raw & 0x8000 else raw
        hi, lo = (regs[0], regs[1]) if self.word_order == "high_first" else (regs[1], regs[0])
        raw = ((hi & 0xFFFF) << 16) | (lo & 0xFFFF)
        return raw - 0x100000000 if self.type == "int32" and raw & 0x80000000 else raw

    def engineering(self, raw: int) -> float:
        """raw * scale, without binary noise (79.8, not 79.80000000000001)."""
        return round(raw * self.scale, 9)


@dataclass(frozen=True)
class RegisterMap:
    """A device's register map file, loaded."""

    name: str
    points: dict[str, Point]
    vendor: str = ""
    description: str = ""
    word_order: str = "high_first"
    path: str = ""

    @classmethod
    def load(cls, path: str | Path) -> RegisterMap:
        """Read and check a map file (ConfigError names the file and the key)."""
        where = str(path)
        try:
            text, where = read_map_text(path)
            data = tomllib.loads(text)
        except OSError as exc:
            raise ConfigError(f"cannot read register map: {exc.strerror}", file=where) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}", file=where) from None
        dev = data.get("device") or {}
        order = str(dev.get("word_order", "high_first"))
        if order not in ("high_first", "low_first"):
            raise ConfigError("word_order must be high_first or low_first", file=where,
                              key="device.word_order")
        points: dict[str, Point] = {}
        for name, raw in (data.get("points") or {}).items():
            points[name] = _point(name, raw, order, where)
        if not points:
            raise ConfigError("no [points.*] in register map", file=where)
        return cls(name=str(dev.get("name", Path(where).stem)), points=points,
                   vendor=str(dev.get("vendor", "")),
                   description=str(dev.get("description", "")), word_order=order,
                   path=where)

    def point(self, name: str) -> Point:
        try:
            return self.points[name]
        except KeyError:
            raise ConfigError(f"register map has no point {name!r}", file=self.path,
                              key=f"points.{name}") from None


def _point(name: str, raw: dict[str, Any], order: str, where: str) -> Point:
    key = f"points.{name}"
    try:
        kind = str(raw["kind"])
        address = int(raw["address"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError("kind and an integer address are required", file=where,
                          key=key) from None
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}", file=where, key=key)
    typ = str(raw.get("type", "bool" if kind in ("coil", "discrete") else "uint16"))
    if typ not in TYPES or (typ == "bool") != (kind in ("coil", "discrete")):
        raise ConfigError(f"type {typ!r} does not fit a {kind}", file=where, key=key)
    access = str(raw.get("access", "r" if kind in ("discrete", "input") else "rw"))
    if access not in ("r", "w", "rw") or ("w" in access and kind in ("discrete", "input")):
        raise ConfigError(f"access {access!r} is not possible for a {kind}", file=where,
                          key=key)
    word_order = str(raw.get("word_order", order))
    if word_order not in ("high_first", "low_first"):
        raise ConfigError("word_order must be high_first or low_first", file=where, key=key)
    if not 0 <= address <= 0xFFFF:
        raise ConfigError("address must be 0-65535", file=where, key=key)
    try:
        values = {int(k): str(v) for k, v in (raw.get("values") or {}).items()}
        bits = {str(k): int(v) for k, v in (raw.get("bits") or {}).items()}
    except ValueError:
        raise ConfigError("values keys and bits must be integers", file=where,
                          key=key) from None
    return Point(
        name=name, kind=kind, address=address, type=typ,
        scale=float(raw.get("scale", 1.0)), units=str(raw.get("units", "")),
        access=access,
        min=float(raw["min"]) if "min" in raw else None,
        max=float(raw["max"]) if "max" in raw else None,
        word_order=word_order, read_function=int(raw.get("read_function", 0)),
        bits=bits, values=values, description=str(raw.get("description", "")),
    )


def shipped_maps() -> list[str]:
    """Names of the register maps shipped with the drivers."""
    return sorted(r.name.removesuffix(".toml") for r in resources.files(MAPS_PACKAGE).iterdir()
                  if r.name.endswith(".toml"))


def read_map_text(path: str | Path) -> tuple[str, str]:
    """(text, where) of a map as configured: a file that exists (absolute, or relative to
    the working directory), else a shipped map by name ("omega_cn7500") or by file name
    (a config written for a checkout, "config/modbus/omega_cn7500.toml"). OSError when
    neither exists."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p.read_text(encoding="utf-8"), str(p)
    name = p.name if p.suffix == ".toml" else f"{p.name}.toml"
    shipped = resources.files(MAPS_PACKAGE).joinpath(name)
    if p.parent in (Path(), LEGACY_MAP_DIR) and shipped.is_file():
        return shipped.read_text(encoding="utf-8"), f"{MAPS_PACKAGE}/{name}"
    raise FileNotFoundError(2, f"no such file, nor a shipped map ({', '.join(shipped_maps())})",
                            str(p))


# ---------------------------------------------------------------------------- shared clients
@dataclass
class _Bus:
    """One pymodbus client per endpoint, shared by the units on it through the bench's
    LinkPool (labctl.transport.LinkPool.shared), as Links are."""

    client: AsyncModbusSerialClient | AsyncModbusTcpClient
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0

    def close(self) -> None:
        self.client.close()


def _endpoint_key(endpoint: str) -> str:
    for scheme in ("tcp://", "socket://"):
        if endpoint.startswith(scheme):
            return "tcp://" + endpoint[len(scheme) :].split("?", 1)[0].rstrip("/")
    return endpoint


def _make_client(
    endpoint: str, framer: str, serial: SerialSettings, timeout: float, retries: int,
    name: str,
) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
    key = _endpoint_key(endpoint)
    if key.startswith("tcp://"):
        host, _, port = key[len("tcp://") :].rpartition(":")
        if not port.isdigit():
            raise ConfigError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT")
        return AsyncModbusTcpClient(
            host or "127.0.0.1", port=int(port),
            framer=FramerType.RTU if framer == "rtu" else FramerType.SOCKET,
            timeout=timeout, retries=retries, reconnect_delay=0.1, reconnect_delay_max=2.0,
            name=name,
        )
    if "://" in endpoint or not endpoint:
        raise ConfigError(f"endpoint {endpoint!r}: Modbus needs a serial device path or "
                          "tcp://HOST:PORT")
    parity, bytesize = serial.parity.upper(), serial.bytesize
    if _is_pty(endpoint) and (parity, bytesize) != ("N", 8):
        # a pseudo-terminal cannot carry parity (EINVAL), and on a pty it does not matter
        log.debug("%s is a pty: %s%s%s not settable, using 8N1", endpoint, bytesize, parity,
                  serial.stopbits)
        parity, bytesize = "N", 8
    return AsyncModbusSerialClient(
        endpoint, framer=FramerType.RTU, baudrate=serial.baudrate, bytesize=bytesize,
        parity=parity, stopbits=int(serial.stopbits), timeout=timeout,
        retries=retries, reconnect_delay=0.1, reconnect_delay_max=2.0, name=name,
    )


# ---------------------------------------------------------------------------- base driver
class ModbusDevice(Device):
    """What both map-driven drivers share: the map, the client, typed point access."""

    #: the labctl map used when `params.map` is not given
    default_map: ClassVar[str] = ""

    @classmethod
    def config_problems(cls, name: str, address: Any, params: dict[str, Any],
                        limits: dict[str, Any]) -> list[tuple[str, str]]:
        """The unit id: a Modbus slave address answers at 1..247 (0 is broadcast)."""
        if address in (None, ""):
            return []
        ok = (not isinstance(address, bool) and str(address).strip().isdigit()
              and 1 <= int(str(address).strip()) <= 247)
        if not ok:
            return [(f"devices.{name}.address",
                     f"Modbus unit id must be 1-247, got {address!r}")]
        return []

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        p = self.spec.params
        self.map = RegisterMap.load(p.get("map") or self.default_map)
        address = self.spec.address
        self.unit = int(address) if address not in (None, "") else 1  # type: ignore[arg-type]
        if not 0 <= self.unit <= 255:
            raise ConfigError(f"unit id must be 0-255, got {self.unit}",
                              key=f"devices.{self.name}.address")
        self.framer = str(p.get("framer", "") or "").lower()
        self.retries = int(p.get("retries", 1))
        self._bus: _Bus | None = None
        self._bus_key = f"modbus:{_endpoint_key(self.spec.endpoint)}:{self.framer}"

    # -- life cycle ---------------------------------------------------------------------------
    async def connect(self) -> None:
        """Join (or open) the endpoint's shared client."""
        if self._bus is None:
            self._bus = self._links.shared(self._bus_key, lambda: _Bus(_make_client(
                self.spec.endpoint, self.framer, self.spec.serial or self.default_serial,
                self.spec.timeout_s, self.retries, self.name)))
        async with self._bus.lock:
            await self._ensure_connected("connect")

    async def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            self._links.release(self._bus_key, bus)

    async def identify(self) -> DeviceInfo:
        """Modbus has no standard identity here: the map names the model."""
        self.info = DeviceInfo(model=self.map.name, vendor=self.map.vendor,
                               serial=str(self.spec.params.get("serial", "")), firmware="")
        return self.info

    # -- requests -------------------------------------------------------------------------------
    async def _ensure_connected(self, what: str) -> None:
        assert self._bus is not None
        client = self._bus.client
        if client.connected:
            return
        try:
            ok = await client.connect()
        except (ModbusException, OSError) as exc:
            raise DeviceTimeout(f"{what}: cannot open {self.spec.endpoint}: {exc}",
                                device=self.name) from exc
        if not ok:
            if "://" not in self.spec.endpoint and port_holder(self.spec.endpoint):
                # pymodbus opens serial lines exclusively (pyserial's flock): another
                # process has this one
                raise port_in_use(self.spec.endpoint, self.name)
            raise DeviceTimeout(f"{what}: cannot open {self.spec.endpoint}", device=self.name)

    async def _call(
        self, what: str, request: Callable[[AsyncModbusSerialClient | AsyncModbusTcpClient],
                                           Awaitable[ModbusPDU]],
        *, point: str | None = None, value: object = None,
    ) -> ModbusPDU:
        """One request/answer under the line's lock; Modbus exceptions become labctl's."""
        if self._bus is None:
            raise DeviceError("not connected (call connect() first)", device=self.name)
        bus = self._bus
        async with bus.lock:
            await self._ensure_connected(what)
            try:
                resp = await request(bus.client)
            except ConnectionException as exc:
                raise DeviceTimeout(f"{what}: link {self.spec.endpoint} is down ({exc})",
                                    device=self.name) from exc
            except ModbusIOException as exc:
                raise DeviceTimeout(
                    f"{what}: no answer from unit {self.unit} on {self.spec.endpoint} "
                    f"within {self.spec.timeout_s:g} s", device=self.name) from exc
            except ModbusException as exc:
                raise ProtocolError(f"{what}: {exc}", device=self.name) from exc
            except (OSError, TimeoutError) as exc:
                raise DeviceTimeout(f"{what}: {exc}", device=self.name) from exc
        if resp is None:
            raise ProtocolError(f"{what}: no response object", device=self.name)
        if resp.isError():
            raise self._exception(what, int(getattr(resp, "exception_code", 0)), point, value)
        return resp

    def _exception(self, what: str, code: int, point: str | None, value: object) -> DeviceError:
        text = EXCEPTION_TEXT.get(code, "unknown exception")
        msg = f"{what}: Modbus exception {code:02d} ({text})"
        if code in (1, 2):
            return ProtocolError(msg + f"; does map {self.map.path} fit the instrument?",
                                 device=self.name)
        if code == 3:
            return LimitError(msg + ": the instrument refused the value", device=self.name,
                              parameter=point, value=value, limit=None)
        if code == 6:
            return DeviceBusy(msg, device=self.name)
        if code in (10, 11):
            return DeviceTimeout(msg, device=self.name)
        return DeviceFault(msg, device=self.name, code=code, vendor_text=text)

    # -- points -----------------------------------------------------------------------------------
    async def read_points(self, *names: str) -> dict[str, Any]:
        """Engineering values of points; neighbours of one table go in one request."""
        pts = sorted((self.map.point(n) for n in names), key=lambda p: (p.fc, p.address))
        groups: list[list[Point]] = []
        for pt in pts:
            last = groups[-1][-1] if groups else None
            if (last is not None and last.fc == pt.fc and pt.address == last.address + last.width
                    and pt.address + pt.width - groups[-1][0].address <= 125):
                groups[-1].append(pt)
            else:
                groups.append([pt])
        out: dict[str, Any] = {}
        for group in groups:
            first = group[0]
            count = group[-1].address + group[-1].width - first.address
            fc = first.fc
            label = "read " + ", ".join(p.name for p in group)

            def request(c: Any, fc: int = fc, a: int = first.address, n: int = count) -> Any:
                fn = {1: c.read_coils, 2: c.read_discrete_inputs,
                      3: c.read_holding_registers, 4: c.read_input_registers}[fc]
                return fn(a, count=n, device_id=self.unit)

            resp = await self._call(label, request)
            data: list[Any] = list(resp.bits if fc in (1, 2) else resp.registers)
            if len(data) < count:
                raise ProtocolError(f"{label}: {len(data)} values for {count}",
                                    device=self.name)
            for pt in group:
                off = pt.address - first.address
                if pt.is_bit:
                    out[pt.name] = bool(data[off])
                else:
                    raw = pt.from_registers([int(v) for v in data[off : off + pt.width]])
                    out[pt.name] = pt.engineering(raw) if pt.scale != 1.0 else raw
        return out

    async def read_point(self, name: str) -> Any:
        return (await self.read_points(name))[name]

    def encode(self, name: str, value: float | bool) -> bool | list[int]:
        """Check a value against the point's range and encode it (nothing is sent)."""
        pt = self.map.point(name)
        if "w" not in pt.access:
            raise ConfigError(f"point {name} is read only", file=self.map.path,
                              key=f"points.{name}")
        if pt.is_bit:
            return bool(value)
        v = float(value)
        unit = f" {pt.units}" if pt.units else ""
        for bound, beyond, word in ((pt.min, v < (pt.min or 0), "below the minimum"),
                                    (pt.max, v > (pt.max or 0), "exceeds the maximum")):
            if bound is not None and beyond:
                raise LimitError(f"{name} {v:g}{unit} {'is ' if word[0] == 'b' else ''}"
                                 f"{word} {bound:g}{unit}", device=self.name,
                                 parameter=name, value=v, limit=bound)
        raw = round(v / pt.scale)
        _, lo, hi = TYPES[pt.type]
        if not lo <= raw <= hi:
            raise LimitError(f"{name} {v:g} does not fit a {pt.type} (raw {raw})",
                             device=self.name, parameter=name, value=v,
                             limit=(hi if raw > hi else lo) * pt.scale)
        return pt.to_registers(raw)

    async def write_point(self, name: str, value: float | bool) -> None:
        """Write one point: 05 for a coil, 06 for one register, 16 for two."""
        encoded = self.encode(name, value)
        pt = self.map.point(name)

        def request(c: Any) -> Any:
            if pt.is_bit:
                return c.write_coil(pt.address, bool(encoded), device_id=self.unit)
            assert isinstance(encoded, list)
            if len(encoded) == 1:
                return c.write_register(pt.address, encoded[0], device_id=self.unit)
            return c.write_registers(pt.address, encoded, device_id=self.unit)

        shown = f"{value:g}" if isinstance(value, float) else str(value)
        await self._call(f"write {name} = {shown}", request, point=name, value=value)

    def _bits(self, name: str, word: int) -> dict[str, bool]:
        return {b: bool(word >> n & 1) for b, n in self.map.point(name).bits.items()}

    def _offline(self, exc: DeviceError) -> DeviceStatus:
        return DeviceStatus(DeviceState.OFFLINE, fault=str(exc))


# ---------------------------------------------------------------------------- the pump
class ModbusPump(ModbusDevice, Pump):
    """Peristaltic pump on a Modbus register map.

    Parameters: `map`, `tubing_ul_per_rev` (written to the pump's calibration register at
    connect; without it the pump's own calibration is read and used), `serial`, `framer`,
    `retries`. Limits: `max_flow` (and the map's speed range, 0-600 rpm on the labctl map).
    Flow and speed are related by the tubing calibration: rpm = flow / (µL per rev).
    """

    default_map: ClassVar[str] = "peristaltic_pump"
    default_serial: ClassVar[SerialSettings] = SerialSettings(9600, 8, "N", 1)
    protocol: ClassVar[str] = "Modbus (peristaltic pump register map)"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        cal = self.spec.params.get("tubing_ul_per_rev")
        self._cal_configured = cal is not None
        self.tubing_ul_per_rev: float = (
            (float(cal) if isinstance(cal, (int, float)) else to(cal, "uL")) if cal is not None
            else 0.0
        )
        self.max_flow_limit_l_s = self.limit("max_flow", "L/s")
        self.max_rpm = self.map.point("speed_setpoint").max or 600.0

    async def connect(self) -> None:
        await super().connect()
        if self._cal_configured:
            await self.write_point("tubing_calibration", self.tubing_ul_per_rev)
        else:
            self.tubing_ul_per_rev = float(await self.read_point("tubing_calibration"))

    @property
    def max_flow_l_s(self) -> float:
        by_speed = self.max_rpm / 60 * self.tubing_ul_per_rev * 1e-6
        if self.max_flow_limit_l_s is None:
            return by_speed
        return min(by_speed, self.max_flow_limit_l_s)

    def _rpm(self, flow_l_s: float) -> float:
        """Check a flow against the limits and turn it into a speed (nothing is sent)."""
        self.check_range("flow", flow_l_s, 0.0, self.max_flow_limit_l_s, "L/s")
        if self.tubing_ul_per_rev <= 0:
            raise DeviceError("tubing calibration unknown (connect first)", device=self.name)
        rpm = flow_l_s * 60 / (self.tubing_ul_per_rev * 1e-6)
        self.check_range("speed", rpm, 0.0, self.max_rpm, "rpm")
        return rpm

    def _direction_code(self, direction: PumpDirection) -> bool:
        pt = self.map.point("direction")
        return bool(pt.code_of(str(PumpDirection(direction)))) if pt.values else (
            direction == PumpDirection.WITHDRAW)

    async def set_flow(self, flow_l_s: float) -> None:
        rpm = self._rpm(flow_l_s)
        await self.write_point("speed_setpoint", rpm)

    async def set_direction(self, direction: PumpDirection) -> None:
        await self.write_point("direction", self._direction_code(direction))

    async def start(self, direction: PumpDirection = PumpDirection.INFUSE) -> None:
        """Run continuously at the set flow until `stop`."""
        await self.set_direction(direction)
        await self.write_point("mode", self.map.point("mode").code_of("continuous"))
        await self.write_point("run", True)

    async def stop(self) -> None:
        await self.write_point("run", False)
        if "prime" in self.map.points:
            await self.write_point("prime", False)

    async def prime(self, duration_s: float | None = None) -> None:
        """Run at maximum speed (prime coil); for `duration_s` if given, else until stop."""
        await self.write_point("prime", True)
        if duration_s is None:
            return
        try:
            await self.clock.sleep(duration_s)
        finally:
            await asyncio.shield(self.write_point("prime", False))

    async def pump_volume(
        self, volume_l: float, flow_l_s: float,
        direction: PumpDirection = PumpDirection.INFUSE,
    ) -> float:
        """Volume-dispense mode: the pump stops itself at the target; returns its count."""
        vol_pt = self.map.point("volume_target")
        target_ul = volume_l * 1e6
        hi = (vol_pt.max if vol_pt.max is not None else TYPES[vol_pt.type][2]) * 1e-6
        self.check_range("volume", volume_l, 1e-6, hi, "L")
        if flow_l_s <= 0:
            raise LimitError(f"flow must be positive, got {flow_l_s:g} L/s", device=self.name,
                             parameter="flow", value=flow_l_s, limit=0.0)
        rpm = self._rpm(flow_l_s)
        self.encode("volume_target", target_ul)  # range checked before anything is sent
        await self.write_point("speed_setpoint", rpm)
        await self.set_direction(direction)
        await self.write_point("volume_target", target_ul)
        await self.write_point("mode", self.map.point("mode").code_of("volume"))
        await self.write_point("run", True)
        expected_s = volume_l / flow_l_s
        # bench-clock time, with a wall floor: at high time scales the polls' own serial
        # traffic outlasts the scaled budget
        deadline = Deadline(self.clock, expected_s * 1.5 + 30.0, 5 * self.spec.timeout_s)
        poll_s = max(0.2, 0.02 * self.clock.time_scale, min(expected_s / 20, 2.0))
        try:
            while True:
                await self.clock.sleep(poll_s)
                r = await self.read_points("status", "volume_dispensed", "fault_code")
                bits = self._bits("status", int(r["status"]))
                volume = float(r["volume_dispensed"]) * to("1 " + vol_pt.units, "L")
                if bits.get("fault") or r["fault_code"]:
                    raise self._fault_error(int(r["fault_code"]), volume)
                if not bits.get("running"):
                    if bits.get("target_reached"):
                        return volume
                    raise DeviceFault(
                        f"pump stopped after {volume * 1e3:.4g} mL of {volume_l * 1e3:.4g} mL "
                        "without reaching the target", device=self.name)
                if deadline.expired():
                    raise DeviceTimeout(
                        f"volume {volume_l * 1e3:.4g} mL not reached in "
                        f"{expected_s * 1.5 + 30:.0f} s ({volume * 1e3:.4g} mL)",
                        device=self.name)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.stop())
            raise

    def _fault_error(self, code: int, volume_l: float) -> DeviceFault:
        text = self.map.point("fault_code").values.get(code, f"fault {code}")
        return DeviceFault(f"pump stopped on a fault after {volume_l * 1e3:.4g} mL",
                           device=self.name, code=code, vendor_text=text)

    async def pumped_volume_l(self) -> float:
        """Volume since the last run start; negative when the pump ran in reverse."""
        r = await self.read_points("volume_dispensed", "direction")
        volume = float(r["volume_dispensed"]) * to(
            "1 " + self.map.point("volume_dispensed").units, "L")
        withdraw = r["direction"] == self._direction_code(PumpDirection.WITHDRAW)
        return -volume if withdraw else volume

    async def status_bits(self) -> dict[str, bool]:
        return self._bits("status", int(await self.read_point("status")))

    async def fault(self) -> tuple[int, str] | None:
        """The pump's fault code and its meaning, or None."""
        code = int(await self.read_point("fault_code"))
        if code == 0:
            return None
        return code, self.map.point("fault_code").values.get(code, f"fault {code}")

    async def status(self) -> DeviceStatus:
        try:
            r = await self.read_points("speed_actual", "status", "volume_dispensed", "fault_code")
        except DeviceTimeout as exc:
            return self._offline(exc)
        bits = self._bits("status", int(r["status"]))
        code = int(r["fault_code"])
        rpm = float(r["speed_actual"])
        readings = {
            "speed_rpm": rpm,
            "flow_l_s": rpm / 60 * self.tubing_ul_per_rev * 1e-6,
            "volume_l": float(r["volume_dispensed"]) * to(
                "1 " + self.map.point("volume_dispensed").units, "L"),
            **bits,
        }
        if bits.get("fault") or code:
            text = self.map.point("fault_code").values.get(code, f"fault {code}")
            return DeviceStatus(DeviceState.FAULT, readings, fault=f"{code}: {text}")
        state = DeviceState.BUSY if bits.get("running") else DeviceState.IDLE
        return DeviceStatus(state, readings)


# ---------------------------------------------------------------------------- the controller
class ModbusTemperatureController(ModbusDevice, TemperatureController):
    """PID temperature controller on a Modbus register map (Omega CN7500 by default).

    Parameters: `map`, `serial`, `framer`, `retries`. Limits: `max_temperature` (and the
    map's setpoint range). `set_temperature(t)` writes the setpoint and sets the run bit;
    `set_temperature(None)` (the safe state) clears the run bit.
    """

    default_map: ClassVar[str] = "omega_cn7500"
    default_serial: ClassVar[SerialSettings] = SerialSettings(9600, 8, "E", 1)
    protocol: ClassVar[str] = "Modbus (temperature controller register map)"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_temperature_c = self.limit("max_temperature", "degC")

    async def connect(self) -> None:
        await super().connect()
        await self.read_point("process_value")  # the instrument answers

    async def set_temperature(self, temperature_c: float | None) -> None:
        if temperature_c is None:
            await self.write_point("run", False)
            return
        self.check_range("temperature", temperature_c, None, self.max_temperature_c, "degC")
        self.encode("setpoint", temperature_c)
        await self.write_point("setpoint", temperature_c)
        await self.write_point("run", True)

    async def temperature_c(self) -> float:
        return float(await self.read_point("process_value"))

    async def setpoint_c(self) -> float:
        return float(await self.read_point("setpoint"))

    async def is_running(self) -> bool:
        return bool(await self.read_point("run"))

    async def set_control_mode(self, mode: str) -> None:
        """Control mode by its meaning in the map (pid, on_off, auto_tune, program)."""
        await self.write_point("control_mode", self.map.point("control_mode").code_of(mode))

    async def status(self) -> DeviceStatus:
        try:
            r = await self.read_points("process_value", "setpoint")
            running = await self.is_running()
        except DeviceTimeout as exc:
            return self._offline(exc)
        readings = {"temperature_c": float(r["process_value"]),
                    "setpoint_c": float(r["setpoint"]), "running": running}
        return DeviceStatus(DeviceState.BUSY if running else DeviceState.IDLE, readings)

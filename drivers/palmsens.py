"""PalmSens EmStat (Pico, EmStat4, Nexus) driver: the Potentiostat capability over
MethodSCRIPT (shared/protocols/palmsens-methodscript.md).

Each technique becomes a generated script (`e`, statements, empty line). A reader task owns
the link while the script runs, decodes every data package and hands DataPoints to the
`measure()` iterator through a queue, so a slow consumer never loses points and `abort()`
(`Z`) works whether or not the consumer is reading. Every script ends with
`on_finished: cell_off`, so an abort leaves the cell disconnected.

Config params: `cell_constant` ("1.0 /cm"), `electrode_area` ("0.196 cm^2"),
`reference_electrode`, `vessel` (where the cell sits; provenance), `channels` (a multiplexed
instrument: channel -> vessel of its cell; `measure(..., channel=n)` sends
`set_pgstat_chan n` so the script measures that cell). Limits: `max_potential`,
`max_current` (checked together with the identified instrument's ranges before any script
is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from pydantic import TypeAdapter

from labctl.capabilities.potentiostat import DataPoint, Potentiostat
from labctl.device import DeviceInfo, DeviceState, DeviceStatus
from labctl.errors import (
    DeviceBusy,
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    LimitError,
    ProtocolError,
)
from labctl.techniques import CA, CP, CV, GCPL, LSV, OCV, PEIS, AnyTechnique, Technique
from labctl.transport import Link, SerialSettings

log = logging.getLogger("labctl.drivers.palmsens")

# -- package decoding -------------------------------------------------------------------------

OFFSET = 0x8000000
SI_FACTORS: dict[str, float] = {
    "a": 1e-18, "f": 1e-15, "p": 1e-12, "n": 1e-9, "u": 1e-6, "m": 1e-3, " ": 1.0,
    "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18, "i": 1.0,
}
NAN_TEXT = "     nan"


class Value(NamedTuple):
    """One decoded package variable: type, value (SI), status bits, range index (or -1)."""

    vtype: str
    value: float
    status: int = 0
    range_index: int = -1


def decode_package(line: str) -> list[Value]:
    """`P` + variables separated by `;` → values. Raises ProtocolError on malformed input."""
    if line[:1] != "P":
        raise ProtocolError(f"not a data package: {line!r}")
    out: list[Value] = []
    append = out.append
    factors = SI_FACTORS
    try:
        for var in line[1:].rstrip("\r\n").split(";"):
            body = var[2:10]
            if body == NAN_TEXT:
                value = math.nan
            else:
                if len(body) != 8:
                    raise ValueError(var)
                value = (int(body[:7], 16) - OFFSET) * factors[body[7]]
            if len(var) == 10:
                append(Value(var[:2], value))
                continue
            status, rng = 0, -1
            if var[10] != ",":
                raise ValueError(var)
            for meta in var[11:].split(","):
                if meta[:1] == "1":
                    status = int(meta[1:], 16)
                elif meta[:1] == "2":
                    rng = int(meta[1:], 16)
            append(Value(var[:2], value, status, rng))
    except (ValueError, KeyError, IndexError) as exc:
        raise ProtocolError(f"malformed data package {line!r}: {exc}") from None
    return out


STATUS_TIMING, STATUS_OVERLOAD, STATUS_UNDERLOAD, STATUS_OVERLOAD_WARNING = 0x1, 0x2, 0x4, 0x8
_FIELDS = {
    "ab": "potential_v", "ba": "current_a", "da": "applied_v", "db": "applied_a",
    "dc": "frequency_hz", "cc": "z_real_ohm", "cd": "z_imag_ohm", "cb": "z_abs_ohm",
    "ca": "phase_deg", "eb": "time_s",
}


def to_point(values: list[Value], **context: Any) -> DataPoint:
    """A DataPoint from decoded values; status bits become overload/underload flags and the
    range indices go to `extra`."""
    kwargs: dict[str, Any] = {"time_s": math.nan, **context}
    extra: dict[str, Any] = {}
    status = 0
    fields = _FIELDS
    for vtype, value, st, rng in values:
        name = fields.get(vtype)
        if name is not None:
            kwargs[name] = value
        else:
            extra[vtype] = value
        status |= st
        if rng >= 0:
            extra[vtype + "_range"] = rng
    if status:
        extra["status"] = status
        kwargs["overload"] = bool(status & STATUS_OVERLOAD)
        kwargs["underload"] = bool(status & STATUS_UNDERLOAD)
    point = DataPoint(**kwargs, extra=extra)
    zr, zi = point.z_real_ohm, point.z_imag_ohm
    if zr is not None and zi is not None:
        if point.z_abs_ohm is None:
            point.z_abs_ohm = math.hypot(zr, zi)
        if point.phase_deg is None:
            point.phase_deg = math.degrees(math.atan2(zi, zr))
    return point


# -- script literals ---------------------------------------------------------------------------

_PREFIX_BY_EXP = {-18: "a", -15: "f", -12: "p", -9: "n", -6: "u", -3: "m", 0: "",
                  3: "k", 6: "M", 9: "G", 12: "T", 15: "P", 18: "E"}


def si(value: float) -> str:
    """A MethodSCRIPT literal with an SI prefix (0.0001 → '100u'); no exponent notation."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value}")
    exp = int(math.floor(math.log10(abs(value)) / 3) * 3)
    exp = max(-18, min(18, exp))
    mant = value / 10.0**exp
    text = f"{mant:.9f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text + _PREFIX_BY_EXP[exp]


# -- instrument ranges (labctl's reading of the vendors' data sheets) ------------------------


@dataclass(frozen=True)
class InstrumentRanges:
    model: str
    e_min_v: float
    e_max_v: float
    i_max_a: float
    i_min_range_a: float
    f_min_hz: float
    f_max_hz: float
    galvanostatic_mode: int


INSTRUMENTS: dict[str, InstrumentRanges] = {
    "espico": InstrumentRanges("EmStat Pico", -1.7, 2.0, 5e-3, 1e-7, 0.016, 2e5, 2),
    "es4_lr": InstrumentRanges("EmStat4 LR", -3.0, 3.0, 10e-3, 1e-9, 1e-5, 2e5, 6),
    "es4_hr": InstrumentRanges("EmStat4 HR", -6.0, 6.0, 100e-3, 1e-9, 1e-5, 2e5, 6),
    "nexus": InstrumentRanges("Nexus", -5.0, 5.0, 1.0, 1e-9, 1e-5, 1e6, 6),
}
MAX_AMPLITUDE_V = 1.0

# -- errors --------------------------------------------------------------------------------------

SYNTAX_CODES = {"0003", "4001", "4002", "4004", "400B"}
ERROR_TEXT = {
    "0003": "unknown command", "0006": "invalid in this mode", "4001": "unknown script command",
    "4002": "invalid argument", "4004": "unexpected character",
    "400B": "nested measurement loop not allowed", "0032": "critical overload (cell off)",
}
_ERROR = re.compile(r"!([0-9A-Fa-f]{4})(.*)")
#: the answer to a `Z` sent earlier (`Z` while running, `Z!0006` when idle)
_STALE_ABORT = re.compile(rb"Z(![0-9A-Fa-f]{4})?\r?\n$")


class MethodScriptError(ProtocolError):
    """The instrument rejected the script (syntax, unknown statement, bad argument)."""

    def __init__(self, message: str, *, device: str | None = None, code: str = "",
                 vendor_text: str = ""):
        self.code = code
        self.vendor_text = vendor_text
        super().__init__(message, device=device)


def error_for(code: str, text: str, device: str | None) -> Exception:
    """Map a MethodSCRIPT `!xxxx` code onto labctl's exceptions."""
    code = code.upper()
    meaning = ERROR_TEXT.get(code, "instrument error")
    vendor = f"!{code}{text}"
    if code in SYNTAX_CODES:
        return MethodScriptError(f"script rejected: {meaning} ({vendor})", device=device,
                                 code=code, vendor_text=vendor)
    if code == "0006":
        return DeviceBusy(f"{meaning} ({vendor})", device=device)
    return DeviceFault(meaning, device=device, code=code, vendor_text=vendor)


# -- script generation ---------------------------------------------------------------------------

_END = object()


@dataclass
class Plan:
    """A generated script and what the reader needs to label its points."""

    lines: list[str]
    gap_s: float  # longest expected time between two output lines (device seconds)
    kind: str
    phases: list[dict[str, Any]] = field(default_factory=list)


def _body(*names: str) -> list[str]:
    return ["  timer_get t", "  pck_start", *[f"  pck_add {n}" for n in names], "  pck_end"]


class EmStat(Potentiostat):
    """EmStat Pico / EmStat4 / Nexus over MethodSCRIPT."""

    default_serial: ClassVar[SerialSettings] = SerialSettings(baudrate=230400)
    protocol: ClassVar[str] = "PalmSens MethodSCRIPT"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.model_id: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._abort_sent = False
        #: set by safe_state(): a script still waiting for the link is never started
        self._safe_requested = False
        self.messages: list[str] = []
        self.points_received = 0
        self.last_point: DataPoint | None = None

    # -- configuration ----------------------------------------------------------------------
    def _param(self, name: str, unit: str, default: float) -> float:
        from labctl.units import to

        raw = self.spec.params.get(name)
        return default if raw is None else to(raw, unit)

    @property
    def cell_constant_m(self) -> float:
        """K_cell in 1/m (config `cell_constant`, e.g. "1.0 /cm" = 100 /m)."""
        return self._param("cell_constant", "1/m", 100.0)

    @property
    def electrode_area_m2(self) -> float:
        return self._param("electrode_area", "m^2", 0.196e-4)

    @property
    def reference_electrode(self) -> str:
        return str(self.spec.params.get("reference_electrode", ""))

    @property
    def ranges(self) -> InstrumentRanges:
        """The identified instrument's ranges (the most restrictive until identified)."""
        return INSTRUMENTS.get(self.model_id or "", INSTRUMENTS["espico"])

    def _timeout(self) -> float:
        return self.spec.timeout_s

    # -- life cycle ---------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the link and stop whatever a previous session left running."""
        await self.open_link().open()
        await self._abort_idle()

    async def close(self) -> None:
        if self._reader is not None and not self._reader.done():
            with contextlib.suppress(Exception):
                await self.abort()

    async def identify(self) -> DeviceInfo:
        if self.running:
            if self.info is not None:
                return self.info
            raise DeviceBusy("a script is running", device=self.name)
        link = self.open_link()
        t = self._timeout()
        first_two = (await link.transact(b"t\n", b"*\n", t)).decode("latin-1")
        lines = [ln for ln in first_two.split("\n") if ln]
        head = next((ln for ln in lines if ln.startswith("t")), None)
        if head is None:
            raise ProtocolError(f"unexpected reply to t: {first_two!r}", device=self.name)
        firmware = head[1:]
        ident = firmware.split("#", 1)[0]
        self.model_id = next((k for k in INSTRUMENTS if ident.startswith(k)), None)
        serial = (await link.transact(b"i\n", b"\n", t)).decode("latin-1").strip()
        version = (await link.transact(b"v\n", b"\n", t)).decode("latin-1").strip()
        if not serial.startswith("i") or not version.startswith("v"):
            raise ProtocolError(f"unexpected identity replies {serial!r} {version!r}",
                                device=self.name)
        model = self.ranges.model if self.model_id else ident
        self.info = DeviceInfo(model=model, serial=serial[1:],
                               firmware=f"{firmware}; MethodSCRIPT {version[1:]}",
                               vendor="PalmSens")
        return self.info

    @property
    def running(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def status(self) -> DeviceStatus:
        readings: dict[str, Any] = {"points_received": self.points_received}
        if self.last_point is not None:
            p = self.last_point
            readings.update({"time_s": p.time_s, "potential_v": p.potential_v or p.applied_v,
                             "current_a": p.current_a})
        if self.running:
            return DeviceStatus(DeviceState.BUSY, readings)
        try:
            reply = await self.open_link().transact(b"v\n", b"\n", self._timeout())
        except DeviceTimeout as exc:
            return DeviceStatus(DeviceState.OFFLINE, readings, fault=str(exc))
        if not reply.startswith(b"v"):
            return DeviceStatus(DeviceState.UNKNOWN, readings, fault=f"reply {reply!r}")
        return DeviceStatus(DeviceState.IDLE, readings)

    # -- abort / safe state -------------------------------------------------------------------
    async def abort(self, *, wait_s: float | None = None) -> None:
        """`Z`: stop the running script (its on_finished block switches the cell off);
        waits `wait_s` (default: the reply timeout + 5 s) for the end of its output."""
        reader = self._reader
        if reader is not None and not reader.done():
            self._abort_sent = True
            await self.open_link().write(b"Z\n")
            try:
                await asyncio.wait_for(asyncio.shield(reader),
                                       self._timeout() + 5.0 if wait_s is None else wait_s)
            except TimeoutError:
                raise DeviceTimeout("no end of script after Z", device=self.name) from None
            except Exception:  # the reader's own error is the measurement's business
                pass
            return
        await self._abort_idle()

    async def _abort_idle(self) -> None:
        """Send `Z` with nothing of ours running; drain a script left from before."""
        link = self.open_link()
        t = self._timeout()
        async with link.lock:
            link.reset_input()
            await link.write(b"Z\n")
            while True:
                line = await link.read_until(b"\n", t)
                if line.startswith(b"Z!"):
                    return
                if line == b"Z\n":
                    break
            while await link.read_until(b"\n", t + 5.0) != b"\n":
                pass

    async def safe_state(self) -> None:
        """Stop whatever runs (ours, or a script left from before), wait until the device
        is idle, then switch the cell off with a one-line script. Replies still in flight
        from earlier `Z`s (a cancelled measurement sends one too) are skipped, never taken
        for the answer to `cell_off`; a lost or garbled reply is tried again (stopping and
        switching off are harmless to repeat)."""
        self._safe_requested = True
        link = self.open_link()
        t = self._timeout()
        reader = self._reader
        if reader is not None and not reader.done():
            try:
                await self.abort(wait_s=t + 1.0)
            except DeviceTimeout:
                # the end of the script was lost: stop reading it (that frees the link),
                # the `Z`/`v` exchange below then finds the device idle or stops it
                log.warning("%s: no end of script after Z; stopping it again", self.name)
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader
        last: DeviceError | None = None
        for _ in range(3):
            try:
                async with link.lock:
                    await self._quiesce(link, t)
                    await self._cell_off(link, t)
                return
            except (DeviceTimeout, ProtocolError) as exc:
                if isinstance(exc, MethodScriptError):
                    raise  # the device answered cell_off with an error: say so
                last = exc
        assert last is not None
        raise last

    async def _cell_off(self, link: Link, t: float) -> None:
        """`cell_off` as a one-line script (with the link's lock held)."""
        await link.write(b"e\ncell_off\n\n")
        while True:
            head = await link.read_until(b"\n", t)
            if head == b"e\n":
                break
            if not _STALE_ABORT.match(head):
                raise ProtocolError(f"cell_off script answered {head!r}", device=self.name)
        line = await link.read_until(b"\n", t)
        error: Exception | None = None
        while line != b"\n":
            m = _ERROR.search(line.decode("latin-1"))
            if m and error is None and not _STALE_ABORT.match(line):
                error = error_for(m.group(1), m.group(2).strip(), self.name)
            line = await link.read_until(b"\n", t)
        if error is not None:
            raise error

    async def _quiesce(self, link: Link, t: float) -> None:
        """`Z` then `v` until `v` is answered as by an idle device: everything before that
        answer (stale abort replies, the rest of an aborted script) is read and dropped.
        A `v` whose answer is lost or garbled is asked again. Called with the link's lock
        held."""
        link.reset_input()
        await link.write(b"Z\nv\n")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t + 2.0
        while True:
            try:
                line = await link.read_until(b"\n", min(t, max(0.05, deadline - loop.time())))
            except DeviceTimeout:
                if loop.time() > deadline:
                    raise
                await link.write(b"v\n")
                continue
            if line.startswith(b"v!"):  # still running its on_finished block: ask again
                if loop.time() > deadline:
                    raise DeviceTimeout("the script does not end after Z", device=self.name)
                await asyncio.sleep(0.01)
                await link.write(b"v\n")
            elif line.startswith(b"v"):
                return

    # -- limits -------------------------------------------------------------------------------
    def _check_potential(self, name: str, value: float | None) -> None:
        if value is None:
            return
        r = self.ranges
        self.check_range(name, value, r.e_min_v, r.e_max_v, "V")
        cfg = self.limit("max_potential", "V")
        if cfg is not None:
            self.check_range(name, value, -cfg, cfg, "V")

    def _check_current(self, name: str, value: float | None) -> None:
        if value is None:
            return
        r = self.ranges
        cfg = self.limit("max_current", "A")
        hi = r.i_max_a if cfg is None else min(r.i_max_a, cfg)
        self.check_range(name, abs(value), None, hi, "A")

    def check_limits(self, tech: Technique, ocp_v: float = 0.0) -> None:
        """LimitError for anything outside the instrument's ranges or the configured limits.
        Potentials `vs` "ocp" are checked after adding the measured OCP."""
        off = ocp_v if getattr(tech, "vs", "ref") == "ocp" else 0.0
        if isinstance(tech, CA):
            self._check_potential("potential_v", tech.potential_v + off)
            self._check_current("current_range_a", tech.current_range_a)
        elif isinstance(tech, CP):
            self._check_current("current_a", tech.current_a)
            self._check_potential("potential_min_v", tech.potential_min_v)
            self._check_potential("potential_max_v", tech.potential_max_v)
        elif isinstance(tech, LSV):
            for n in ("E_begin_v", "E_end_v"):
                self._check_potential(n, getattr(tech, n) + off)
            self._check_current("current_range_a", tech.current_range_a)
        elif isinstance(tech, CV):
            for n in ("E_begin_v", "E_vertex1_v", "E_vertex2_v"):
                self._check_potential(n, getattr(tech, n) + off)
            self._check_current("current_range_a", tech.current_range_a)
        elif isinstance(tech, PEIS):
            self._check_potential("E_dc_v", tech.E_dc_v + off)
            r = self.ranges
            for n in ("f_start_hz", "f_end_hz"):
                self.check_range(n, getattr(tech, n), r.f_min_hz, r.f_max_hz, "Hz")
            self.check_range("amplitude_v", tech.amplitude_v, None, MAX_AMPLITUDE_V, "V")
        elif isinstance(tech, GCPL):
            for i, ph in enumerate(tech.phases):
                self._check_current(f"phases[{i}].current_a", ph.current_a)
                self._check_potential(f"phases[{i}].upper_cutoff_v", ph.upper_cutoff_v)
                self._check_potential(f"phases[{i}].lower_cutoff_v", ph.lower_cutoff_v)

    # -- scripts ------------------------------------------------------------------------------
    def _current_ranges(self, fixed: float | None) -> list[str]:
        r = self.ranges
        if fixed is not None:
            return [f"set_range ba {si(fixed)}"]
        cfg = self.limit("max_current", "A")
        top = r.i_max_a if cfg is None else min(r.i_max_a, cfg)
        return [f"set_range ba {si(top)}",
                f"set_autoranging ba {si(r.i_min_range_a)} {si(top)}"]

    def build_script(self, tech: Technique, ocp_v: float = 0.0) -> Plan:
        """The MethodSCRIPT lines for a technique (absolute potentials vs the reference)."""
        off = ocp_v if getattr(tech, "vs", "ref") == "ocp" else 0.0
        head = ["var t", "var p", "var c", "set_pgstat_chan 0"]
        tail = ["endloop", "on_finished:", "cell_off"]
        if isinstance(tech, OCV):
            return Plan([*head, "set_pgstat_mode 2", "cell_off", "timer_start",
                         f"meas_loop_ocp p {si(tech.sample_interval_s)} {si(tech.duration_s)}",
                         *_body("t", "p"), *tail], tech.sample_interval_s, "ocv")
        if isinstance(tech, CA):
            e = tech.potential_v + off
            return Plan([*head, "set_pgstat_mode 2",
                         f"set_max_bandwidth {si(min(2e5, 4.0 / tech.sample_interval_s))}",
                         f"set_range_minmax da {si(e)} {si(e)}",
                         *self._current_ranges(tech.current_range_a), f"set_e {si(e)}",
                         "cell_on", "timer_start",
                         f"meas_loop_ca p c {si(e)} {si(tech.sample_interval_s)} "
                         f"{si(tech.duration_s)}", *_body("t", "p", "c"), *tail],
                        tech.sample_interval_s, "ca")
        if isinstance(tech, CP):
            lim = []
            if tech.potential_max_v is not None:
                lim += [f"  if p >= {si(tech.potential_max_v)}", "    breakloop", "  endif"]
            if tech.potential_min_v is not None:
                lim += [f"  if p <= {si(tech.potential_min_v)}", "    breakloop", "  endif"]
            return Plan([*head, f"set_pgstat_mode {self.ranges.galvanostatic_mode}",
                         f"set_range ba {si(abs(tech.current_a) or self.ranges.i_min_range_a)}",
                         f"set_i {si(tech.current_a)}", "cell_on", "timer_start",
                         f"meas_loop_cp p c {si(tech.current_a)} {si(tech.sample_interval_s)} "
                         f"{si(tech.duration_s)}", *_body("t", "p", "c"), *lim, *tail],
                        tech.sample_interval_s, "cp")
        if isinstance(tech, (LSV, CV)):
            if isinstance(tech, LSV):
                pts = [tech.E_begin_v + off, tech.E_end_v + off]
                loop = (f"meas_loop_lsv p c {si(pts[0])} {si(pts[1])} {si(tech.E_step_v)} "
                        f"{si(tech.scan_rate_v_s)}")
            else:
                pts = [tech.E_begin_v + off, tech.E_vertex1_v + off, tech.E_vertex2_v + off]
                loop = (f"meas_loop_cv p c {si(pts[0])} {si(pts[1])} {si(pts[2])} "
                        f"{si(tech.E_step_v)} {si(tech.scan_rate_v_s)} nscans({tech.n_scans})")
            h = tech.E_step_v / tech.scan_rate_v_s
            return Plan([*head, "set_pgstat_mode 2",
                         f"set_max_bandwidth {si(min(2e5, 4.0 / h))}",
                         f"set_range_minmax da {si(min(pts))} {si(max(pts))}",
                         *self._current_ranges(tech.current_range_a), f"set_e {si(pts[0])}",
                         "cell_on", "timer_start", loop, *_body("t", "p", "c"), *tail],
                        h, tech.technique)
        if isinstance(tech, PEIS):
            e = tech.E_dc_v + off
            f_low = min(tech.f_start_hz, tech.f_end_hz)
            return Plan(["var t", "var f", "var r", "var j", "set_pgstat_chan 0",
                         "set_pgstat_mode 3", f"set_range_minmax da {si(e)} {si(e)}",
                         *self._current_ranges(None), f"set_e {si(e)}", "cell_on",
                         "timer_start",
                         f"meas_loop_eis f r j {si(tech.amplitude_v)} {si(tech.f_start_hz)} "
                         f"{si(tech.f_end_hz)} {tech.n_frequencies}i {si(e)}",
                         *_body("t", "f", "r", "j"), *tail], 5.0 / f_low + 1.0, "peis")
        if isinstance(tech, GCPL):
            return self._gcpl(tech)
        raise ValueError(f"unsupported technique {tech.technique!r}")

    def _gcpl(self, tech: GCPL) -> Plan:
        r = self.ranges
        i_max = max((abs(p.current_a) for p in tech.phases), default=0.0) or r.i_min_range_a
        lines = ["var t", "var p", "var c", "var n", "store_var n 0i ja", "set_pgstat_chan 0",
                 f"set_pgstat_mode {r.galvanostatic_mode}", f"set_range ba {si(i_max)}",
                 "timer_start", f"loop n < {tech.n_cycles}i"]
        phases: list[dict[str, Any]] = []
        for ph in tech.phases:
            if ph.mode == "rest" or ph.current_a == 0:
                kind = "rest"
                lines += ["cell_off",
                          f"meas_loop_ocp p {si(ph.sample_interval_s)} {si(ph.max_time_s)}",
                          *_body("t", "p"), "endloop"]
            else:
                kind = "charge" if ph.current_a > 0 else "discharge"
                lines += [f"set_i {si(ph.current_a)}", "cell_on",
                          f"meas_loop_cp p c {si(ph.current_a)} {si(ph.sample_interval_s)} "
                          f"{si(ph.max_time_s)}", *_body("t", "p", "c")]
                if ph.upper_cutoff_v is not None:
                    lines += [f"  if p >= {si(ph.upper_cutoff_v)}", "    breakloop", "  endif"]
                if ph.lower_cutoff_v is not None:
                    lines += [f"  if p <= {si(ph.lower_cutoff_v)}", "    breakloop", "  endif"]
                lines.append("endloop")
            phases.append({"type": kind, "current_a": ph.current_a if kind != "rest" else 0.0})
        lines += ["add_var n 1i", "endloop", "on_finished:", "cell_off"]
        gap = max(p.sample_interval_s for p in tech.phases)
        return Plan(lines, gap, "gcpl", phases)

    # -- measuring ------------------------------------------------------------------------------
    @staticmethod
    def coerce(technique: Any) -> Technique:
        """A technique model, or a plain dict with a `technique` key."""
        if isinstance(technique, Technique):
            return technique
        model: Technique = TypeAdapter(AnyTechnique).validate_python(technique)
        return model

    def _check_channel(self, channel: int) -> None:
        """A channel other than 0 must be one of params.channels (checked before any byte)."""
        raw = self.spec.params.get("channels")
        known = {int(k) for k in raw} if isinstance(raw, dict) else set()
        if channel != 0 and channel not in known:
            raise LimitError(f"channel {channel} is not one of {self.name}'s channels "
                             f"({', '.join(str(c) for c in sorted(known | {0}))})",
                             device=self.name, parameter="channel", value=channel,
                             limit=max(known | {0}))

    async def measure_ocp(self, channel: int = 0) -> float:
        """A short open-circuit reading (for potentials given vs OCP)."""
        plan = Plan(["var t", "var p", f"set_pgstat_chan {int(channel)}", "cell_off",
                     "meas_loop_ocp p 100m 100m", *_body("t", "p"), "endloop"], 0.1, "ocv")
        values = [pt.potential_v async for pt in self._run(plan)]
        got = [v for v in values if v is not None and not math.isnan(v)]
        if not got:
            raise ProtocolError("no OCP reading", device=self.name)
        return got[-1]

    async def measure(self, technique: Any, *, channel: int = 0) -> AsyncIterator[DataPoint]:
        """Run a technique on the cell of `channel` (0: the only one of a single-channel
        instrument); yields DataPoints as the instrument streams them."""
        tech = self.coerce(technique)
        self._check_channel(channel)
        if self.running:
            raise DeviceBusy("a technique is already running", device=self.name)
        if self.model_id is None:
            await self.identify()
        self.check_limits(tech)  # relative potentials against the ranges first
        ocp = 0.0
        if getattr(tech, "vs", "ref") == "ocp" and not isinstance(tech, (OCV, CP, GCPL)):
            ocp = await self.measure_ocp(channel)
            self.check_limits(tech, ocp)
        plan = self.build_script(tech, ocp)
        plan.lines = [f"set_pgstat_chan {int(channel)}" if ln == "set_pgstat_chan 0" else ln
                      for ln in plan.lines]
        async for point in self._run(plan):
            yield point

    async def _run(self, plan: Plan) -> AsyncIterator[DataPoint]:
        if self.running:
            raise DeviceBusy("a script is already running", device=self.name)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._abort_sent = False
        self._safe_requested = False
        self._reader = asyncio.ensure_future(self._read_script(plan, queue))
        finished = False
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
        finally:
            reader = self._reader
            if not finished and reader is not None and not reader.done():
                with contextlib.suppress(Exception):
                    await self.open_link().write(b"Z\n")
                    self._abort_sent = True
                    await asyncio.wait_for(asyncio.shield(reader), self._timeout() + 5.0)
                if not reader.done():
                    reader.cancel()
                    with contextlib.suppress(BaseException):
                        await reader

    async def _read_script(self, plan: Plan, queue: asyncio.Queue[Any]) -> None:
        """Send the script and decode its output until the terminating empty line."""
        link = self.open_link()
        t_cmd = self._timeout()
        t_line = t_cmd + 2.0 * self.clock.to_wall(plan.gap_s) + 1.0
        error: Exception | None = None
        try:
            async with link.lock:
                if self._safe_requested:
                    raise DeviceError("not started: the safe state was applied meanwhile",
                                      device=self.name)
                link.reset_input()
                await link.write(("e\n" + "\n".join(plan.lines) + "\n\n").encode("ascii"))
                head = (await link.read_until(b"\n", t_cmd)).decode("latin-1")
                if head != "e\n":
                    m = _ERROR.search(head)
                    if m:
                        raise error_for(m.group(1), m.group(2).strip(), self.name)
                    raise ProtocolError(f"script start answered {head!r}", device=self.name)
                loops = scans = 0
                n_ph = max(1, len(plan.phases))
                read_until = link.read_until
                put = queue.put_nowait
                while True:
                    raw = await read_until(b"\n", t_line)
                    line = raw.decode("latin-1")
                    c = line[0]
                    if c == "P":
                        ctx: dict[str, Any] = {}
                        if plan.kind == "gcpl":
                            idx = loops - 1
                            ctx = {"cycle": idx // n_ph + 1, "step": idx % n_ph + 1}
                        elif plan.kind == "cv":
                            ctx = {"cycle": scans, "scan": scans}
                        point = to_point(decode_package(line), **ctx)
                        if plan.kind == "gcpl":
                            phase = plan.phases[(loops - 1) % n_ph]
                            point.applied_a = phase["current_a"]
                            point.extra["step_type"] = phase["type"]
                            if point.current_a is None:
                                point.current_a = 0.0
                        self.points_received += 1
                        self.last_point = point
                        put(point)
                    elif c == "\n":
                        break
                    elif c == "M":
                        loops += 1
                    elif c == "C":
                        scans += 1
                    elif c in "*L+-":
                        pass
                    elif c == "T":
                        self.messages.append(line[1:].rstrip("\n"))
                        log.info("%s: %s", self.name, line[1:].rstrip())
                    elif c == "!" or "!" in line:
                        m = _ERROR.search(line)
                        code = m.group(1) if m else "????"
                        if line.startswith("Z!"):
                            continue  # our Z raced with the end of the script
                        if error is None:
                            error = error_for(code, (m.group(2) if m else line).strip(),
                                              self.name)
                    elif line == "Z\n":
                        pass  # abort acknowledged; the rest of the run follows
                    else:
                        log.warning("%s: unexpected line %r", self.name, line)
            if error is not None:
                put(error)
            put(_END)
        except Exception as exc:
            queue.put_nowait(exc)

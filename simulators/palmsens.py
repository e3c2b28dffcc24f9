"""PalmSens EmStat (Pico / EmStat4 / Nexus) simulator: a MethodSCRIPT interpreter and the
simulated cell it measures.

Written from shared/protocols/palmsens-methodscript.md only. The host sends `e\\n`, script
lines and an empty line; the device answers `e\\n`, streams loop markers and data packages
while the script runs on the simulator's clock, and ends the run with an empty line. `Z`
aborts (the `on_finished:` block still runs); errors answer `!<code>: Line n, Col m`.

Options (simulator options, or the device's config params):
  model            espico | es4_lr | es4_hr (default) | nexus1 — id prefix, ranges
  serial           serial number answered to `i`
  vessel           world vessel the cell sits in (its electrolyte sets the conductivity)
  channels         {"0": "cell_vial", "1": "a1", ...}: a multiplexed instrument, one cell
                   per channel, each in its vessel; `set_pgstat_chan n` selects which cell
                   the script measures (a channel not listed: error 4002). Without it only
                   channel 0 exists (the cell in `vessel`).
  salt, ec_material  material ids of the salt (LiPF6) and of EC in the world
  electrolyte      {molality, ec_fraction, temperature_c} when there is no vessel
  cell_constant    "1.0 /cm";  electrode_area "0.196 cm^2"
  noise            Gaussian noise as a fraction of the range (0.001); seed (int)
  redox_concentration "1 mM", redox_e0 "3.25 V", diffusion "1e-5 cm^2/s"
  ox_limit "4.5 V", red_limit "0.9 V", onset_slope "80 mV", onset_j_ref "0.01 mA/cm^2"
  double_layer "20 uF/cm^2", exchange_current "1 mA/cm^2", warburg (ohm s^-1/2)
  ocp "3.0 V" (OCV at half charge), ocv_span "0.1 V" (linear OCV rise from empty to full),
  capacity "0.1 mAh", soc 0.5 (initial state of charge),
  coulombic_efficiency 0.98, capacity_fade 0.01,
  convection_time "30 s"
Fault injection: `faults.error = "0032"` (or `faults.stall = True`) raises that runtime
error at the next measured sample.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

from simulators.base import Reply, Simulator
from simulators.conductivity import Electrolyte, electrolyte_from_contents
from simulators.electrochem_cell import Cell, CellParams, Voltammetry

# -- instrument models (labctl's reading of the vendors' data sheets) ------------------------


@dataclass(frozen=True)
class Model:
    name: str
    e_min: float
    e_max: float
    current_ranges: tuple[float, ...]
    f_min: float
    f_max: float


_DECADES = tuple(10.0 ** k for k in range(-9, 0))
MODELS: dict[str, Model] = {
    "espico": Model("EmStat Pico", -1.7, 2.0, (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 5e-3), 0.016, 2e5),
    "es4_lr": Model("EmStat4 LR", -3.0, 3.0, _DECADES[:-1], 1e-5, 2e5),
    "es4_hr": Model("EmStat4 HR", -6.0, 6.0, _DECADES, 1e-5, 2e5),
    "nexus1": Model("Nexus", -5.0, 5.0, (*_DECADES, 1.0), 1e-5, 1e6),
}
#: measured-potential ranges (set_range ab); the noise of a potential is a fraction of it
POTENTIAL_RANGES = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

TECHNIQUE_IDS = {
    "meas_loop_lsv": 0x0000, "meas_loop_cv": 0x0001, "meas_loop_ca": 0x0007,
    "meas_loop_ocp": 0x0009, "meas_loop_cp": 0x000A, "meas_loop_eis": 0x000B,
}
PGSTAT_MODES = {0, 2, 3, 4, 5, 6}

# -- value encoding ---------------------------------------------------------------------------

SI_PREFIXES: tuple[tuple[str, int], ...] = (
    ("a", -18), ("f", -15), ("p", -12), ("n", -9), ("u", -6), ("m", -3), (" ", 0),
    ("k", 3), ("M", 6), ("G", 9), ("T", 12), ("P", 15), ("E", 18),
)
_PREFIX_EXP = {ch: e for ch, e in SI_PREFIXES}
_MAXINT = 2**27 - 1
_MININT = -(2**27)
OFFSET = 0x8000000


def encode_value(vtype: str, value: float, *, integer: bool = False) -> str:
    """One package variable without metadata: type, 7 hex digits of value + 0x8000000,
    SI prefix (the one giving the most resolution), or the type and `     nan`."""
    if integer:
        n = max(_MININT, min(_MAXINT, int(value)))
        return f"{vtype}{n + OFFSET:07X}i"
    if math.isnan(value):
        return f"{vtype}     nan"
    for ch, exp in SI_PREFIXES:
        n = round(value / 10.0**exp)
        if _MININT <= n <= _MAXINT:
            return f"{vtype}{n + OFFSET:07X}{ch}"
    n = _MAXINT if value > 0 else _MININT
    return f"{vtype}{n + OFFSET:07X}E"


_NUMBER = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))([afpnumkMGTPE]|i)?$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TYPE = re.compile(r"^[a-z]{2}$")
_NSCANS = re.compile(r"^nscans\((\d+)\)$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


def parse_number(token: str) -> tuple[float, bool] | None:
    """A literal: number with an optional SI prefix, or an integer with the `i` suffix."""
    m = _NUMBER.match(token)
    if not m:
        return None
    digits, suffix = m.group(1), m.group(2)
    if suffix == "i":
        if "." in digits:
            return None
        return float(int(digits)), True
    value = float(digits)
    if suffix:
        value *= 10.0 ** _PREFIX_EXP[suffix]
    return value, False


# -- script model -----------------------------------------------------------------------------


class ScriptError(Exception):
    """A MethodSCRIPT error: code (4 hex digits) at a line and column (1-based)."""

    def __init__(self, code: str, line: int, col: int = 1):
        self.code, self.line, self.col = code, line, col
        super().__init__(f"!{code}: Line {line}, Col {col}")


class _Break(Exception):
    pass


class _Aborted(Exception):
    pass


@dataclass
class Stmt:
    op: str
    args: list[str]
    cols: list[int]
    line: int
    body: list[Stmt] = field(default_factory=list)
    #: for `if`: [(condition statement, body)], the else body in `orelse`
    branches: list[tuple[Stmt, list[Stmt]]] = field(default_factory=list)
    orelse: list[Stmt] | None = None


@dataclass
class Script:
    body: list[Stmt]
    on_finished: list[Stmt]


# argument kinds: N new name, V declared variable, X value (literal or variable), T type,
# C comparison operator, S quoted text, O optional nscans(n)
SIGNATURES: dict[str, str] = {
    "var": "N", "store_var": "VXT", "add_var": "VX",
    "set_pgstat_chan": "X", "set_pgstat_mode": "X", "set_max_bandwidth": "X",
    "set_range": "TX", "set_autoranging": "TXX", "set_cr": "X", "set_range_minmax": "TXX",
    "set_e": "X", "set_i": "X", "cell_on": "", "cell_off": "", "wait": "X",
    "timer_start": "", "timer_get": "V", "meas": "VT",
    "pck_start": "", "pck_add": "V", "pck_end": "", "breakloop": "", "send_string": "S",
    "meas_loop_ocp": "VXX", "meas_loop_ca": "VVXXX", "meas_loop_cp": "VVXXX",
    "meas_loop_lsv": "VVXXXX", "meas_loop_cv": "VVXXXXXO", "meas_loop_eis": "VVVXXXXX",
    "loop": "XCX", "if": "XCX", "elseif": "XCX", "else": "", "endif": "", "endloop": "",
}


def _tokenize(text: str, lineno: int) -> tuple[list[str], list[int]]:
    tokens: list[str] = []
    cols: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t":
            i += 1
            continue
        if not (" " < ch <= "~"):
            raise ScriptError("4004", lineno, i + 1)
        if ch == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise ScriptError("4004", lineno, i + 1)
            tokens.append(text[i : end + 1])
            cols.append(i + 1)
            i = end + 1
            continue
        start = i
        while i < n and text[i] not in " \t":
            if not (" " < text[i] <= "~"):
                raise ScriptError("4004", lineno, i + 1)
            i += 1
        tokens.append(text[start:i])
        cols.append(start + 1)
    return tokens, cols


def parse_script(lines: list[str]) -> Script:
    """Parse script lines (line 1 = the first line after `e`) into statements, checking
    statements, argument counts and kinds, declared variables and block structure."""
    root: list[Stmt] = []
    on_finished: list[Stmt] = []
    declared: set[str] = set()
    # stack of (opening statement, body being filled)
    stack: list[tuple[Stmt | None, list[Stmt]]] = [(None, root)]
    in_finished = False
    for lineno, raw in enumerate(lines, start=1):
        tokens, cols = _tokenize(raw, lineno)
        if not tokens or tokens[0].startswith("#"):
            continue
        op, args, acols = tokens[0], tokens[1:], cols[1:]
        if op == "on_finished:":
            if len(stack) > 1 or in_finished or args:
                raise ScriptError("4004", lineno, cols[0])
            in_finished = True
            stack = [(None, on_finished)]
            continue
        if op not in SIGNATURES:
            raise ScriptError("4001", lineno, cols[0])
        stmt = Stmt(op, args, acols, lineno)
        _check_args(stmt, declared)
        top, body = stack[-1]
        if op in TECHNIQUE_IDS:
            if any(s is not None and s.op in TECHNIQUE_IDS for s, _ in stack):
                raise ScriptError("400B", lineno, cols[0])
            body.append(stmt)
            stack.append((stmt, stmt.body))
        elif op == "loop":
            body.append(stmt)
            stack.append((stmt, stmt.body))
        elif op == "endloop":
            if top is None or (top.op not in TECHNIQUE_IDS and top.op != "loop"):
                raise ScriptError("4004", lineno, cols[0])
            stack.pop()
        elif op == "if":
            first: list[Stmt] = []
            stmt.branches.append((stmt, first))
            body.append(stmt)
            stack.append((stmt, first))
        elif op in ("elseif", "else", "endif"):
            if top is None or top.op != "if":
                raise ScriptError("4004", lineno, cols[0])
            if op == "endif":
                stack.pop()
                continue
            if top.orelse is not None:
                raise ScriptError("4004", lineno, cols[0])
            stack.pop()
            if op == "elseif":
                branch: list[Stmt] = []
                top.branches.append((stmt, branch))
                stack.append((top, branch))
            else:
                top.orelse = []
                stack.append((top, top.orelse))
        else:
            if op == "breakloop" and not any(
                s is not None and (s.op == "loop" or s.op in TECHNIQUE_IDS) for s, _ in stack
            ):
                raise ScriptError("4004", lineno, cols[0])
            body.append(stmt)
    if len(stack) > 1:
        opener = stack[-1][0]
        raise ScriptError("4004", opener.line if opener else len(lines), 1)
    return Script(root, on_finished)


def _check_args(stmt: Stmt, declared: set[str]) -> None:
    sig = SIGNATURES[stmt.op]
    args, cols = stmt.args, stmt.cols
    required = sig.replace("O", "")
    if len(args) < len(required) or len(args) > len(sig):
        col = cols[len(sig)] if len(args) > len(sig) else (cols[-1] if cols else 1)
        raise ScriptError("4002", stmt.line, col)
    for kind, arg, col in zip(sig, args, cols, strict=False):
        ok = True
        if kind == "N":
            ok = bool(_NAME.match(arg)) and parse_number(arg) is None
            if ok:
                declared.add(arg)
        elif kind == "V":
            ok = arg in declared
        elif kind == "X":
            ok = parse_number(arg) is not None or arg in declared
        elif kind == "T":
            ok = bool(_TYPE.match(arg))
        elif kind == "C":
            ok = arg in _OPS
        elif kind == "S":
            ok = len(arg) >= 2 and arg[0] == arg[-1] == '"'
        elif kind == "O":
            m = _NSCANS.match(arg)
            ok = m is not None and int(m.group(1)) >= 1
        if not ok:
            raise ScriptError("4002", stmt.line, col)


# -- run-time state -----------------------------------------------------------------------------


@dataclass
class Var:
    value: float = math.nan
    vtype: str = "aa"
    integer: bool = False
    meta: str = ""  # ",1<s>,2<hh>" for measured values


@dataclass
class _Run:
    script: Script
    reply: Reply
    t: float  # device time (s) of the run's schedule
    timer0: float
    vars: dict[str, Var] = field(default_factory=dict)
    package: list[str] | None = None
    line: int = 0


@lru_cache(maxsize=1)
def _ureg() -> Any:
    """The simulator's own registry (it shares no code with the driver side). Pint parses its
    definition files without a cache (0.14 s, at every simulated bench's start); with its disk
    cache it loads in ~0.015 s. A home that cannot be written just means no cache."""
    import pint

    try:
        return pint.UnitRegistry(cache_folder=":auto:")
    except Exception:  # pint's cache layer can fail in odd ways; the plain registry works
        return pint.UnitRegistry()


def _quantity(value: Any, unit: str, default: float) -> float:
    """An option as a float in `unit`: numbers are taken as already in that unit."""
    if value is None:
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    ureg = _ureg()
    return float(ureg.Quantity(str(value)).to(unit).magnitude)


def cell_params(o: dict[str, Any]) -> CellParams:
    """The simulated cell from the simulator options (defaults: CellParams')."""
    return CellParams(
        cell_constant_m=_quantity(o.get("cell_constant"), "1/m", 100.0),
        area_m2=_quantity(o.get("electrode_area"), "m^2", 0.196e-4),
        cdl_f_m2=_quantity(o.get("double_layer"), "F/m^2", 0.20),
        i0_a_m2=_quantity(o.get("exchange_current"), "A/m^2", 10.0),
        warburg_ohm_s05=float(o.get("warburg", 100.0)),
        redox_e0_v=_quantity(o.get("redox_e0"), "V", 3.25),
        redox_conc_mol_m3=_quantity(o.get("redox_concentration"), "mol/m^3", 1.0),
        diffusion_m2_s=_quantity(o.get("diffusion"), "m^2/s", 1e-9),
        ox_limit_v=_quantity(o.get("ox_limit"), "V", 4.5),
        red_limit_v=_quantity(o.get("red_limit"), "V", 0.9),
        onset_slope_v=_quantity(o.get("onset_slope"), "V", 0.08),
        onset_j_ref_a_m2=_quantity(o.get("onset_j_ref"), "A/m^2", 0.1),
        ocp_v=_quantity(o.get("ocp"), "V", 3.0),
        ocv_span_v=_quantity(o.get("ocv_span"), "V", 0.1),
        capacity_c=_quantity(o.get("capacity"), "C", 0.36),
        initial_soc=float(o.get("soc", 0.5)),
        coulombic_efficiency=float(o.get("coulombic_efficiency", 0.98)),
        capacity_fade=float(o.get("capacity_fade", 0.01)),
        convection_time_s=_quantity(o.get("convection_time"), "s", 30.0),
    )


def fixed_electrolyte(o: dict[str, Any]) -> Electrolyte:
    """The electrolyte assumed when the cell's vial is not known (option `electrolyte`)."""
    fixed = dict(o.get("electrolyte") or {})
    return Electrolyte(float(fixed.get("molality", 1.0)), float(fixed.get("ec_fraction", 0.5)),
                       float(fixed.get("temperature_c", 25.0)))


def eis_frequencies(f_start: float, f_end: float, n: int) -> list[float]:
    """The log-spaced frequencies of an EIS loop, in the order measured."""
    if n <= 1:
        return [f_start]
    ratio = math.log(f_end / f_start) / (n - 1)
    return [f_start * math.exp(ratio * k) for k in range(n)]


def eis_point_s(f_hz: float) -> float:
    """Device time one EIS frequency takes: two periods, at least 50 ms of settling."""
    return max(2.0 / f_hz, 0.05)


def eis_time_s(f_start: float, f_end: float, n: int) -> float:
    """Device time of a whole EIS loop (the planner's estimate, simulators.timing)."""
    return sum(eis_point_s(f) for f in eis_frequencies(f_start, f_end, n))


def gcpl_time_s(o: dict[str, Any], phases: list[dict[str, Any]], n_cycles: int) -> float:
    """Device time of galvanostatic cycling on the simulated cell: each cc phase runs the
    cell model (the one the simulator answers with) sample by sample until its cut-off or
    its max_time, each rest its max_time. The cell starts as the options declare it (a
    bench that already cycled it is elsewhere: the estimate is for the declared cell)."""
    cell = Cell(cell_params(o))
    el = fixed_electrolyte(o)
    cell._electrolyte = (el.conductivity_s_m, el.temperature_c)
    total = 0.0
    for _ in range(max(0, n_cycles)):
        for ph in phases:
            max_t = float(ph.get("max_time_s") or 0.0)
            dt = float(ph.get("sample_interval_s") or 1.0)
            i = float(ph.get("current_a") or 0.0)
            if ph.get("mode") != "cc" or i == 0 or dt <= 0:
                total += max_t
                continue
            up, lo = ph.get("upper_cutoff_v"), ph.get("lower_cutoff_v")
            t = 0.0
            while t + dt <= max_t + 1e-9:
                t += dt
                cell.pass_current(i, dt)
                e = cell.galvanostatic_potential(i)
                if (up is not None and e >= up) or (lo is not None and e <= lo):
                    break
            total += t
    return total


class EmStatSimulator(Simulator):
    """The instrument side of MethodSCRIPT over a byte stream, with a simulated cell."""

    kind: ClassVar[str] = "palmsens-emstat"
    line: ClassVar[str] = "230400 8N1 (EmStat Pico; EmStat4/Nexus 921600)"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        o = self.options
        model = str(o.get("model", "es4_hr"))
        if model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
        self.model_id = model
        self.model = MODELS[model]
        self.serial = str(o.get("serial", "ES4SIM0001"))
        self.noise = float(o.get("noise", 0.001))
        self.rng = random.Random(o.get("seed"))
        params = cell_params(o)
        self._fixed = fixed_electrolyte(o)
        raw = o.get("channels")
        #: channel -> the vessel its cell sits in (channel 0: option `vessel`)
        self.channel_vessels: dict[int, str | None] = {0: o.get("vessel")}
        if isinstance(raw, dict):
            self.channel_vessels.update({int(k): str(v) for k, v in raw.items()})
        #: one cell per channel (built when first selected), each reading its own vessel
        self.cells: dict[int, Cell] = {0: Cell(params, conductivity=self._conductivity)}
        self.cell = self.cells[0]
        # instrument state
        self.cell_on = False
        self.mode = 0
        self.channel = 0
        self.e_set = 0.0
        self.i_set = 0.0
        self.bandwidth = 0.0
        self.current_range = self.model.current_ranges[-1]
        self.autorange: tuple[float, float] | None = None
        self.potential_range = 1.0
        self.e_window: tuple[float, float] = (self.model.e_min, self.model.e_max)
        self.registers: dict[int, int] = {}
        # line state
        self._buf = bytearray()
        self._script_lines: list[str] | None = None
        self._run: _Run | None = None
        self._task: asyncio.Task[Any] | None = None
        self._abort = False
        self._last_yield = 0.0
        self.scripts_run = 0
        self.aborts = 0
        self.last_error: str | None = None
        self.packages_sent = 0

    # -- electrolyte ---------------------------------------------------------------------
    def saved_state(self) -> dict[str, Any]:
        """The cells' charge state (the electrolyte is in the world): channel 0's at the
        top level, other channels' under "channels"."""
        def charge(c: Cell) -> dict[str, float]:
            return {"soc": c.soc, "capacity_c": c.capacity_c, "charge_in_c": c.charge_in_c,
                    "charge_out_c": c.charge_out_c}

        out: dict[str, Any] = charge(self.cells[0])
        others = {str(ch): charge(c) for ch, c in self.cells.items() if ch != 0}
        if others:
            out["channels"] = others
        return out

    def restore_state(self, state: dict[str, Any]) -> None:
        def restore(c: Cell, st: dict[str, Any]) -> None:
            for key in ("soc", "capacity_c", "charge_in_c", "charge_out_c"):
                if key in st:
                    setattr(c, key, float(st[key]))

        restore(self.cells[0], state)
        for ch, st in (state.get("channels") or {}).items():
            if int(ch) in self.channel_vessels and isinstance(st, dict):
                current = self.channel
                self.select_channel(int(ch))
                restore(self.cell, st)
                self.select_channel(current)

    def select_channel(self, channel: int) -> None:
        """Switch the instrument to the cell on `channel` (KeyError: no such channel)."""
        vessel = self.channel_vessels[channel]
        if channel not in self.cells:
            self.cells[channel] = Cell(cell_params(self.options),
                                       conductivity=lambda: self._conductivity_in(vessel))
        self.channel = channel
        self.cell = self.cells[channel]

    def electrolyte(self, vessel: Any = None) -> Electrolyte:
        """What is in a cell's vessel now (default the channel-0 cell's; the fixed
        electrolyte of the options when there is none)."""
        vessel = self.options.get("vessel") if vessel is None else vessel
        if self.world is None or not vessel:
            return self._fixed
        try:
            v = self.world.vessel(str(vessel))
        except Exception:  # no such vessel in this world: the configured electrolyte
            return self._fixed
        mats = self.world.materials
        liquid = {m for m in v.contents_g if m in mats and mats[m].phase == "liquid"}
        salt = str(self.options.get("salt", "LiPF6"))
        mm = mats[salt].molar_mass_g_mol if salt in mats else None
        kwargs: dict[str, Any] = {"salt_molar_mass": float(mm)} if mm else {}
        return electrolyte_from_contents(
            dict(v.contents_g), v.temperature_c, liquid=liquid, salt=salt,
            ec=str(self.options.get("ec_material", "EC")), **kwargs,
        )

    def _conductivity(self) -> tuple[float, float]:
        el = self.electrolyte()
        return el.conductivity_s_m, el.temperature_c

    def _conductivity_in(self, vessel: str | None) -> tuple[float, float]:
        el = self.electrolyte(vessel) if vessel else self._fixed
        return el.conductivity_s_m, el.temperature_c

    # -- bytes in --------------------------------------------------------------------------
    def feed(self, data: bytes, reply: Reply) -> None:
        self._buf.extend(data)
        while True:
            idx = self._buf.find(b"\n")
            if idx < 0:
                if len(self._buf) > 65536:  # garbage without line ends: drop it
                    self._buf.clear()
                return
            raw = bytes(self._buf[:idx]).rstrip(b"\r")
            del self._buf[: idx + 1]
            self._line(raw.decode("latin-1"), reply)

    def _line(self, text: str, reply: Reply) -> None:
        if self._script_lines is not None:
            if text.strip() == "":
                lines, self._script_lines = self._script_lines, None
                self._start_script(lines, reply)
            else:
                self._script_lines.append(text)
            return
        if text.strip() == "":
            return
        cmd = text[0]
        running = self._task is not None and not self._task.done()
        if cmd == "Z" and text.strip() == "Z":
            if running:
                self.send(reply, b"Z\n")
                self._abort = True
                self.aborts += 1
            else:
                self.send(reply, b"Z!0006\n")
            return
        if running:
            self.send(reply, f"{cmd}!0006\n".encode("latin-1"))
            return
        if text == "e":
            self.send(reply, b"e\n")
            self._script_lines = []
        elif text == "t":
            self.send(reply, f"t{self.model_id}1302#Aug 16 2023 12:00:00\nR*\n".encode())
        elif text == "v":
            self.send(reply, b"v0104\n")
        elif text == "i":
            self.send(reply, f"i{self.serial}\n".encode())
        elif cmd == "G":
            try:
                reg = int(text[1:], 16)
                if len(text) != 3:
                    raise ValueError
            except ValueError:
                self.send(reply, b"G!4002\n")
                return
            self.send(reply, f"G{self.registers.get(reg, 0):08X}\n".encode())
        else:
            self.send(reply, f"{cmd}!0003\n".encode("latin-1"))

    # -- running scripts -------------------------------------------------------------------
    def _start_script(self, lines: list[str], reply: Reply) -> None:
        self.scripts_run += 1
        self.cell.refresh()
        try:
            script = parse_script(lines)
        except ScriptError as exc:
            self.last_error = exc.code
            self.send(reply, f"!{exc.code}: Line {exc.line}, Col {exc.col}\n\n".encode())
            return
        now = self.clock.monotonic()
        run = _Run(script=script, reply=reply, t=now, timer0=now)
        self._abort = False
        self._run = run
        self._task = self.spawn(self._execute(run))

    def _emit(self, run: _Run, text: str) -> None:
        self.send(run.reply, text.encode("latin-1"))

    async def _execute(self, run: _Run) -> None:
        try:
            try:
                await self._block(run, run.script.body)
            except (_Aborted, _Break):
                pass
            except ScriptError as exc:
                self.last_error = exc.code
                if exc.code == "0032":
                    self.cell_on = False
                self._emit(run, f"!{exc.code}: Line {exc.line}, Col {exc.col}\n")
            self._abort = False
            run.package = None
            try:
                await self._block(run, run.script.on_finished)
            except (_Aborted, _Break):
                pass
            except ScriptError as exc:
                self.last_error = exc.code
                self._emit(run, f"!{exc.code}: Line {exc.line}, Col {exc.col}\n")
            self._emit(run, "\n")
        finally:
            self._run = None

    def _check_abort(self) -> None:
        if self._abort:
            raise _Aborted

    async def _wait_until(self, run: _Run, target: float) -> None:
        """Advance the run's device time to `target`, sleeping on the clock (in slices, so
        that `Z` is honoured promptly)."""
        while True:
            self._check_abort()
            remaining = target - self.clock.monotonic()
            if remaining <= 0:
                # behind schedule: give the line (and a `Z`) a turn every few milliseconds
                now = time.monotonic()
                if now - self._last_yield > 0.002:
                    self._last_yield = now
                    await asyncio.sleep(0)
                break
            wall = self.clock.to_wall(remaining)
            self._last_yield = time.monotonic()
            await asyncio.sleep(min(wall, 0.05))
            if wall <= 0.05:
                break
        self._check_abort()
        run.t = target
        self.cell.refresh()  # the vial may have changed since the last sample

    async def _block(self, run: _Run, body: list[Stmt]) -> None:
        for stmt in body:
            self._check_abort()
            run.line = stmt.line
            op = stmt.op
            if op in TECHNIQUE_IDS:
                await self._meas_loop(run, stmt)
            elif op == "loop":
                await self._general_loop(run, stmt)
            elif op == "if":
                for cond, branch in stmt.branches:
                    if self._condition(run, cond):
                        await self._block(run, branch)
                        break
                else:
                    if stmt.orelse is not None:
                        await self._block(run, stmt.orelse)
            elif op == "wait":
                await self._wait_until(run, run.t + max(0.0, self._value(run, stmt, 0)))
            elif op == "breakloop":
                raise _Break
            else:
                self._simple(run, stmt)

    def _value(self, run: _Run, stmt: Stmt, i: int) -> float:
        tok = stmt.args[i]
        lit = parse_number(tok)
        if lit is not None:
            return lit[0]
        var = run.vars.get(tok)
        if var is None:
            raise ScriptError("4002", stmt.line, stmt.cols[i])
        return var.value

    def _var(self, run: _Run, stmt: Stmt, i: int) -> Var:
        name = stmt.args[i]
        var = run.vars.get(name)
        if var is None:
            var = run.vars[name] = Var()
        return var

    def _condition(self, run: _Run, stmt: Stmt) -> bool:
        a, b = self._value(run, stmt, 0), self._value(run, stmt, 2)
        return _OPS[stmt.args[1]](a, b)

    def _simple(self, run: _Run, stmt: Stmt) -> None:
        op, args = stmt.op, stmt.args
        if op == "var":
            run.vars.setdefault(args[0], Var())
        elif op == "store_var":
            lit = parse_number(args[1])
            value = self._value(run, stmt, 1)
            integer = lit[1] if lit else run.vars[args[1]].integer
            run.vars[args[0]] = Var(value, args[2], integer)
        elif op == "add_var":
            var = self._var(run, stmt, 0)
            var.value = var.value + self._value(run, stmt, 1)
            var.meta = ""
        elif op == "set_pgstat_chan":
            ch = self._value(run, stmt, 0)
            if ch != int(ch) or int(ch) not in self.channel_vessels:
                raise ScriptError("4002", stmt.line, stmt.cols[0])
            self.select_channel(int(ch))
        elif op == "set_pgstat_mode":
            mode = self._value(run, stmt, 0)
            if mode not in PGSTAT_MODES:
                raise ScriptError("4002", stmt.line, stmt.cols[0])
            self.mode = int(mode)
        elif op == "set_max_bandwidth":
            self.bandwidth = self._value(run, stmt, 0)
        elif op in ("set_range", "set_cr"):
            vtype = "ba" if op == "set_cr" else args[0]
            value = abs(self._value(run, stmt, 0 if op == "set_cr" else 1))
            if vtype == "ba":
                self.current_range = self._pick_range(self.model.current_ranges, value)
                self.autorange = None
            elif vtype == "ab":
                self.potential_range = self._pick_range(POTENTIAL_RANGES, value)
            else:
                raise ScriptError("4002", stmt.line, stmt.cols[0])
        elif op == "set_autoranging":
            lo, hi = abs(self._value(run, stmt, 1)), abs(self._value(run, stmt, 2))
            if args[0] != "ba" or lo > hi:
                raise ScriptError("4002", stmt.line, stmt.cols[0])
            self.autorange = (self._pick_range(self.model.current_ranges, lo),
                              self._pick_range(self.model.current_ranges, hi))
        elif op == "set_range_minmax":
            lo, hi = self._value(run, stmt, 1), self._value(run, stmt, 2)
            if args[0] != "da" or lo > hi:
                raise ScriptError("4002", stmt.line, stmt.cols[0])
            self.e_window = (lo, hi)
        elif op == "set_e":
            self.e_set = self._potential(run, stmt, 0)
        elif op == "set_i":
            self.i_set = self._value(run, stmt, 0)
        elif op == "cell_on":
            self.cell_on = True
        elif op == "cell_off":
            self.cell_on = False
        elif op == "timer_start":
            run.timer0 = run.t
        elif op == "timer_get":
            run.vars[args[0]] = Var(run.t - run.timer0, "eb")
        elif op == "meas":
            run.vars[args[0]] = self._single_measurement(args[1], stmt)
        elif op == "pck_start":
            run.package = []
        elif op == "pck_add":
            if run.package is None:
                raise ScriptError("4004", stmt.line, 1)
            var = run.vars[args[0]]
            run.package.append(
                encode_value(var.vtype, var.value, integer=var.integer) + var.meta
            )
        elif op == "pck_end":
            if run.package is None:
                raise ScriptError("4004", stmt.line, 1)
            self._emit(run, "P" + ";".join(run.package) + "\n")
            self.packages_sent += 1
            run.package = None
        elif op == "send_string":
            self._emit(run, "T" + args[0][1:-1] + "\n")

    @staticmethod
    def _pick_range(ranges: tuple[float, ...], value: float) -> float:
        for r in ranges:
            if value <= r * (1 + 1e-9):
                return r
        return ranges[-1]

    def _potential(self, run: _Run, stmt: Stmt, i: int) -> float:
        e = self._value(run, stmt, i)
        if not (self.model.e_min - 1e-9 <= e <= self.model.e_max + 1e-9):
            raise ScriptError("4002", stmt.line, stmt.cols[i])
        return e

    def _positive(self, run: _Run, stmt: Stmt, i: int) -> float:
        v = self._value(run, stmt, i)
        if not v > 0:
            raise ScriptError("4002", stmt.line, stmt.cols[i])
        return v

    # -- measuring -------------------------------------------------------------------------
    def _gauss(self, sigma: float) -> float:
        return self.rng.gauss(0.0, sigma) if sigma > 0 else 0.0

    def _measure_current(self, i_true: float, stmt: Stmt) -> Var:
        """Range choice (autoranging or fixed), noise, clipping with the overload bit."""
        ranges = self.model.current_ranges
        if abs(i_true) > 1.5 * ranges[-1]:
            raise ScriptError("0032", stmt.line, 1)
        if self.autorange is not None:
            lo, hi = self.autorange
            rng = self._pick_range(tuple(r for r in ranges if lo <= r <= hi) or (hi,),
                                   abs(i_true))
        else:
            rng = self.current_range
        value = i_true + self._gauss(self.noise * rng)
        status = 0
        if abs(value) > rng:
            value = math.copysign(rng, value)
            status |= 0x2
        elif abs(value) > 0.9 * rng:
            status |= 0x8
        elif abs(value) < 0.005 * rng:
            status |= 0x4
        index = ranges.index(rng) if rng in ranges else len(ranges) - 1
        return Var(value, "ba", False, f",1{status:X},2{index:02X}")

    def _measure_potential(self, e_true: float) -> Var:
        value = e_true + self._gauss(self.noise * self.potential_range)
        status = 0
        limit = max(abs(self.model.e_min), abs(self.model.e_max))
        if abs(value) > limit:
            value = math.copysign(limit, value)
            status |= 0x2
        index = POTENTIAL_RANGES.index(self.potential_range)
        return Var(value, "ab", False, f",1{status:X},2{index:02X}")

    def _fault_check(self, stmt: Stmt) -> None:
        err = self.faults.take_error()
        if err is None and self.faults.take_stall():
            err = "0032"
        if err is not None:
            code = str(err).lstrip("!").upper()
            raise ScriptError(code if re.fullmatch(r"[0-9A-F]{4}", code) else "0032",
                              stmt.line, 1)

    def _single_measurement(self, vtype: str, stmt: Stmt) -> Var:
        self._fault_check(stmt)
        self.cell.refresh()
        if vtype == "ab":
            e = self.e_set if self.cell_on and self.mode != 6 else self.cell.ocv()
            return self._measure_potential(e)
        if vtype == "ba":
            if not self.cell_on:
                return self._measure_current(0.0, stmt)
            return self._measure_current(self.cell.onset_current(self.e_set), stmt)
        if vtype == "ed":
            return Var(self.electrolyte().temperature_c, "ed")
        raise ScriptError("4002", stmt.line, stmt.cols[1])

    async def _meas_loop(self, run: _Run, stmt: Stmt) -> None:
        # validate the arguments before the loop marker goes out
        op = stmt.op
        handler = {
            "meas_loop_ocp": self._loop_ocp, "meas_loop_ca": self._loop_ca,
            "meas_loop_cp": self._loop_cp, "meas_loop_lsv": self._loop_lsv,
            "meas_loop_cv": self._loop_cv, "meas_loop_eis": self._loop_eis,
        }[op]
        samples = handler(run, stmt)
        try:
            await samples.__anext__()  # validates the arguments; yields before sampling
            self._emit(run, f"M{TECHNIQUE_IDS[op]:04X}\n")
            async for _ in samples:
                try:
                    await self._block(run, stmt.body)
                except _Break:
                    break
        finally:
            await samples.aclose()
        self._emit(run, "*\n")

    def _timed(self, run: _Run, stmt: Stmt, i_int: int, i_run: int) -> tuple[float, int]:
        t_int = self._positive(run, stmt, i_int)
        t_run = self._value(run, stmt, i_run)
        if t_run < 0:
            raise ScriptError("4002", stmt.line, stmt.cols[i_run])
        return t_int, math.floor(t_run / t_int + 1e-9)

    async def _loop_ocp(self, run: _Run, stmt: Stmt) -> Any:
        t_int, n = self._timed(run, stmt, 1, 2)
        yield -1
        t0 = run.t
        for k in range(1, n + 1):
            await self._wait_until(run, t0 + k * t_int)
            self._fault_check(stmt)
            run.vars[stmt.args[0]] = self._measure_potential(self.cell.ocv())
            yield k

    async def _loop_ca(self, run: _Run, stmt: Stmt) -> Any:
        e = self._potential(run, stmt, 2)
        t_int, n = self._timed(run, stmt, 3, 4)
        rest = self.cell.ocv()
        self.e_set = e
        vm = Voltammetry(self.cell, t_int, n, rest_v=rest)
        vm.seed(e)
        yield -1
        t0 = run.t
        for k in range(1, n + 1):
            await self._wait_until(run, t0 + k * t_int)
            self._fault_check(stmt)
            i = vm.sample(e, 0.0, t_since_step=k * t_int) if self.cell_on else 0.0
            run.vars[stmt.args[0]] = Var(e, "da")
            run.vars[stmt.args[1]] = self._measure_current(i, stmt)
            yield k

    async def _loop_cp(self, run: _Run, stmt: Stmt) -> Any:
        i_set = self._value(run, stmt, 2)
        t_int, n = self._timed(run, stmt, 3, 4)
        self.i_set = i_set
        yield -1
        t0 = run.t
        for k in range(1, n + 1):
            await self._wait_until(run, t0 + k * t_int)
            self._fault_check(stmt)
            # an open cell (empty vial) carries no current: the galvanostat runs into its
            # compliance, the potential to the end of its range
            i = i_set if self.cell_on and not self.cell.open_circuit else 0.0
            status = 0
            if abs(i) > self.current_range:  # a galvanostat cannot exceed its range
                i = math.copysign(self.current_range, i)
                status = 0x2
            self.cell.pass_current(i, t_int)
            e = (self.cell.galvanostatic_potential(i) if not self.cell.open_circuit
                 else math.copysign(2 * max(abs(self.model.e_min), abs(self.model.e_max)), i_set))
            run.vars[stmt.args[0]] = self._measure_potential(e)
            cur = Var(i + self._gauss(self.noise * self.current_range), "ba")
            index = self.model.current_ranges.index(self.current_range)
            cur.meta = f",1{status:X},2{index:02X}"
            run.vars[stmt.args[1]] = cur
            yield k

    def _sweep(self, run: _Run, stmt: Stmt, i_step: int, i_rate: int) -> tuple[float, float]:
        return self._positive(run, stmt, i_step), self._positive(run, stmt, i_rate)

    @staticmethod
    def _segment(a: float, b: float, step: float) -> list[float]:
        """Potentials from a towards b (a excluded, b included), `step` apart."""
        n = math.floor(abs(b - a) / step + 1e-9)
        sign = 1.0 if b >= a else -1.0
        pts = [a + sign * step * k for k in range(1, n + 1)]
        if not pts or abs(pts[-1] - b) > 1e-9:
            pts.append(b)
        return pts if abs(b - a) > 1e-12 else []

    async def _voltammetry(self, run: _Run, stmt: Stmt, points: list[float], rate: float,
                           step: float, scan_starts: dict[int, int] | None = None) -> Any:
        h = step / rate
        vm = Voltammetry(self.cell, h, len(points))
        t0 = run.t
        for k, e in enumerate(points):
            if scan_starts and k in scan_starts:
                if scan_starts[k] > 1:
                    self._emit(run, "-\n")
                self._emit(run, f"C{scan_starts[k]:04X}\n")
            await self._wait_until(run, t0 + (k + 1) * h)
            self._fault_check(stmt)
            nxt = points[k + 1] if k + 1 < len(points) else e
            prev = points[k - 1] if k > 0 else e
            delta = e - prev if k > 0 else nxt - e
            de_dt = math.copysign(rate, delta) if delta else 0.0
            self.e_set = e
            i = vm.sample(e, de_dt) if self.cell_on else 0.0
            run.vars[stmt.args[0]] = Var(e, "da")
            run.vars[stmt.args[1]] = self._measure_current(i, stmt)
            yield k
        if scan_starts:
            self._emit(run, "-\n")

    async def _loop_lsv(self, run: _Run, stmt: Stmt) -> Any:
        e0, e1 = self._potential(run, stmt, 2), self._potential(run, stmt, 3)
        step, rate = self._sweep(run, stmt, 4, 5)
        points = [e0, *self._segment(e0, e1, step)]
        yield -1
        async for k in self._voltammetry(run, stmt, points, rate, step):
            yield k

    async def _loop_cv(self, run: _Run, stmt: Stmt) -> Any:
        e0 = self._potential(run, stmt, 2)
        v1, v2 = self._potential(run, stmt, 3), self._potential(run, stmt, 4)
        step, rate = self._sweep(run, stmt, 5, 6)
        nscans = 1
        scan_starts: dict[int, int] | None = None
        if len(stmt.args) > 7:
            m = _NSCANS.match(stmt.args[7])
            assert m is not None
            nscans = int(m.group(1))
            scan_starts = {}
        one = [*self._segment(e0, v1, step), *self._segment(v1, v2, step),
               *self._segment(v2, e0, step)]
        points = [e0]
        for s in range(nscans):
            if scan_starts is not None:
                scan_starts[len(points) if s else 0] = s + 1
            points.extend(one)
        yield -1
        async for k in self._voltammetry(run, stmt, points, rate, step, scan_starts):
            yield k

    async def _loop_eis(self, run: _Run, stmt: Stmt) -> Any:
        e_ac = self._positive(run, stmt, 3)
        f_start, f_end = self._positive(run, stmt, 4), self._positive(run, stmt, 5)
        n = int(self._value(run, stmt, 6))
        e_dc = self._potential(run, stmt, 7)
        for i, f in ((4, f_start), (5, f_end)):
            if not (self.model.f_min * (1 - 1e-9) <= f <= self.model.f_max * (1 + 1e-9)):
                raise ScriptError("4002", stmt.line, stmt.cols[i])
        if n < 1 or e_ac > 1.0:
            raise ScriptError("4002", stmt.line, stmt.cols[6 if n < 1 else 3])
        self.e_set = e_dc
        freqs = eis_frequencies(f_start, f_end, n)
        yield -1
        for f in freqs:
            await self._wait_until(run, run.t + eis_point_s(f))
            self._fault_check(stmt)
            if self.cell_on:
                z = self.cell.impedance(f)
                scale = abs(z) * self.noise
                zr, zi = z.real + self._gauss(scale), z.imag + self._gauss(scale)
            else:  # no cell: nothing to measure
                zr = zi = math.nan
            run.vars[stmt.args[0]] = Var(f, "dc")
            run.vars[stmt.args[1]] = Var(zr, "cc")
            run.vars[stmt.args[2]] = Var(zi, "cd")
            yield f

    async def _general_loop(self, run: _Run, stmt: Stmt) -> None:
        self._emit(run, "L\n")
        try:
            while self._condition(run, stmt):
                await self._block(run, stmt.body)
                await asyncio.sleep(0)  # an empty loop must not starve the line
        except _Break:
            pass
        self._emit(run, "+\n")

    # -- inspection ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def snapshot(self) -> dict[str, Any]:
        self.cell.refresh()
        el = self.electrolyte()
        return {
            "model": self.model_id,
            "running": self.running,
            "cell_on": self.cell_on,
            "mode": self.mode,
            "e_set_v": self.e_set,
            "i_set_a": self.i_set,
            "current_range_a": self.current_range,
            "autorange": self.autorange,
            "molality_mol_kg": el.molality_mol_kg,
            "ec_mass_fraction": el.ec_mass_fraction,
            "temperature_c": el.temperature_c,
            "conductivity_s_m": el.conductivity_s_m,
            "r_s_ohm": self.cell.r_s(),
            "soc": self.cell.soc,
            "capacity_c": self.cell.capacity_c,
            "charge_in_c": self.cell.charge_in_c,
            "charge_out_c": self.cell.charge_out_c,
            "scripts_run": self.scripts_run,
            "aborts": self.aborts,
            "packages_sent": self.packages_sent,
            "last_error": self.last_error,
        }

    def is_safe(self) -> bool:
        return not self.cell_on and not self.running

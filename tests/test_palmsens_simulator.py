"""The EmStat simulator against the MethodSCRIPT page, byte for byte, without the driver:
a plain Link on the simulator's pseudo-terminal, and the page's encoding rules decoded
here independently."""

from __future__ import annotations

import math
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from labctl.clock import ScaledClock
from labctl.transport import Link
from simulators.conductivity import conductivity_s_m, electrolyte_from_contents, optimum
from simulators.palmsens import EmStatSimulator
from simulators.serving import Served, serve
from simulators.world import World

PREFIX_EXP = {"a": -18, "f": -15, "p": -12, "n": -9, "u": -6, "m": -3, " ": 0, "k": 3,
              "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def decode_var(text: str) -> tuple[str, float, str, list[str]]:
    """type, value, prefix character, metadata fields — straight from the page."""
    head, *meta = text.split(",")
    vtype = head[:2]
    if head[2:] == "     nan":
        return vtype, math.nan, "", meta
    raw, prefix = head[2:9], head[9]
    n = int(raw, 16) - 0x8000000
    exp = 0 if prefix == "i" else PREFIX_EXP[prefix]
    return vtype, n * 10.0**exp, prefix, meta


class Line:
    """A host written from the page: send bytes, read lines."""

    def __init__(self, link: Link):
        self.link = link

    async def send(self, data: bytes) -> None:
        await self.link.write(data)

    async def line(self, timeout: float = 10.0) -> str:
        return (await self.link.read_until(b"\n", timeout)).decode("latin-1")

    async def run(self, script: str, timeout: float = 20.0) -> list[str]:
        """`e`, the script lines, an empty line; every output line up to the final one."""
        await self.send(b"e\n" + script.strip("\n").encode() + b"\n\n")
        out = []
        while True:
            ln = await self.line(timeout)
            out.append(ln)
            if ln == "\n":
                return out


@pytest.fixture
async def served() -> AsyncIterator[tuple[EmStatSimulator, Line]]:
    sim = EmStatSimulator(clock=ScaledClock(1000), options={"seed": 3})
    srv: Served = await serve([sim], "pty")
    link = Link(srv.endpoint)
    await link.open()
    try:
        yield sim, Line(link)
    finally:
        await link.close()
        await srv.close()


async def test_communication_commands(served: Any) -> None:
    _sim, host = served
    await host.send(b"t\n")
    first, second = await host.line(), await host.line()
    assert first.startswith("tes4_hr") and "#" in first
    assert second.endswith("*\n")
    await host.send(b"i\n")
    assert await host.line() == "iES4SIM0001\n"
    await host.send(b"v\n")
    assert await host.line() == "v0104\n"
    await host.send(b"Z\n")
    assert await host.line() == "Z!0006\n"
    await host.send(b"q\n")
    assert await host.line() == "q!0003\n"
    await host.send(b"G01\n")
    reg = await host.line()
    assert reg.startswith("G") and int(reg[1:], 16) == 0


async def test_page_example_package(served: Any) -> None:
    _, host = served
    out = await host.run("""
var p
var c
store_var p -499905u da
store_var c -57847747p ba
pck_start
pck_add p
pck_add c
pck_end
""")
    assert out[0] == "e\n"
    assert out[1] == "Pda7F85F3Fu;ba48D503Dp\n"  # the page's example, without metadata
    assert out[-1] == "\n"
    (t1, v1, _, _), (t2, v2, _, _) = (decode_var(v) for v in out[1][1:-1].split(";"))
    assert (t1, t2) == ("da", "ba")
    assert v1 == pytest.approx(-0.499905, abs=1e-12)
    assert v2 == pytest.approx(-57.847747e-6, rel=1e-12)


@pytest.mark.parametrize("prefix,exp", list(PREFIX_EXP.items()))
async def test_every_si_prefix(served: Any, prefix: str, exp: int) -> None:
    """A value just too large for the next smaller prefix is sent with this one, for
    positive and negative values."""
    _, host = served
    mant = 150000000 if prefix != "a" else 150  # > 2^27 one prefix down
    # literal: mant x 10^(exp-3), written with the prefix below (or the same for 'a')
    lower = {v: k for k, v in PREFIX_EXP.items()}.get(exp - 3, "a")
    literal = f"{mant}{lower.strip()}" if prefix != "a" else f"{mant}a"
    expected = mant * 10.0 ** (exp - 3) if prefix != "a" else 150e-18
    out = await host.run(f"""
var x
var y
store_var x {literal} ab
store_var y -{literal} ab
pck_start
pck_add x
pck_add y
pck_end
""")
    (_, v1, p1, _), (_, v2, p2, _) = (decode_var(v) for v in out[1][1:-1].split(";"))
    assert p1 == prefix and p2 == prefix
    assert v1 == pytest.approx(expected, rel=1e-6)
    assert v2 == pytest.approx(-expected, rel=1e-6)
    raw = int(out[1][3:10], 16)
    assert 0 <= raw <= 0xFFFFFFF


async def test_integers_and_variables_arithmetic(served: Any) -> None:
    _, host = served
    out = await host.run("""
var n
store_var n -5i ja
add_var n 12i
pck_start
pck_add n
pck_end
""")
    vtype, value, prefix, _ = decode_var(out[1][1:-1])
    assert (vtype, value, prefix) == ("ja", 7.0, "i")


async def test_nan_when_nothing_is_measured(served: Any) -> None:
    """EIS with the cell off measures no impedance: Z' and Z'' go out as NaN."""
    _, host = served
    out = await host.run("""
var f
var r
var j
meas_loop_eis f r j 10m 1k 100 3 0
pck_start
pck_add f
pck_add r
pck_add j
pck_end
endloop
""")
    assert out[1] == "M000B\n"
    packages = [ln for ln in out if ln.startswith("P")]
    assert len(packages) == 3
    for pkg in packages:
        f, r, j = pkg[1:-1].split(";")
        assert r == "cc     nan" and j == "cd     nan"
        assert decode_var(f)[1] > 0
    assert [decode_var(p[1:-1].split(";")[0])[1] for p in packages] == pytest.approx(
        [1000.0, 316.227766, 100.0], rel=1e-6)
    assert out[-2] == "*\n"


async def test_chronoamperometry_framing_and_metadata(served: Any) -> None:
    sim, host = served
    out = await host.run("""
var p
var c
var t
set_pgstat_chan 0
set_pgstat_mode 2
set_range ba 100u
set_e 3.6
cell_on
timer_start
meas_loop_ca p c 3.6 100m 1
  timer_get t
  pck_start
  pck_add t
  pck_add p
  pck_add c
  pck_end
endloop
on_finished:
cell_off
""")
    assert out[:2] == ["e\n", "M0007\n"]
    packages = [ln for ln in out if ln.startswith("P")]
    assert len(packages) == 10
    times, currents = [], []
    for pkg in packages:
        t, p, c = pkg[1:-1].split(";")
        times.append(decode_var(t)[1])
        assert decode_var(p)[:2] == ("da", pytest.approx(3.6))
        vtype, i, _, meta = decode_var(c)
        assert vtype == "ba" and meta[0][0] == "1" and meta[1][0] == "2"
        currents.append(i)
    assert times == pytest.approx([0.1 * k for k in range(1, 11)])
    assert currents[0] > currents[-1] > 0  # Cottrell decay of the anodic step
    assert out[-2:] == ["*\n", "\n"]
    assert not sim.cell_on  # on_finished ran


async def test_cv_scans_are_framed(served: Any) -> None:
    _, host = served
    out = await host.run("""
var p
var c
cell_on
meas_loop_cv p c 3 3.1 2.9 50m 1 nscans(2)
  pck_start
  pck_add p
  pck_add c
  pck_end
endloop
on_finished:
cell_off
""")
    markers = [ln for ln in out if ln[0] in "MC-*"]
    assert markers == ["M0001\n", "C0001\n", "-\n", "C0002\n", "-\n", "*\n"]
    potentials = [decode_var(ln[1:-1].split(";")[0])[1] for ln in out if ln.startswith("P")]
    one_scan = [3.0, 3.05, 3.1, 3.05, 3.0, 2.95, 2.9, 2.95, 3.0]
    assert potentials == pytest.approx(one_scan + one_scan[1:])


async def test_general_loop_conditions_and_strings(served: Any) -> None:
    _, host = served
    out = await host.run("""
var n
store_var n 0i ja
loop n < 10i
  add_var n 1i
  if n == 2i
    send_string "two"
  elseif n >= 4i
    breakloop
  else
    pck_start
    pck_add n
    pck_end
  endif
endloop
send_string "done"
""")
    assert out == ["e\n", "L\n", "Pja8000001i\n", "Ttwo\n", "Pja8000003i\n", "+\n",
                   "Tdone\n", "\n"]


@pytest.mark.parametrize("script,code,line,col", [
    ("var x\nfrobnicate 1", "4001", 2, 1),
    ("var x\nstore_var x 12q ab", "4002", 2, 13),
    ("var x\nstore_var y 1 ab", "4002", 2, 11),
    ("var p\nvar c\nmeas_loop_ocp p 1 1\nmeas_loop_ocp c 1 1\nendloop\nendloop", "400B", 4, 1),
    ("var x\nendloop", "4004", 2, 1),
    ('send_string "open', "4004", 1, 13),
    ("var p\nvar c\nmeas_loop_lsv p c 0 9 10m 1\nendloop", "4002", 3, 21),
])
async def test_errors_answer_code_line_and_column(
    served: Any, script: str, code: str, line: int, col: int
) -> None:
    sim, host = served
    out = await host.run(script)
    assert out[0] == "e\n"
    assert out[-2] == f"!{code}: Line {line}, Col {col}\n"
    assert out[-1] == "\n"
    await host.send(b"v\n")
    assert await host.line() == "v0104\n"  # still serving
    assert not sim.cell_on


async def test_abort_runs_on_finished_and_leaves_cell_off(served: Any) -> None:
    sim, host = served
    await host.send(b"e\nvar p\nvar c\ncell_on\nmeas_loop_ca p c 3.2 1 100000\n"
                    b"pck_start\npck_add c\npck_end\nendloop\non_finished:\ncell_off\n"
                    b'send_string "bye"\n\n')
    assert await host.line() == "e\n"
    assert await host.line() == "M0007\n"
    assert (await host.line()).startswith("Pba")
    assert sim.cell_on
    await host.send(b"Z\n")
    rest = []
    while True:
        ln = await host.line()
        rest.append(ln)
        if ln == "\n":
            break
    assert "Z\n" in rest
    assert rest[-2:] == ["Tbye\n", "\n"]
    assert all(ln.startswith("P") for ln in rest[: rest.index("Z\n")])
    assert not sim.cell_on and sim.is_safe()
    await host.send(b"Z\n")
    assert await host.line() == "Z!0006\n"


async def test_commands_while_running_are_refused(served: Any) -> None:
    _sim, host = served
    await host.send(b"e\nvar p\nmeas_loop_ocp p 1 100000\nendloop\n\n")
    assert await host.line() == "e\n"
    assert await host.line() == "M0009\n"
    await host.send(b"t\n")
    assert await host.line() == "t!0006\n"
    await host.send(b"Z\n")
    assert await host.line() == "Z\n"
    assert await host.line() == "\n"


async def test_injected_critical_overload(served: Any) -> None:
    sim, host = served
    sim.faults.error = "0032"
    out = await host.run("var p\nvar c\ncell_on\nmeas_loop_ca p c 3 100m 1\n"
                         "pck_start\npck_add c\npck_end\nendloop\non_finished:\ncell_off")
    assert out[:2] == ["e\n", "M0007\n"]
    assert out[-2] == "!0032: Line 4, Col 1\n" and out[-1] == "\n"
    assert not sim.cell_on


async def test_overload_bit_when_current_exceeds_fixed_range(served: Any) -> None:
    _sim, host = served
    out = await host.run("var p\nvar c\nset_range ba 1u\ncell_on\n"
                         "meas_loop_ca p c 5 100m 300m\npck_start\npck_add c\npck_end\nendloop\n"
                         "on_finished:\ncell_off")
    for pkg in [ln for ln in out if ln.startswith("P")]:
        _, value, _, meta = decode_var(pkg[1:-1])
        assert int(meta[0][1:], 16) & 0x2  # overload
        assert abs(value) == pytest.approx(1e-6)  # clipped at the range


async def test_random_bytes_never_kill_the_line(served: Any) -> None:
    _sim, host = served
    rng = random.Random(7)
    for _ in range(40):
        await host.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60))))
    await host.send(b"\n\n\nZ\n")  # end any half-received script, then nothing runs
    await host.link.read_until(b"Z", 10)
    host.link.reset_input()
    await host.send(b"v\n")
    while True:
        ln = await host.line()
        if ln == "v0104\n":
            break


def test_conductivity_model_has_a_maximum_near_one_molal() -> None:
    m_best, _, sigma_best = optimum(0.5, 25.0)
    assert 0.8 < m_best < 1.3
    assert 0.5 < sigma_best < 2.0  # 5–20 mS/cm
    for m in (0.2, 0.5, 1.6, 2.5):
        assert conductivity_s_m(m, 0.5, 25.0) < sigma_best
    assert conductivity_s_m(0.0, 0.5, 25.0) < 1e-5  # no salt: only a trace
    assert conductivity_s_m(1.0, 0.5, 60.0) > conductivity_s_m(1.0, 0.5, 25.0) > \
        conductivity_s_m(1.0, 0.5, -10.0)
    _m_opt, w_opt, s_opt = optimum(None, 25.0)
    assert s_opt >= sigma_best and 0 < w_opt < 1


def test_electrolyte_from_world_vessel() -> None:
    world = World.from_spec({
        "materials": {"EC": {"density_g_ml": 1.32}, "DMC": {"density_g_ml": 1.07},
                      "LiPF6": {"phase": "solid", "molar_mass_g_mol": 151.905}},
        "vessels": {"cell_vial": {"capacity": "20 mL",
                                  "contents": {"EC": "5 g", "DMC": "5 g", "LiPF6": "1.5191 g"}}},
    })
    world.set_temperature("cell_vial", 40.0)
    sim = EmStatSimulator(world=world, options={"vessel": "cell_vial"})
    el = sim.electrolyte()
    assert el.molality_mol_kg == pytest.approx(1.0, rel=1e-4)
    assert el.ec_mass_fraction == pytest.approx(0.5)
    assert el.temperature_c == 40.0
    assert sim.cell.r_s() == pytest.approx(100.0 / conductivity_s_m(el.molality_mol_kg, 0.5, 40.0))
    dry = electrolyte_from_contents({"LiPF6": 1.0}, 25.0, liquid=set())
    assert not dry.wet and dry.conductivity_s_m == 0.0


def test_standalone_entry_point(python: str) -> None:
    """`python -m simulators palmsens-emstat` prints its endpoint and serves."""
    import json
    import subprocess

    proc = subprocess.Popen([python, "-m", "simulators", "palmsens-emstat", "--time-scale",
                             "100"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["kind"] == "palmsens-emstat"
        fd = os.open(ready["endpoint"], os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, b"v\n")
            got = b""
            while not got.endswith(b"\n"):
                got += os.read(fd, 64)
            assert got == b"v0104\n"
        finally:
            os.close(fd)
    finally:
        proc.terminate()
        proc.wait(10)

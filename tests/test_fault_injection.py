"""Faults on the simulated bench (config/sim.toml) and what survives them.

- Every instrument: its simulator disconnecting, going silent, answering garbage, losing a
  reply, answering a vendor error or stalling in the middle of a step. The run fails or
  recovers as the step's policy (on_error, retries) says, the error names the device and
  the step, and every instrument ends safe (checked on the simulators' side).
- Disk full while a measurement writes its data (its data folder, or the whole data dir):
  a clear failure, the journal whole, no hang.
- SIGKILL of a real `labctl run` at random moments, many times: every journal line parses,
  no completed step is lost or repeated, `labctl resume` finishes the run.
- SIGKILL of `labctl serve` mid-run, then a restart: the result is delivered once; the run
  in progress is answered "interrupted" (nothing re-run), the queued ones run.
- Broker restart storms under a running `labctl serve`: the run completes, its result is
  delivered once; a command sent during the storm (or dropped by the broker) is sent again
  until answered, and runs once.

Every wait is bounded; nothing here asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from labctl.bench import Bench
from labctl.config import BenchConfig, load_config
from simulators.base import Faults
from tests.config_support import load_edited, reply_timeout

ROOT = Path(__file__).resolve().parent.parent
SIM_CONFIG = ROOT / "config" / "sim.toml"
TIME_SCALE = 1000.0
#: reply timeout of every device in these tests: the simulators answer from the same
#: machine, a short one only shortens the runs that meet a silent instrument
REPLY_TIMEOUT = "0.3 s"
WAIT = 60.0  # bound on any single run (wall seconds)
pytestmark = pytest.mark.timeout(300)

MATERIALS = {
    "EC": {"name": "ethylene carbonate", "location": "res_ec"},
    "DMC": {"name": "dimethyl carbonate", "location": "res_dmc"},
    "TEOS": {"name": "tetraethyl orthosilicate", "location": "res_teos"},
    "EtOH": {"name": "ethanol", "location": "res_etoh"},
    "LiPF6": {"name": "lithium hexafluorophosphate", "location": "dispenser"},
}


def recipe(name: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema": "labctl.recipe/1", "name": name, "version": "1",
            "description": "fault injection test", "materials": MATERIALS, "steps": steps}


def sim_config() -> BenchConfig:
    return load_edited(SIM_CONFIG, reply_timeout(REPLY_TIMEOUT))


@contextlib.asynccontextmanager
async def sim_bench(data_dir: Path) -> AsyncIterator[Bench]:
    bench = Bench(sim_config(), data_dir=data_dir, time_scale=TIME_SCALE)
    await bench.start()
    try:
        yield bench
    finally:
        await bench.close()


def simulators(bench: Bench) -> dict[str, Any]:
    sims: dict[str, Any] = bench.instruments.simulation.simulators
    return sims


def unsafe(bench: Bench) -> list[str]:
    return [name for name, sim in simulators(bench).items() if not sim.is_safe()]


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll a condition; the timeout only bounds a hang (nothing asserts how long)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.01)


async def run_with_fault(bench: Bench, doc: dict[str, Any], when_step: str,
                         inject: Callable[[], Any]) -> dict[str, Any]:
    """Submit a recipe and call `inject` the moment step `when_step` starts (the executor
    journals a step before dispatching it); the run's result document."""
    injected: list[bool] = []

    async def watch() -> None:
        async for ev in bench.subscribe():
            if ev.get("event") == "step_started" and ev.get("step") == when_step:
                out = inject()
                if inspect.isawaitable(out):
                    await out
                injected.append(True)
                return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.01)  # the subscription is in place once the watcher waits
    try:
        run_id = await bench.submit(doc, instigator="operator:fault-test")
        result = await asyncio.wait_for(bench.wait(run_id), WAIT)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert injected, f"step {when_step} never started, no fault injected: {result['errors']}"
    return result


# --------------------------------------------------------------------------- instruments
@dataclass(frozen=True)
class Target:
    """One instrument, a recipe whose step `target` uses it, when to strike (`target`
    for steps long enough to be hit mid-way, the `hold` wait before quick ones), and the
    simulator's vendor error (sent once)."""

    device: str
    steps: list[dict[str, Any]]
    strike: str
    vendor_error: Any
    #: what the simulator's stall fault does to the step: "fails" it, or the driver
    #: "recovers" (a balance that does not settle once is asked again); None: no stall
    stall: str | None = "fails"

    def doc(self, **policy: Any) -> dict[str, Any]:
        steps = [dict(s) for s in self.steps]
        for s in steps:
            if s["id"] == "target":
                s.update(policy)
        return recipe(f"fault_{self.device}", steps)


def _pump_steps(pump: str, reservoir: str) -> list[dict[str, Any]]:
    return [{"id": "init", "device": pump, "action": "initialize", "idempotent": True},
            {"id": "route", "device": "sel_valve", "action": "move",
             "args": {"position": "waste"}},
            {"id": "hold", "wait": "20 s"},
            {"id": "target", "device": pump, "action": "transfer",
             "args": {"volume": "2 mL", "from": reservoir, "to": "waste", "flow": "2 mL/min"}}]


HOLD = {"id": "hold", "wait": "20 s"}
TARGETS = [
    Target("pump_ec", _pump_steps("pump_ec", "res_ec"), "target", 9),
    Target("pump_dmc", _pump_steps("pump_dmc", "res_dmc"), "target", 9),
    Target("pump_teos", [HOLD, {"id": "target", "device": "pump_teos", "action": "transfer",
                                "args": {"volume": "1 mL", "flow": "1 mL/min"}}],
           "target", "A?S"),
    Target("sel_valve", [HOLD, {"id": "target", "device": "sel_valve", "action": "move",
                                "args": {"position": "coat_vial"}}], "hold", "bad"),
    Target("rinse_pump", [{"id": "route", "device": "sel_valve", "action": "move",
                           "args": {"position": "waste"}}, HOLD,
                          {"id": "target", "device": "rinse_pump", "action": "transfer",
                           "args": {"volume": "5 mL", "flow": "10 mL/min"}}], "target", 4),
    Target("block_heater", [HOLD, {"id": "target", "device": "block_heater", "action": "hold",
                                   "args": {"temperature": "40 degC", "duration": "5 min"}},
                            {"id": "off", "device": "block_heater", "action": "off"}],
           # its stall is a heater failure; struck as the hold starts it goes unnoticed:
           # tests/fault_injection_findings.py (mid-hold, it is caught: below)
           "target", 4, stall=None),
    Target("hotplate", [HOLD, {"id": "target", "device": "hotplate", "action": "stir",
                               "args": {"speed": "600 rpm", "duration": "5 min"}}],
           "target", 2, stall=None),
    Target("balance", [HOLD, {"id": "target", "device": "balance", "action": "weigh"}],
           "hold", "EL", stall="recovers"),
    Target("dispenser", [HOLD, {"id": "target", "device": "dispenser", "action": "dispense",
                                "args": {"mass": "50 mg", "material": "LiPF6"}}],
           "target", 5),
    Target("potentiostat", [
        {"id": "init", "device": "pump_ec", "action": "initialize", "idempotent": True},
        {"id": "route", "device": "sel_valve", "action": "move",
         "args": {"position": "cell_vial"}},
        {"id": "fill", "device": "pump_ec", "action": "transfer",
         "args": {"volume": "2 mL", "from": "res_ec", "to": "cell_vial", "flow": "20 mL/min"}},
        HOLD,
        {"id": "target", "device": "potentiostat", "action": "ocv",
         "args": {"duration": "2 min", "sample_interval": "1 s"}}], "target", "0032"),
]
BY_DEVICE = {t.device: t for t in TARGETS}
#: targets whose step is a transfer: never retried as a step
TRANSFERS = {"pump_ec", "pump_dmc", "pump_teos", "rinse_pump"}
#: syringe pumps on the DT protocol: a lost answer to a move command cannot be resent (the
#: move may have run); the other pumps' drivers repeat idempotent setpoint writes safely
DT_PUMPS = {"pump_ec", "pump_dmc"}
DEVICES = [t.device for t in TARGETS]


def the_error(result: dict[str, Any]) -> dict[str, Any]:
    steps = [e for e in result["errors"] if e.get("step")]
    assert steps, f"no step error in {result['errors']}"
    return steps[0]


async def assert_all_safe(bench: Bench, *, besides: str | None = None) -> None:
    """Every simulator in its safe state; `besides` (an instrument cut off from the host)
    may take until its own safety (watchdog, end of move) puts it there."""
    others = [n for n in unsafe(bench) if n != besides]
    assert others == [], f"not safe: {others}"
    if besides is not None:
        await eventually(lambda: simulators(bench)[besides].is_safe(),
                         f"{besides} safe by itself")


def heal(bench: Bench, device: str) -> None:
    sim = simulators(bench)[device]
    sim.faults = Faults()
    sim.reconnect()


@pytest.mark.parametrize("device", DEVICES)
async def test_instrument_disconnected_mid_step_fails_the_run_naming_it(
        device: str, tmp_path: Path) -> None:
    """The line goes dead (default policy, abort): the run fails, the error names the
    device and the step, every other instrument is safe and the cut-off one gets there by
    its own means (end of its move, watchdog, end of its script) — or the result says its
    safe state could not be confirmed."""
    t = BY_DEVICE[device]
    async with sim_bench(tmp_path / "runs") as bench:
        sim = simulators(bench)[device]
        result = await run_with_fault(bench, t.doc(), t.strike, sim.disconnect)
        assert result["status"] == "failed", result["errors"]
        err = the_error(result)
        assert err["device"] == device and err["step"] == "target", err
        safe_state = [e for e in result["errors"] if e.get("type") == "SafeStateError"]
        cut_off_ok = sim.is_safe() or any(device in e["devices"] for e in safe_state)
        if not cut_off_ok:
            await assert_all_safe(bench, besides=device)
        else:
            assert [n for n in unsafe(bench) if n != device] == []
        # the line comes back: the operator's safe state reaches it
        heal(bench, device)
        assert await bench.instruments.safe_state_all() == {}
        assert unsafe(bench) == []


@pytest.mark.parametrize("device", DEVICES)
async def test_instrument_gone_silent_mid_step_fails_the_run_and_ends_safe(
        device: str, tmp_path: Path) -> None:
    """It still hears but never answers: the run fails naming it, and the safe-state
    commands the host sends still reach it, so everything ends safe."""
    t = BY_DEVICE[device]
    async with sim_bench(tmp_path / "runs") as bench:
        sim = simulators(bench)[device]

        def mute() -> None:
            sim.faults.silence = True

        result = await run_with_fault(bench, t.doc(), t.strike, mute)
        assert result["status"] == "failed", result["errors"]
        err = the_error(result)
        assert err["device"] == device and err["step"] == "target", err
        assert err["type"] in ("DeviceTimeout", "StepTimeout", "DeviceError", "ProtocolError")
        await assert_all_safe(bench)


@pytest.mark.parametrize("device", DEVICES)
async def test_garbage_and_a_lost_reply_are_recovered_under_a_retry_policy(
        device: str, tmp_path: Path) -> None:
    """Garbage before a reply, then one reply lost: with `retries: 1` the run completes
    (the driver or the step retry gets over it) and ends safe. A transfer may not be
    retried as a step (a failed attempt may have moved part of its volume: validation
    refuses `retries` on it): the pump's driver gets over garbage, and a lost answer to its
    move command fails the run rather than move the volume twice."""
    t = BY_DEVICE[device]
    retries = 0 if device in TRANSFERS else 1
    async with sim_bench(tmp_path / "runs") as bench:
        sim = simulators(bench)[device]

        def garble() -> None:
            sim.faults.garbage = b"\x00\xff#!garbage\r\n"

        result = await run_with_fault(bench, t.doc(retries=retries), t.strike, garble)
        assert result["status"] == "completed", result["errors"]
        await assert_all_safe(bench)

        def lose_one() -> None:
            sim.faults.silence = 1

        result = await run_with_fault(bench, t.doc(retries=retries), t.strike, lose_one)
        assert sim.faults.silence == 0  # the fault did strike
        if device in DT_PUMPS:
            # the lost answer was the move command's: the pump may have run it, so the run
            # fails naming the pump instead of sending the move again (a doubled volume)
            assert result["status"] == "failed", result
            assert the_error(result)["device"] == device
        else:
            assert result["status"] == "completed", result["errors"]
        await assert_all_safe(bench)


@pytest.mark.parametrize("device", DEVICES)
async def test_vendor_error_mid_step_follows_on_error(device: str, tmp_path: Path) -> None:
    """The instrument answers its own error once. `on_error: continue` records it (device,
    step) and the run goes on to completion; the default policy fails the run with the
    device named; either way everything ends safe."""
    t = BY_DEVICE[device]
    async with sim_bench(tmp_path / "runs") as bench:
        sim = simulators(bench)[device]

        def fault() -> None:
            sim.faults.error = t.vendor_error

        result = await run_with_fault(bench, t.doc(on_error="continue"), t.strike, fault)
        assert result["status"] == "completed", result["errors"]
        recorded = [e for e in result["errors"] if e.get("step") == "target"]
        assert sim.faults.error is None  # it struck
        assert recorded and recorded[0]["device"] == device and recorded[0]["continued"]
        await assert_all_safe(bench)
        heal(bench, device)
        await bench.instruments.safe_state_all()

        result = await run_with_fault(bench, t.doc(), t.strike, fault)
        assert result["status"] == "failed", result["errors"]
        err = the_error(result)
        assert err["device"] == device and err["step"] == "target", err
        await assert_all_safe(bench)


@pytest.mark.parametrize("device", [t.device for t in TARGETS if t.stall])
async def test_stall_mid_move_fails_the_run_naming_the_device(device: str,
                                                              tmp_path: Path) -> None:
    """A stalled motor, a jammed valve, an overload mid-measurement: the run fails naming
    the device (a balance that does not settle once is asked again and the run goes on);
    everything ends safe."""
    t = BY_DEVICE[device]
    async with sim_bench(tmp_path / "runs") as bench:
        sim = simulators(bench)[device]

        def stall() -> None:
            sim.faults.stall = True

        result = await run_with_fault(bench, t.doc(), t.strike, stall)
        assert sim.faults.stall is False  # it struck
        if t.stall == "recovers":
            assert result["status"] == "completed", result["errors"]
        else:
            assert result["status"] == "failed", result["errors"]
            err = the_error(result)
            assert err["device"] == device and err["step"] == "target", err
        await assert_all_safe(bench)


async def strike_mid_hold(device: str, fault: str, value: object,
                          tmp_path: Path) -> dict[str, Any]:
    """A 30-minute hold (1.8 s of wall time) on `device`, struck 0.3 s into it."""
    t = BY_DEVICE[device]
    steps = [dict(s) for s in t.steps]
    for s in steps:
        if s["id"] == "target":
            s["args"] = {**s["args"], "duration": "30 min"}
    async with sim_bench(tmp_path / "runs") as bench:
        sim = simulators(bench)[device]

        async def strike() -> None:
            await asyncio.sleep(0.3)
            setattr(sim.faults, fault, value)

        result = await run_with_fault(bench, recipe(f"mid_hold_{device}", steps), "target",
                                      lambda: asyncio.ensure_future(strike()))
        await assert_all_safe(bench)
        return result


async def test_hotplate_tripping_mid_stir_fails_the_run(tmp_path: Path) -> None:
    """The hotplate switches itself off (Er 2) well into a stir: the run must not record
    mixing that did not happen; it fails naming the hotplate."""
    result = await strike_mid_hold("hotplate", "error", 2, tmp_path)
    assert result["status"] == "failed", "the stir completed although the motor stopped"
    err = the_error(result)
    assert err["device"] == "hotplate" and err["step"] == "target", err


async def test_heater_failing_mid_hold_fails_the_run(tmp_path: Path) -> None:
    """The heated block's heater fails well into a hold: the block cools, the run fails
    naming it."""
    result = await strike_mid_hold("block_heater", "stall", True, tmp_path)
    assert result["status"] == "failed", "the hold completed although the block went cold"
    err = the_error(result)
    assert err["device"] == "block_heater" and err["step"] == "target", err


# --------------------------------------------------------------------------- disk full
MEASURE = [
    {"id": "init", "device": "pump_ec", "action": "initialize", "idempotent": True},
    {"id": "route", "device": "sel_valve", "action": "move", "args": {"position": "cell_vial"}},
    {"id": "fill", "device": "pump_ec", "action": "transfer",
     "args": {"volume": "2 mL", "from": "res_ec", "to": "cell_vial", "flow": "20 mL/min"}},
    # 18 000 points at 1000x: far more than the small volume below holds
    {"id": "measure", "device": "potentiostat", "action": "ocv",
     "args": {"duration": "30 min", "sample_interval": "0.1 s"}},
    {"id": "after", "wait": "1 s"},
]


@contextlib.contextmanager
def small_volume(mount_point: Path, size: str) -> Any:
    """A real, small filesystem (tmpfs) mounted at `mount_point` for the duration."""
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                   check=True, capture_output=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def journal_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a journal, each complete JSON, seq strictly increasing."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), f"the journal ends mid-line: {raw[-120:]!r}"
    events = [json.loads(line) for line in raw.splitlines()]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), "journal sequence numbers out of order"
    return events


async def test_disk_full_while_writing_data_is_a_clear_failure_with_the_journal_whole(
        tmp_path: Path) -> None:
    """The run's data folder is a small volume of its own that the measurement fills: the
    step fails with 'No space left on device', naming the step and the device, the run
    fails after safe state, and the journal is whole and says so to the end."""
    async with sim_bench(tmp_path / "runs") as bench:
        # a queued run already has its folder: the queue held (the bench runs 4 at once, a
        # blocking run would not keep it waiting), the small volume mounted on its data/
        bench.runs.hold()
        run_id = await bench.submit(recipe("disk_full", MEASURE),
                                    instigator="operator:fault-test")
        folder = tmp_path / "runs" / run_id
        with small_volume(folder / "data", "64k"):
            bench.runs.release()
            result = await asyncio.wait_for(bench.wait(run_id), WAIT)
            assert result["status"] == "failed", result
            err = the_error(result)
            assert err["step"] == "measure" and err["device"] == "potentiostat", err
            assert "No space left on device" in err["message"]
            events = journal_lines(folder / "events.jsonl")
            assert events[-1]["event"] == "run_finished"
            assert events[-1]["status"] == "failed"
            assert [e["event"] for e in events].count("step_failed") == 1
            assert json.loads((folder / "result.json").read_text())["status"] == "failed"
            assert bench.store.index.get_run(run_id)["status"] == "failed"
            await assert_all_safe(bench)


async def test_disk_of_the_whole_data_dir_full_fails_the_run_with_the_journal_whole(
        tmp_path: Path) -> None:
    """The disk holding the whole data dir (journal, index, data) fills mid-measurement:
    the run ends failed (no hang: `Bench.wait` returns) and the journal has no torn line."""
    root = tmp_path / "runs"
    with small_volume(root, "4m"):
        async with sim_bench(root) as bench:

            def fill_the_disk() -> None:
                try:
                    with open(root / "filler", "wb") as f:
                        while True:
                            f.write(bytes(4096))
                            f.flush()
                except OSError:
                    pass  # full

            async def watch() -> None:
                async for ev in bench.subscribe():
                    if ev.get("event") == "step_started" and ev.get("step") == "measure":
                        fill_the_disk()
                        return

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.01)
            run_id = await bench.submit(recipe("disk_full", MEASURE), instigator="operator:t")
            try:
                result = await asyncio.wait_for(bench.wait(run_id), WAIT)
            finally:
                watcher.cancel()
                (root / "filler").unlink(missing_ok=True)
            assert result["status"] == "failed", result
            journal_lines(root / run_id / "events.jsonl")


# --------------------------------------------------------------------------- SIGKILL of labctl run
LABCTL = [sys.executable, "-m", "labctl"]
KILL_ITERATIONS = 10
KILL_RECIPE = recipe("kill_test", [
    {"id": "init", "parallel": [
        {"id": "init_ec", "device": "pump_ec", "action": "initialize", "idempotent": True},
        {"id": "init_dmc", "device": "pump_dmc", "action": "initialize", "idempotent": True},
        {"id": "home", "device": "sel_valve", "action": "home", "idempotent": True}]},
    {"id": "route", "device": "sel_valve", "action": "move", "args": {"position": "waste"},
     "idempotent": True},
    {"id": "ec", "device": "pump_ec", "action": "transfer",
     "args": {"volume": "1 mL", "from": "res_ec", "to": "waste", "flow": "20 mL/min"}},
    {"id": "dmc", "device": "pump_dmc", "action": "transfer",
     "args": {"volume": "1 mL", "from": "res_dmc", "to": "waste", "flow": "20 mL/min"}},
    {"id": "salt", "device": "dispenser", "action": "dispense",
     "args": {"mass": "20 mg", "material": "LiPF6"}},
    {"id": "teos", "device": "pump_teos", "action": "transfer",
     "args": {"volume": "0.5 mL", "flow": "5 mL/min"}},
    {"id": "mix", "device": "hotplate", "action": "stir",
     "args": {"speed": "300 rpm", "duration": "0.3 s"}, "idempotent": True},
    {"id": "rest", "wait": "0.3 s"},
])


@pytest.fixture(scope="module")
def hardware_bench(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """config/sim.toml's instruments served by `labctl sim serve` in a process of their
    own (they outlive the control software, as hardware does), and a bench config that
    reaches them on their pseudo-terminals (simulate = false)."""
    server = subprocess.Popen([*LABCTL, "sim", "serve", "--config", str(SIM_CONFIG),
                               "--time-scale", str(TIME_SCALE)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        cfg = load_config(SIM_CONFIG)
        endpoints: dict[str, str] = {}
        for _ in cfg.enabled_devices():
            line = json.loads(server.stdout.readline())
            endpoints[line["name"]] = line["endpoint"]
        text = SIM_CONFIG.read_text().replace("simulate = true", "simulate = false")
        # the host runs on real time, the instruments 1000x faster: a watchdog fed every
        # quarter of its period on the host's clock would trip on theirs
        text = re.sub(r"(?m)^watchdog = .*$", "", text)
        for name, dev in cfg.devices.items():
            if name in endpoints:
                text = text.replace(f'endpoint = "{dev.endpoint}"',
                                    f'endpoint = "{endpoints[name]}"')
        folder = tmp_path_factory.mktemp("hardware")
        (folder / "bench.toml").write_text(text)
        (folder / "kill_test.json").write_text(json.dumps(KILL_RECIPE))
        yield folder
    finally:
        server.terminate()
        server.wait(30)


def start_run(folder: Path, data: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*LABCTL, "run", str(folder / "kill_test.json"), "--config",
                             str(folder / "bench.toml"), "--data-dir", str(data), "--json",
                             "--operator", "kill-test"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def resume_run(folder: Path, data: Path, run_id: str,
               *decisions: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LABCTL, "resume", run_id, "--config", str(folder / "bench.toml"),
                           "--data-dir", str(data), "--json", "--operator", "kill-test",
                           *decisions], cwd=ROOT, capture_output=True, text=True, timeout=120)


def run_folders(data: Path) -> list[Path]:
    return [p for p in data.iterdir() if p.is_dir()] if data.exists() else []


def test_sigkill_of_labctl_run_at_random_moments(hardware_bench: Path, tmp_path: Path) -> None:
    """Kill `labctl run` (SIGKILL) at a random moment of its run, again and again: every
    journal line parses, every step recorded as completed stays completed and is never
    started again, and `labctl resume` (deciding on in-doubt steps: accept the first, redo
    the others) finishes the run."""
    import random

    from labctl.store import replay

    rng = random.Random(20261126)
    # one whole run first: its length bounds the random kill moments
    data = tmp_path / "whole"
    proc = start_run(hardware_bench, data)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (_out.decode()[-2000:], err.decode()[-2000:])
    [folder] = run_folders(data)
    journal = journal_lines(folder / "events.jsonl")
    length = journal[-1]["ts"] - journal[0]["ts"]
    outcomes: list[str] = []
    for i in range(KILL_ITERATIONS):
        data = tmp_path / f"kill{i}"
        proc = start_run(hardware_bench, data)
        deadline = time.monotonic() + 60
        while not run_folders(data) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        delay = rng.uniform(0.0, length * 1.2)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        folders = run_folders(data)
        assert len(folders) == 1, f"iteration {i}: {folders}"
        path = folders[0] / "events.jsonl"
        events = journal_lines(path)
        assert events[0]["event"] == "run_created"
        before = replay(events)
        finished = {e["step"] for e in events if e["event"] == "step_finished"}
        assert set(before.completed) <= finished
        run_id = folders[0].name
        if before.finished is not None and before.finished.get("status") == "completed":
            again = resume_run(hardware_bench, data, run_id)
            assert again.returncode == 2 and "nothing to resume" in again.stdout
            outcomes.append("after the end")
            continue
        idempotent = {e["step"] for e in events
                      if e["event"] == "step_started" and e.get("idempotent")}
        decisions: list[str] = []
        for step in before.in_doubt:
            if step not in idempotent:  # idempotent ones re-run without asking
                decisions += ["--redo" if decisions else "--accept-in-doubt", step]
        done = resume_run(hardware_bench, data, run_id, *decisions)
        assert done.returncode == 0, (i, delay, done.stdout[-2000:], done.stderr[-2000:])
        assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "completed"
        events = journal_lines(path)
        after = replay(events)
        assert set(before.completed) <= set(after.completed), "a completed step was lost"
        i_resumed = max(k for k, e in enumerate(events) if e["event"] == "resumed")
        restarted = {e["step"] for e in events[i_resumed:] if e["event"] == "step_started"}
        assert not restarted & set(before.completed), "a completed step ran again"
        assert json.loads((folders[0] / "result.json").read_text())["status"] == "completed"
        json.loads((folders[0] / "metadata.json").read_text())
        outcomes.append(f"{len(before.completed)} steps done, in doubt {before.in_doubt}")
    assert len(outcomes) == KILL_ITERATIONS
    print("\n".join(outcomes))


# --------------------------------------------------------------------------- labctl serve
MQTT_BENCH = "fi-bench"
WAIT_RECIPE = json.loads((ROOT / "tests" / "mqtt_recipes" / "mqtt_wait.json").read_text())


class Serve:
    """`labctl serve` on config/sim.toml (x1000) as a process of its own."""

    def __init__(self, broker_url: str, data: Path, *extra: str):
        self.args = [*LABCTL, "serve", "--config", str(SIM_CONFIG), "--broker", broker_url,
                     "--bench-id", MQTT_BENCH, "--data-dir", str(data),
                     "--time-scale", str(TIME_SCALE), *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)


@contextlib.contextmanager
def broker_and_serve(tmp_path: Path, *serve_args: str) -> Any:
    from labctl.mqtt.localbroker import MosquittoBroker

    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    serve = Serve(broker.url, tmp_path / "runs", *serve_args)
    serve.start()
    try:
        yield broker, serve
    finally:
        serve.kill(signal.SIGTERM)
        broker.stop()


def run_started(data: Path, run_id: str) -> bool:
    path = data / run_id / "events.jsonl"
    return path.exists() and b'"step_started"' in path.read_bytes()


async def test_sigkill_of_labctl_serve_then_restart_delivers_each_result_once(
        tmp_path: Path) -> None:
    """A run ends while the broker is down, so its result waits in the agent's outbox; the
    agent is then killed (SIGKILL) and restarted: the result arrives, once. Results
    delivered before the kill are not delivered again, and the restarted agent serves new
    runs."""
    from labctl.client import BenchClient
    from labctl.mqtt.outbox import Outbox

    data = tmp_path / "runs"
    with broker_and_serve(tmp_path) as (broker, serve):
        async with BenchClient(broker.url, MQTT_BENCH, backoff_max_s=0.3, timeout=WAIT) as c:
            a = await c.submit(WAIT_RECIPE, {"duration": "1 s"})
            assert (await a.result(timeout=WAIT))["status"] == "completed"
            b = await c.submit(WAIT_RECIPE, {"duration": "30 min"})  # 3.6 s of wall time
            await eventually(lambda: run_started(data, b.run_id), "run b started", WAIT)
            broker.stop(signal.SIGKILL)
            outbox = Outbox(data / "mqtt-outbox.sqlite")
            try:
                await eventually(lambda: b.run_id in dict(outbox.pending()),
                                 "b's result waiting in the outbox", WAIT)
            finally:
                outbox.close()
            serve.kill(signal.SIGKILL)
            broker.start()
            serve.start()
            result = await b.result(timeout=WAIT)
            assert result["status"] == "completed" and result["run_id"] == b.run_id
            d = await c.submit(WAIT_RECIPE, {"duration": "1 s"})
            assert (await d.result(timeout=WAIT))["status"] == "completed"
            await asyncio.sleep(0.5)  # a wrong second delivery would show by now
            assert c.result_deliveries == {a.run_id: 1, b.run_id: 1, d.run_id: 1}
            assert sorted(r["run_id"] for r in await c.list()) == sorted(
                [a.run_id, b.run_id, d.run_id])


async def test_broker_restart_storm_run_completes_result_delivered_once(
        tmp_path: Path) -> None:
    """The broker is killed and restarted five times in quick succession while a run goes
    on: the run completes, once, its result is delivered once, and the agent serves the
    next run as before."""
    from labctl.client import BenchClient

    data = tmp_path / "runs"
    with broker_and_serve(tmp_path) as (broker, _serve):
        async with BenchClient(broker.url, MQTT_BENCH, backoff_max_s=0.2, timeout=WAIT) as c:
            first = await c.submit(WAIT_RECIPE, {"duration": "30 min"})  # 3.6 s of wall time
            await eventually(lambda: run_started(data, first.run_id), "first run started", WAIT)
            await storm(broker)
            assert (await first.result(timeout=WAIT))["status"] == "completed"
            second = await c.submit(WAIT_RECIPE, {"duration": "1 s"})
            assert (await second.result(timeout=WAIT))["status"] == "completed"
            await asyncio.sleep(0.5)  # a wrong second delivery would show by now
            assert c.result_deliveries == {first.run_id: 1, second.run_id: 1}
            runs = await c.list()
            assert sorted(r["run_id"] for r in runs) == sorted([first.run_id, second.run_id])


async def storm(broker: Any, restarts: int = 5) -> None:
    """Kill (SIGKILL) and restart the broker `restarts` times, quickly."""
    for _ in range(restarts):
        broker.stop(signal.SIGKILL)
        await asyncio.sleep(0.1)
        broker.start()
        await asyncio.sleep(0.2)


def step_starts(data: Path, run_id: str, step: str) -> int:
    events = journal_lines(data / run_id / "events.jsonl")
    return sum(1 for e in events if e["event"] == "step_started" and e.get("step") == step)


async def test_serve_killed_mid_run_then_restarted_answers_every_submitted_run(
        tmp_path: Path) -> None:
    """`labctl serve` killed (SIGKILL) with one run going and one queued, then restarted:
    the run in progress gets its final result, "interrupted", naming its in-doubt step and
    how an operator continues it, and nothing of it is re-run; the queued run (it had done
    nothing) runs to completion. Each result is delivered once, also across a second
    restart. The agent runs one run at a time here (`--concurrency 1`), so the second
    submit really waits in the queue."""
    from labctl.client import BenchClient
    from labctl.mqtt.outbox import Outbox

    data = tmp_path / "runs"
    with broker_and_serve(tmp_path, "--concurrency", "1") as (broker, serve):
        async with BenchClient(broker.url, MQTT_BENCH, backoff_max_s=0.3, timeout=WAIT) as c:
            running = await c.submit(WAIT_RECIPE, {"duration": "2 h"})  # 14 s of wall time
            queued = await c.submit(WAIT_RECIPE, {"duration": "1 s"})
            await eventually(lambda: run_started(data, running.run_id), "run started", WAIT)
            serve.kill(signal.SIGKILL)
            serve.start()
            interrupted = await running.result(timeout=WAIT)
            assert interrupted["run_id"] == running.run_id
            assert interrupted["status"] == "interrupted", interrupted
            assert interrupted["in_doubt"] == ["first"]
            assert interrupted["resume"] == f"labctl resume {running.run_id}"
            assert "first" in interrupted["errors"][0]["message"]
            done = await queued.result(timeout=WAIT)
            assert done["run_id"] == queued.run_id and done["status"] == "completed", done
            assert step_starts(data, running.run_id, "first") == 1  # not re-run by itself
            assert step_starts(data, running.run_id, "second") == 0
            # the broker has acknowledged both results (a kill before that PUBACK publishes
            # a result again: at least once is all a crash allows there)
            outbox = Outbox(data / "mqtt-outbox.sqlite")
            try:
                await eventually(lambda: all(outbox.is_published(r.run_id)
                                             for r in (running, queued)),
                                 "both results acknowledged", WAIT)
            finally:
                outbox.close()
            serve.kill(signal.SIGKILL)
            serve.start()
            later = await c.submit(WAIT_RECIPE, {"duration": "1 s"})
            assert (await later.result(timeout=WAIT))["status"] == "completed"
            await asyncio.sleep(0.5)  # a wrong second delivery would show by now
            assert c.result_deliveries == {running.run_id: 1, queued.run_id: 1,
                                           later.run_id: 1}


async def test_a_command_sent_during_a_broker_restart_storm_is_answered(
        tmp_path: Path) -> None:
    """A submit sent while the broker is killed and restarted five times (the broker may
    lose the agent's session, and a resend reaching it before the agent subscribed again
    is dropped): the client sends it again until answered, the run completes, and the
    command ran once."""
    from labctl.client import BenchClient

    data = tmp_path / "runs"
    with broker_and_serve(tmp_path) as (broker, _serve):
        async with BenchClient(broker.url, MQTT_BENCH, backoff_max_s=0.2, timeout=WAIT) as c:
            first = await c.submit(WAIT_RECIPE, {"duration": "30 min"})
            await eventually(lambda: run_started(data, first.run_id), "run started", WAIT)
            second = asyncio.create_task(c.submit(WAIT_RECIPE, {"duration": "1 s"}))
            await storm(broker)
            run = await asyncio.wait_for(second, WAIT)
            assert (await run.result(timeout=WAIT))["status"] == "completed"
            assert sorted(r["run_id"] for r in await c.list()) == sorted(
                [first.run_id, run.run_id])


async def test_a_command_the_broker_dropped_is_sent_again_until_answered(
        tmp_path: Path) -> None:
    """No agent is subscribed yet (as after a broker crash that lost its session): the
    broker drops the submit. The client sends it again, same id, until the agent is there
    to answer it; it is answered once and runs once."""
    from mqtt_helpers import Raw

    from labctl.client import BenchClient
    from labctl.mqtt.localbroker import MosquittoBroker
    from labctl.mqtt.topics import Topics

    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    serve = Serve(broker.url, tmp_path / "runs")
    try:
        async with BenchClient(broker.url, MQTT_BENCH, timeout=WAIT,
                               resend_after_s=0.1) as c, Raw(broker.url, "watch") as watch:
            cmd_topic = Topics(MQTT_BENCH).cmd
            await watch.subscribe(cmd_topic)
            submit = asyncio.create_task(c.submit(WAIT_RECIPE, {"duration": "1 s"},
                                                  command_id="dropped-1"))
            sent = await watch.wait_for(cmd_topic, count=3, timeout=20)
            assert {json.loads(p)["id"] for p in sent} == {"dropped-1"}
            assert not submit.done()
            serve.start()
            run = await asyncio.wait_for(submit, WAIT)
            assert (await run.result(timeout=WAIT))["status"] == "completed"
            runs = await c.list()
            assert [r["run_id"] for r in runs] == [run.run_id]
    finally:
        serve.kill(signal.SIGTERM)
        broker.stop()

"""The bench's persisted inventory (labctl.store.inventory, labctl.bench.stock): levels
survive restarts, every run debits what its journal says moved, a kill at any moment
neither loses nor doubles a debit once the run is resumed, several processes share the
store, and a run or campaign the stock cannot serve is refused before anything moves,
naming the vessel, what it needs and what it holds. Lots and refill dates reach provenance.

Runs go through the real `labctl` CLI (or the Bench service) against simulated instruments
on real ptys; the SIGKILL test serves the instruments from a process of their own, as
hardware outlives the control software.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labctl.bench import Bench
from labctl.config import load_config
from labctl.recipe import RecipeError, build_plan
from labctl.store import read_journal, replay
from labctl.store.inventory import InventoryStore

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "configs" / "exec_bench.toml"
RECIPE = ROOT / "tests" / "recipes" / "exec_fill.json"
LABCTL = [sys.executable, "-m", "labctl"]
QUICK = ("mix_time=1 s", "rest=1 s")
ML = 1e-3
pytestmark = pytest.mark.timeout(240)


def labctl(*args: str, config: Path = CONFIG, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LABCTL, *args, "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def run_fill(data: Path, *params: str, config: Path = CONFIG
             ) -> subprocess.CompletedProcess[str]:
    args = ["run", str(RECIPE), "--data-dir", str(data), "--json", "--time-scale", "1000"]
    for p in (*QUICK, *params):
        args += ["--param", p]
    return labctl(*args, config=config)


def levels(data: Path) -> dict[tuple[str, str], float]:
    store = InventoryStore(data)
    try:
        return {(lv.holding, lv.material): lv.amount for lv in store.levels()}
    finally:
        store.close()


def test_levels_persist_across_runs_and_restarts_and_refill_lot_reaches_provenance(
        tmp_path: Path) -> None:
    data = tmp_path / "runs"
    for dmc in ("6 mL", "2 mL"):
        out = run_fill(data, f"dmc_volume={dmc}")
        assert out.returncode == 0, out.stdout + out.stderr
    lv = levels(data)
    # config: 200 mL each; two runs took 6 + 2 mL of DMC and 4 + 4 mL of EC
    assert lv[("res_dmc", "DMC")] == pytest.approx(192 * ML)
    assert lv[("res_ec", "EC")] == pytest.approx(192 * ML)
    out = labctl("inventory", "refill", "res_dmc", "50 mL", "--lot", "DMC-2026-07",
                 "--operator", "olga", "--data-dir", str(data), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["level"]["amount"] == pytest.approx(242)
    out = run_fill(data)
    assert out.returncode == 0, out.stdout + out.stderr
    run_id = json.loads(out.stdout.strip().splitlines()[-1])["run_id"]
    meta = json.loads((data / run_id / "metadata.json").read_text())
    [dmc] = [x for x in meta["inventory"]["levels_at_submit"] if x["holding"] == "res_dmc"]
    assert dmc["lot"] == "DMC-2026-07" and dmc["lot_date"] and dmc["amount"] == 242
    shown = json.loads(labctl("inventory", "show", "--data-dir", str(data), "--json").stdout)
    [row] = [x for x in shown["levels"] if x["holding"] == "res_dmc"]
    assert row["amount"] == pytest.approx(236) and row["lot"] == "DMC-2026-07"
    assert any(e["kind"] == "refill" and e["who"] == "olga" for e in shown["events"])


def test_a_run_the_stock_cannot_serve_is_refused_before_anything_moves(tmp_path: Path) -> None:
    data = tmp_path / "runs"
    out = labctl("inventory", "set", "res_dmc", "DMC", "3 mL", "--data-dir", str(data))
    assert out.returncode == 0, out.stderr
    out = run_fill(data)  # needs 6 mL of DMC
    assert out.returncode == 2, out.stdout + out.stderr
    issues = json.loads(out.stdout)["errors"]
    msg = " ".join(i["message"] for i in issues)
    assert "res_dmc holds 3 mL" in msg and "cannot take 6 mL" in msg, msg
    assert any(i["path"] == "steps[1].args.from" for i in issues), issues
    assert not [p for p in data.iterdir() if p.is_dir()], "a run record was created"
    assert levels(data)[("res_dmc", "DMC")] == pytest.approx(3 * ML)
    text = labctl("run", str(RECIPE), "--data-dir", str(data), *[
        a for p in QUICK for a in ("--param", p)], config=CONFIG)  # the operator's view
    assert text.returncode == 2, text.stderr
    assert "res_dmc holds 3 mL" in text.stderr
    assert (f"hint: after refilling res_dmc, record it: labctl inventory refill res_dmc AMOUNT "
            f"--data-dir {data}") in text.stderr, text.stderr


async def test_a_submit_the_stock_cannot_serve_is_refused_and_creates_nothing(
        tmp_path: Path) -> None:
    """Through LocalService, as an MQTT submit arrives: the refusal names the reservoir, the
    error is invalid_recipe, and no run or record is made."""
    from labctl.bench.local import LocalService
    from labctl.problems import BenchError

    data = tmp_path / "runs"
    assert labctl("inventory", "set", "res_dmc", "DMC", "3 mL", "--data-dir",
                  str(data)).returncode == 0
    bench = Bench(load_config(CONFIG), data_dir=data, time_scale=1000)
    await bench.start()
    try:
        svc = LocalService(bench, RECIPE.parent)
        params = dict(p.split("=", 1) for p in QUICK)
        with pytest.raises(BenchError) as err:
            await svc.submit(RECIPE, params)
        assert err.value.code == "invalid_recipe"
        msg = " ".join(i.message for i in err.value.issues)
        assert "res_dmc holds 3 mL" in msg and "cannot take 6 mL" in msg, msg
        assert not bench.tickets
        assert not [p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")]
        assert bench.store.index.list_runs() == []
    finally:
        await bench.close()
    assert levels(data)[("res_dmc", "DMC")] == pytest.approx(3 * ML)


def test_validate_and_plan_with_data_dir_check_the_persisted_stock(tmp_path: Path) -> None:
    """`labctl validate/plan --data-dir` answer as `labctl run` would: the recipe is valid
    against the config's levels, and refused, naming the reservoir, against the bench's."""
    data = tmp_path / "runs"
    assert labctl("inventory", "set", "res_dmc", "DMC", "3 mL", "--data-dir",
                  str(data)).returncode == 0
    quick = [a for p in QUICK for a in ("--param", p)]
    assert labctl("validate", str(RECIPE), *quick).returncode == 0
    for cmd in ("validate", "plan"):
        out = labctl(cmd, str(RECIPE), *quick, "--data-dir", str(data), "--json")
        assert out.returncode == 2, out.stdout + out.stderr
        msg = " ".join(i["message"] for i in json.loads(out.stdout)["errors"])
        assert "res_dmc holds 3 mL" in msg and "cannot take 6 mL" in msg, msg
    assert levels(data)[("res_dmc", "DMC")] == pytest.approx(3 * ML)  # nothing changed


def test_bad_refills_are_refused_and_change_nothing(tmp_path: Path) -> None:
    data = tmp_path / "runs"
    cases = [(("refill", "res_dmc", "60 mL"), "would not fit"),  # 200 + 60 > 250 mL
             (("refill", "res_dmc", "5 g"), "counted in mL"),
             (("refill", "nowhere", "5 mL"), "no reservoir or dispenser 'nowhere'"),
             (("refill", "res_dmc", "five"), "not an amount")]
    for args, expected in cases:
        out = labctl("inventory", *args, "--data-dir", str(data), "--json")
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert expected in json.loads(out.stdout)["error"], (args, out.stdout)
    out = subprocess.run([*LABCTL, "inventory", "refill", "--config", str(CONFIG), "--data-dir",
                          str(data), "--json", "--", "res_dmc", "-5 mL"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "≥ 0" in json.loads(out.stdout)["error"], out.stdout
    assert levels(data)[("res_dmc", "DMC")] == pytest.approx(200 * ML)


async def test_a_campaign_counts_what_queued_runs_will_take(tmp_path: Path) -> None:
    """Two runs of 6 mL from a reservoir holding 10 mL: the first queues, the second is
    refused at submit (the first's 6 mL are reserved), and the message says so."""
    cfg = load_config(CONFIG)
    data = tmp_path / "runs"
    store = InventoryStore(data)
    store.close()
    b = Bench(cfg, data_dir=data, time_scale=1000)
    b.stock.set("res_dmc", "DMC", "10 mL", lot=None, who="test")
    await b.start()
    try:
        params = {"mix_time": "1 s", "rest": "1 s"}
        first = await b.submit(RECIPE, params)
        with pytest.raises(RecipeError) as err:
            await b.submit(RECIPE, params)
        msg = str(err.value)
        assert "res_dmc holds 4 mL, cannot take 6 mL" in msg, msg
        assert "6 mL of DMC more in it is reserved by queued and running runs" in msg, msg
        result = await b.wait(first)
        assert result["status"] == "completed"
        assert b.stock.store.level_map()["res_dmc"]["DMC"][0] == pytest.approx(4 * ML)
    finally:
        await b.close()
    # a campaign checked as a whole: two runs of 2 mL fit in 4 mL, three do not
    from labctl.bench.stock import BenchStock, check_plans

    stock = BenchStock(cfg, data)
    try:
        plan = build_plan(RECIPE, {**params, "dmc_volume": "2 mL"}, cfg)
        check_plans(stock, [plan, plan])
        with pytest.raises(RecipeError) as err:
            check_plans(stock, [plan, plan, plan])
        assert "run 3 of 3: res_dmc holds 0 L, cannot take 2 mL" in str(err.value)
    finally:
        stock.close()


def test_two_processes_share_the_store_and_a_debit_applies_once(tmp_path: Path) -> None:
    """Two processes refill the same reservoir 50 times each and both apply the same set of
    debits: every refill counts, every debit key once."""
    store = InventoryStore(tmp_path)
    store.seed([("res", "DMC", 0.0, "L", "LOT-0")])
    store.close()
    script = (
        "import sys\n"
        "from labctl.store.inventory import Debit, InventoryStore\n"
        "s = InventoryStore(sys.argv[1])\n"
        "for i in range(50):\n"
        "    s.refill('res', 0.001, lot=None, who=sys.argv[2])\n"
        "    s.apply_debits([Debit('run', f'step{i}', '1', 'res', 'DMC', 0.0005, 'L')])\n"
        "s.close()\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), who], cwd=ROOT)
             for who in ("cli", "agent")]
    for p in procs:
        assert p.wait(120) == 0
    store = InventoryStore(tmp_path)
    try:
        assert store.level_map()["res"]["DMC"][0] == pytest.approx(100 * 1e-3 - 50 * 5e-4)
        assert len(store.debits("run")) == 50
        assert {e["who"] for e in store.events("res") if e["kind"] == "refill"} == {
            "cli", "agent"}
    finally:
        store.close()



def test_the_stock_a_submit_is_planned_from_is_read_as_of_one_moment(tmp_path: Path) -> None:
    """A planning thread reads the levels and what queued runs will still take while the
    run in progress has its steps debited. A debit lowers the level and ends that step's
    outstanding use in one commit, so level less outstanding stays the same throughout;
    read in two steps, a debit between them made the stock look larger by that use (a
    submit could be accepted that the stock cannot serve). The switch interval is cut to
    a microsecond to make a switch fall between two reads."""
    import threading

    from labctl.bench.stock import BenchStock
    from labctl.store.inventory import Debit

    cfg = load_config(ROOT / "config" / "sim.toml")
    stock = BenchStock(cfg, tmp_path)
    store = stock.store
    steps = 200
    store.set_level("res", "DMC", 1.0, "L", lot=None, who="test")
    store.plan_run("run", {f"s{i}": [("res", "DMC", 0.001, "L")] for i in range(steps)})
    free = 1.0 - steps * 0.001
    seen: list[float] = []
    done = threading.Event()

    def planner() -> None:
        while not done.is_set():
            levels, _reserved = stock.for_plan(["run"])
            seen.append(levels["res"]["DMC"][0])  # the level less what "run" will take

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    thread = threading.Thread(target=planner)
    thread.start()
    try:
        for i in range(steps):  # the run's steps debited one by one, as they end
            store.apply_debits([Debit("run", f"s{i}", "1", "res", "DMC", 0.001, "L")])
    finally:
        done.set()
        thread.join()
        sys.setswitchinterval(interval)
        stock.close()
    assert seen
    assert max(seen) == pytest.approx(free) and min(seen) == pytest.approx(free)


# ------------------------------------------------------------------ kills and resumes


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The instruments served by a process of their own; a config that reaches them."""
    server = subprocess.Popen([*LABCTL, "sim", "serve", "--config", str(CONFIG),
                               "--time-scale", "1000"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        endpoints = {}
        for _ in range(3):
            line = json.loads(server.stdout.readline())
            endpoints[line["name"]] = line["endpoint"]
        text = CONFIG.read_text().replace("simulate = true", "simulate = false")
        text = text.replace('watchdog = "1500 s"\n', "")
        for name, placeholder in (("pump_a", "/dev/ttyUSB0"), ("pump_b", "/dev/ttyUSB1"),
                                  ("hotplate", "/dev/ttyUSB5")):
            text = text.replace(f'endpoint = "{placeholder}"',
                                f'endpoint = "{endpoints[name]}"')
        path = tmp_path_factory.mktemp("bench") / "bench.toml"
        path.write_text(text)
        yield path
    finally:
        server.terminate()
        server.wait(30)


def expected_debits(events: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """What the journal says the run took, read independently of labctl.bench.stock: one
    debit per finished attempt of a transfer (its measured volume), and for a step accepted
    in doubt with no finished attempt, its requested volume. (step, attempt) -> litres."""
    started: dict[str, int] = {}
    out: dict[tuple[str, str], float] = {}
    finished: set[str] = set()
    requested = {"dmc": 0.0, "ec": 0.0}
    for ev in events:
        step = ev.get("step")
        if step not in ("dmc", "ec"):
            continue
        if ev["event"] == "step_started":
            started[step] = ev["seq"]
            requested[step] = ev["args"]["volume_l"]
        elif ev["event"] == "step_finished":
            out[(step, str(started[step]))] = ev["result"]["volume_l"]
            finished.add(step)
        elif ev["event"] == "decision" and ev["decision"] == "accept" and step not in finished:
            out[(step, f"accept@{ev['seq']}")] = requested[step]
    return out


def test_sigkill_at_random_moments_then_resume_debits_each_move_exactly_once(
        tmp_path: Path, served: Path) -> None:
    rng = random.Random(20261205)
    in_doubt_seen = []
    for trial in range(4):
        data = tmp_path / f"runs{trial}"
        args = [*LABCTL, "run", str(RECIPE), "--config", str(served), "--data-dir", str(data),
                "--json", "--param", "dmc_volume=2 mL", "--param", "flow=1 mL/min",
                "--param", "ec_volume=2 mL", *[x for p in QUICK for x in ("--param", p)]]
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # wait for the run to exist, then kill it somewhere in its transfers
        deadline = time.monotonic() + 90
        folder = None
        while time.monotonic() < deadline and proc.poll() is None:
            dirs = [p for p in data.iterdir() if p.is_dir()] if data.exists() else []
            if dirs and (dirs[0] / "events.jsonl").exists() and any(
                    e["event"] == "step_started" and e.get("step") == "dmc"
                    for e in read_journal(dirs[0] / "events.jsonl")):
                folder = dirs[0]
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.25))
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert folder is not None, "the run never reached its first transfer"
        run_id = folder.name
        in_doubt_seen += replay(read_journal(folder / "events.jsonl")).in_doubt
        for _session in range(3):
            r = replay(read_journal(folder / "events.jsonl"))
            if r.finished is not None and r.finished.get("status") == "completed":
                break
            decisions = []
            for s in r.in_doubt:
                if s in ("dmc", "ec"):
                    decisions += [rng.choice(["--accept-in-doubt", "--redo"]), s]
            out = subprocess.run([*LABCTL, "resume", run_id, "--config", str(served),
                                  "--data-dir", str(data), "--operator", "carol", "--json",
                                  *decisions], cwd=ROOT, capture_output=True, text=True,
                                 timeout=120)
            assert out.returncode in (0, 2), out.stdout + out.stderr
        events = read_journal(folder / "events.jsonl")
        assert replay(events).finished["status"] == "completed", f"trial {trial}"
        want = expected_debits(events)
        store = InventoryStore(data)
        try:
            got = {(d.step_id, d.attempt): d.amount for d in store.debits(run_id)}
            lv = store.level_map()
        finally:
            store.close()
        assert got.keys() == want.keys(), f"trial {trial}: {got} != {want}"
        for k, v in want.items():
            assert got[k] == pytest.approx(v), k
        took_dmc = sum(v for (s, _a), v in want.items() if s == "dmc")
        took_ec = sum(v for (s, _a), v in want.items() if s == "ec")
        assert lv["res_dmc"]["DMC"][0] == pytest.approx(0.2 - took_dmc)
        assert lv["res_ec"]["EC"][0] == pytest.approx(0.2 - took_ec)
        # a further resume (the run is done) and a bench restart change nothing
        labctl("resume", run_id, "--data-dir", str(data), config=served)
        store = InventoryStore(data)
        try:
            assert len(store.debits(run_id)) == len(want)
        finally:
            store.close()
    assert {"dmc", "ec"} & set(in_doubt_seen), "no kill landed in a transfer"


async def test_a_refill_while_the_bench_runs_reaches_the_simulated_reservoir(
        tmp_path: Path) -> None:
    """config/sim.toml in-process: an operator's refill (LocalService, as MQTT and the TUI
    call it) adds to the simulated reservoir what it adds to the inventory, and `set` makes
    the simulated reservoir hold the counted amount."""
    from labctl.bench.local import LocalService

    bench = Bench(load_config(ROOT / "config" / "sim.toml"), data_dir=tmp_path / "runs",
                  time_scale=100)
    await bench.start()
    try:
        world = bench.instruments.simulation.world  # type: ignore[union-attr]
        before = world.vessel("res_dmc").contents_g["DMC"]
        svc = LocalService(bench, ROOT / "recipes")
        await svc.inventory("refill", vessel="res_dmc", amount="10 mL", lot="L2", who="op")
        assert world.vessel("res_dmc").contents_g["DMC"] == pytest.approx(before + 10 * 1.07)
        await svc.inventory("set", vessel="res_ec", material="EC", amount="50 mL", lot="L3",
                            who="op")
        assert world.vessel("res_ec").contents_g == {"EC": pytest.approx(50 * 1.32)}
    finally:
        await bench.close()

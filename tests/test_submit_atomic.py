"""A submit is written as one unit: its run folder, then its index row together with the
reply to the command that asked for it (labctl.bench.service.Bench.accept).

A bench killed at any moment while accepting submits leaves, for every command, either
nothing (the redelivered command makes the run) or a run and that command's reply (the
redelivered command gets the reply, and no second run is made: with the reply remembered
after the run, as it used to be, a kill between the two left a queued run the restarted
agent ran and a command it carried out again). The bench is killed with SIGKILL in a
process of its own, at random moments, and restarted on the same data dir each time.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from labctl.bench import Bench
from labctl.config import load_config
from labctl.store import RunIndex, read_journal

ROOT = Path(__file__).resolve().parent.parent

#: what both bench processes below start with: a short recipe, a command's reply
CHILD_PRELUDE = """
import asyncio, sys
from pathlib import Path
from typing import Any
from labctl.bench import Bench
from labctl.bench.dedup import CommandReply
from labctl.config import load_config

WAIT = {"schema": "labctl.recipe/1", "name": "wait", "version": "1",
        "description": "one short wait", "steps": [{"id": "w", "wait": "1 s"}]}

def reply(cid):
    return lambda run_id, pos: {"id": cid, "ok": True, "command": "submit",
                                "run_id": run_id, "queue_position": pos}
"""

CHILD = CHILD_PRELUDE + """
async def main(data, tag):
    cfg = load_config(Path("config/sim.toml"))
    async with Bench(cfg, data_dir=data, time_scale=10000, requeue_unstarted=True) as bench:
        print("ready", flush=True)
        i = 0
        while True:
            cid = f"{tag}-{i}"
            await bench.accept(WAIT, {}, instigator={"kind": "ai", "id": "t", "command_id": cid},
                               command=CommandReply(cid, reply(cid)))
            print(cid, flush=True)
            i += 1

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _runs_by_command(data: Path) -> dict[str, list[str]]:
    """Command id -> the run folders whose first journal line names it."""
    out: dict[str, list[str]] = {}
    for folder in data.iterdir():
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        events = read_journal(folder / "events.jsonl")
        assert events and events[0]["event"] == "run_created", folder
        cid = events[0]["instigator"]["command_id"]
        out.setdefault(cid, []).append(folder.name)
    return out


def test_sigkill_while_accepting_never_leaves_a_run_without_its_commands_reply(
        tmp_path: Path) -> None:
    data = tmp_path / "runs"
    rng = random.Random(18)
    accepted: list[str] = []
    for round_no in range(5):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(data), f"r{round_no}"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"round {round_no}: the bench did not start"
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        accepted += [x.strip() for x in proc.stdout.read().splitlines() if x.strip()]

    index = RunIndex(data / "runs.sqlite")
    try:
        by_command = _runs_by_command(data)
        rows = {r["run_id"]: r for r in index.list_runs(limit=1000)}
        assert accepted, "no submit was accepted before the kills"
        for run_id in rows:  # the folder is written before the row: never a row without
            assert (data / run_id / "events.jsonl").exists(), f"run {run_id} has no folder"
            assert (data / run_id / "recipe.json").exists()
            assert (data / run_id / "metadata.json").exists()
        for cid in accepted:  # answered before the kill: the run and the reply are there
            assert index.seen_command(cid) is not None, cid
        for cid, runs in by_command.items():
            assert len(runs) == 1, f"command {cid} made {len(runs)} runs"
            reply = index.seen_command(cid)
            if runs[0] in rows:  # in the index: accepted, so its reply is remembered
                assert reply is not None, f"run {runs[0]} is indexed, command {cid} unknown"
                assert reply["run_id"] == runs[0]
            else:  # a folder written just before the kill: never queued, never answered
                assert reply is None, f"command {cid} answered with an unindexed run"
        with index._lock:
            replies = [json.loads(r[0]) for r in index._db.execute("SELECT reply FROM commands")]
        for reply in replies:  # no reply names a run that is not in the index
            assert reply["run_id"] in rows, reply
    finally:
        index.close()


HELD_CHILD = CHILD_PRELUDE + """
#: what the held run is: "wait" (takes nothing) or "stock" (a recipe that takes stock)
RECIPES = {"wait": (WAIT, {}),
           "stock": (Path("recipes/electrolyte_conductivity.json"),
                     {"salt_molality": "1.2 mol/kg", "ec_fraction": "0.3"})}

async def main(data, which):
    cfg = load_config(Path("config/sim.toml"))
    async with Bench(cfg, data_dir=data, time_scale=10000, requeue_unstarted=True) as bench:
        bench.runs.hold()  # the run stays queued until the kill
        cid = "held-0"
        recipe, params = RECIPES[which]
        sub = await bench.accept(recipe, params, instigator={"kind": "ai", "id": "t",
                                                             "command_id": cid},
                                 command=CommandReply(cid, reply(cid)))
        await bench.runs.tickets[sub.run_id].synced()
        print(sub.run_id, flush=True)
        await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

FIRST_FILES = ("events.jsonl", "recipe.json", "metadata.json")


def _killed_with_a_queued_run(data: Path, which: str = "wait"
                              ) -> tuple[str, dict[str, bytes]]:
    """A bench process that accepted one run (held in the queue; `which`, see HELD_CHILD),
    SIGKILLed; the run id and its first files as written."""
    proc = subprocess.Popen([sys.executable, "-c", HELD_CHILD, str(data), which], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert run_id, "the bench did not accept the run"
    return run_id, {name: (data / run_id / name).read_bytes() for name in FIRST_FILES}


@pytest.mark.parametrize("loss", ["folder gone", "files emptied or cut"])
async def test_a_queued_runs_folder_lost_to_a_power_cut_is_rebuilt_from_the_index(
        tmp_path: Path, loss: str) -> None:
    """The answer to a submit waits for one durable write, the index commit holding the
    run's first files; the folder is synced after the answer. What a power cut in between
    can leave of the folder is simulated on the files a killed bench left; the next start
    writes them back from the index and runs the run it had promised."""
    data = tmp_path / "runs"
    run_id, first = _killed_with_a_queued_run(data)
    with closing(RunIndex(data / "runs.sqlite")) as index:
        assert set(index.submissions()) == {run_id}  # queued: its files kept in the index
    folder = data / run_id
    if loss == "folder gone":
        shutil.rmtree(folder)
    else:
        (folder / "metadata.json").write_bytes(b"")
        (folder / "recipe.json").unlink()
        (folder / "events.jsonl").write_bytes(first["events.jsonl"][:50])

    cfg = load_config(ROOT / "config" / "sim.toml")
    async with Bench(cfg, data_dir=data, time_scale=10000, requeue_unstarted=True) as bench:
        result = await asyncio.wait_for(bench.wait(run_id), 60)
    assert result["status"] == "completed", result
    assert (folder / "recipe.json").read_bytes() == first["recipe.json"]
    meta, first_meta = (json.loads(b) for b in ((folder / "metadata.json").read_bytes(),
                                                 first["metadata.json"]))
    for key in ("run_id", "recipe", "parameters", "instigator"):  # closing adds the rest
        assert meta[key] == first_meta[key], key
    events = (folder / "events.jsonl").read_bytes()
    assert events.startswith(first["events.jsonl"])  # then the lines of the run itself
    assert any(e.get("event") == "step_finished" for e in read_journal(folder / "events.jsonl"))
    with closing(RunIndex(data / "runs.sqlite")) as index:
        assert index.submissions() == {}  # started: the copy in the index is gone


async def test_a_queued_runs_stock_reservation_lost_to_a_power_cut_is_put_back_from_the_index(
        tmp_path: Path) -> None:
    """The inventory's reservation of a submitted run is committed without its fsync; the
    index commit the answer waits for holds a copy. A power cut before the sync (simulated:
    the reservation rows gone from a killed bench's inventory) leaves a queued run the
    stock check would not count and whose debits would never be made; the next start puts
    the reservation back from the index, and the run takes its stock."""
    from labctl.store.inventory import InventoryStore

    data = tmp_path / "runs"
    run_id, _ = _killed_with_a_queued_run(data, "stock")

    with closing(RunIndex(data / "runs.sqlite")) as index:
        kept = index.submitted_claims()[run_id]["uses"]
    inventory = InventoryStore(data)
    try:
        planned = inventory.planned(run_id)
        assert planned and {s: [list(u) for u in rows] for s, rows in planned.items()} == kept
        before = {(lv.holding, lv.material): lv.amount for lv in inventory.levels()}
        with inventory._lock:  # what a power cut before the sync would take
            inventory._db.execute("DELETE FROM planned WHERE run_id = ?", (run_id,))
        assert inventory.planned(run_id) == {}
    finally:
        inventory.close()

    cfg = load_config(ROOT / "config" / "sim.toml")
    async with Bench(cfg, data_dir=data, time_scale=10000, requeue_unstarted=True) as bench:
        assert bench.stock.store.planned(run_id) == planned  # back before the run starts
        result = await asyncio.wait_for(bench.wait(run_id), 120)
        after = {(lv.holding, lv.material): lv.amount for lv in bench.stock.store.levels()}
        debited: dict[tuple[str, str], float] = {}
        for d in bench.stock.store.debits(run_id):
            debited[(d.holding, d.material)] = debited.get((d.holding, d.material), 0.0) + d.amount
    assert result["status"] == "completed", result
    taken = {(h, m): a for rows in planned.values() for h, m, a, _u in rows}
    assert set(debited) == set(taken)  # every planned use debited (without the rows: none)
    for key, amount in taken.items():
        assert before[key] - after[key] == pytest.approx(debited[key], rel=1e-9), key
        # what was delivered: a powder within the recipe's ±2 % of the plan
        assert debited[key] == pytest.approx(amount, rel=0.02), key
    with closing(RunIndex(data / "runs.sqlite")) as index:
        assert index.submitted_claims() == {}  # started: the copy in the index is gone


async def test_a_submit_given_up_while_its_run_is_written_is_still_queued_and_runs(
        tmp_path: Path) -> None:
    """The write of an accepted run runs in a thread, which nothing can stop: once it has
    begun the run is on disk, queued, with the command's reply kept for a redelivery. A
    caller that gives up meanwhile (the TUI's 15 s bound, a shutdown) gets its
    cancellation, and the run is in the queue all the same and runs; before, it stayed
    'queued' on disk and never ran while the bench lived. The write is slowed by a pause
    before the real one, so that the cancellation falls inside it."""
    import threading

    from labctl.bench.dedup import CommandReply

    recipe = {"schema": "labctl.recipe/1", "name": "wait", "version": "1",
              "description": "one short wait", "steps": [{"id": "w", "wait": "1 s"}]}
    cfg = load_config(ROOT / "config" / "sim.toml")
    async with Bench(cfg, data_dir=tmp_path / "runs", time_scale=1000) as bench:
        writing = threading.Event()
        run_ids: list[str] = []
        real_write = bench._write_accepted

        def slow_write(ticket: Any, *args: Any) -> None:
            run_ids.append(ticket.run_id)
            writing.set()
            time.sleep(0.5)
            real_write(ticket, *args)

        bench._write_accepted = slow_write  # type: ignore[method-assign]
        cid = "given-up-1"
        task = asyncio.create_task(bench.accept(
            recipe, {}, instigator={"kind": "ai", "id": "t", "command_id": cid},
            command=CommandReply(cid, lambda run_id, pos: {"id": cid, "run_id": run_id})))
        await asyncio.to_thread(writing.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [run_id] = run_ids
        assert run_id in bench.runs.tickets  # queued
        result = await asyncio.wait_for(bench.wait(run_id), 60)
        assert result["status"] == "completed", result
        assert bench.store.index.seen_command(cid) == {"id": cid, "run_id": run_id}

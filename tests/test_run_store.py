"""Run records: the journal (whole lines, fsync, torn tails, replay of in-doubt steps), the
SQLite index and command table, atomic JSON documents, provenance assembly and the RO-Crate
export."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from labctl.store import Journal, RunIndex, RunRecord, RunStore, read_journal, replay
from labctl.store.provenance import build_metadata, instigator_info, records_from_journal
from labctl.store.record import csv_columns, new_run_id, write_json_atomic


def test_journal_lines_are_whole_json_with_sequence_numbers(tmp_path: Path) -> None:
    j = Journal(tmp_path / "events.jsonl")
    j.append("run_created", run_id="r1")
    j.append("step_started", step="s1", kind="action", args={"volume_l": 0.001})
    j.append("step_finished", durable=False, step="s1", result={"ok": True})
    j.close()
    raw = (tmp_path / "events.jsonl").read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 3
    evs = [json.loads(line) for line in raw.splitlines()]
    assert [e["seq"] for e in evs] == [1, 2, 3]
    assert [e["event"] for e in evs] == ["run_created", "step_started", "step_finished"]
    assert all(e["t"].endswith("Z") for e in evs)
    # reopening continues the numbering
    j2 = Journal(tmp_path / "events.jsonl")
    assert j2.append("x")["seq"] == 4


def test_torn_tail_is_ignored_and_trimmed_before_appending(tmp_path: Path) -> None:
    p = tmp_path / "events.jsonl"
    j = Journal(p)
    j.append("a")
    j.append("b")
    j.close()
    with open(p, "ab") as f:
        f.write(b'{"seq": 3, "event": "step_sta')  # a power cut mid-line
    assert [e["event"] for e in read_journal(p)] == ["a", "b"]
    j = Journal(p)
    j.append("c")
    j.close()
    lines = p.read_bytes().splitlines()
    assert [json.loads(x)["event"] for x in lines] == ["a", "b", "c"]


def test_a_corrupt_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "events.jsonl"
    p.write_bytes(b'{"seq":1,"event":"a"}\nnot json\n{"seq":2,"event":"b"}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_journal(p)



def raw_ends_with(path: Path, tail: bytes) -> bool:
    return path.read_bytes().endswith(tail)


def test_a_journal_read_again_parses_only_new_lines_and_reads_as_a_whole_read_does(
        tmp_path: Path) -> None:
    """RunRecord.events() reads only what was appended since its last read
    (labctl.store.journal.JournalReader). Whatever happens to the file in between (appends,
    a torn tail, the tail completed, the file replaced or cut short), each read equals a
    whole read by read_journal."""
    import random

    rng = random.Random(18)
    rec = RunRecord(tmp_path / "run")
    (tmp_path / "run").mkdir()
    p = rec.events_path
    assert rec.events() == [] == read_journal(p)  # no journal yet
    journal = Journal(p, fsync=False)
    seq = longest = 0
    for _ in range(400):
        op = rng.random()
        if op < 0.75:
            for _ in range(rng.randint(1, 4)):
                journal.append("step_finished", durable=False, step=f"s{rng.randint(0, 9)}",
                               pad="x" * rng.randint(0, 300))
        elif op < 0.85:  # a line read half written (or whole but for its newline)
            with open(p, "ab") as f:
                f.write(b'{"seq": 0, "event": "half"' + (b"}" if rng.random() < 0.5 else b""))
            assert rec.events() == read_journal(p)
            with open(p, "ab") as f:  # then the rest of it
                f.write(b"\n" if raw_ends_with(p, b"}") else b"}\n")
        elif op < 0.92:  # a power cut mid-line; the next start cuts it (Journal() does)
            with open(p, "ab") as f:
                f.write(b'{"seq": 0, "event": "torn"' + (b"}" if rng.random() < 0.5 else b""))
            assert rec.events() == read_journal(p)
            journal.close()
            journal = Journal(p, fsync=False)
        elif op < 0.96:  # replaced (a folder rebuilt), shorter or longer
            journal.close()
            seq += 1
            lines = b"".join(json.dumps({"seq": i, "event": f"new{seq}"}).encode() + b"\n"
                             for i in range(rng.randint(0, 40)))
            tmp = p.with_suffix(".tmp")
            tmp.write_bytes(lines)
            os.replace(tmp, p)
            journal = Journal(p, fsync=False)
        else:  # cut short in place
            journal.close()
            raw = p.read_bytes()
            keep = raw[:raw.rfind(b"\n", 0, max(0, len(raw) // 2)) + 1]
            p.write_bytes(keep)
            journal = Journal(p, fsync=False)
        assert rec.events() == read_journal(p)
        longest = max(longest, len(read_journal(p)))
    journal.close()
    assert longest > 100  # long enough to have been read in many pieces



def test_a_journal_replaced_or_rewritten_in_place_is_read_again_from_its_start(
        tmp_path: Path) -> None:
    """Two changes a size check alone would miss: a journal replaced by another of the same
    length (a new file: its inode tells), and one rewritten in place longer than before
    (the byte before where the last read ended is no longer a line's end)."""
    (tmp_path / "run").mkdir()
    rec = RunRecord(tmp_path / "run")
    p = rec.events_path

    def lines(event: str, n: int, pad: int = 0) -> bytes:
        return b"".join(json.dumps({"seq": i, "event": event, "pad": "x" * pad}).encode()
                        + b"\n" for i in range(n))

    p.write_bytes(lines("old", 5))
    assert [e["event"] for e in rec.events()] == ["old"] * 5
    tmp = p.with_suffix(".tmp")
    tmp.write_bytes(lines("new", 5))  # same length, other events
    os.replace(tmp, p)
    assert rec.events() == read_journal(p)
    assert [e["event"] for e in rec.events()] == ["new"] * 5
    longer = lines("long", 1, pad=p.stat().st_size + 50)
    with open(p, "r+b") as f:  # rewritten in place: one line longer than the five were
        f.truncate(0)
        f.write(longer)
    assert rec.events() == read_journal(p)
    assert [e["event"] for e in rec.events()] == ["long"]



def test_a_closed_record_lets_go_of_the_events_it_read(tmp_path: Path) -> None:
    """A bench keeps its last 20 ended runs' records; the events a record parsed are
    kept for its next read only while the run is open (a soak held ~8 MiB more without
    this). Measured with tracemalloc: what the read holds is freed by close()."""
    import gc
    import tracemalloc

    (tmp_path / "run").mkdir()
    rec = RunRecord(tmp_path / "run")
    journal = Journal(rec.events_path, fsync=False)
    for i in range(3000):
        journal.append("record", durable=False, i=i, pad="x" * 500)
    journal.close()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert len(rec.events()) == 3000
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
        rec.close()
        gc.collect()
        left = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held > 1_500_000  # 3,000 events of ~600 bytes, parsed
    assert left < held / 10, (held, left)
    assert len(rec.events()) == 3000  # read again from the disk when asked


def test_a_journal_read_again_names_a_corrupt_line_and_keeps_naming_it(
        tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    rec = RunRecord(tmp_path / "run")
    p = rec.events_path
    p.write_bytes(b'{"seq":1,"event":"a"}\n\n{"seq":2,"event":"b"}\n')
    assert [e["event"] for e in rec.events()] == ["a", "b"]
    with open(p, "ab") as f:
        f.write(b'{"seq":3,"event":"c"}\nnot json\n{"seq":4,"event":"d"}\n')
    for _ in range(2):  # nothing of the bad read is kept
        with pytest.raises(ValueError, match="line 5"):
            rec.events()
    with pytest.raises(ValueError, match="line 5"):
        read_journal(p)


def test_a_journal_read_while_it_is_appended_is_always_a_prefix_of_it(
        tmp_path: Path) -> None:
    """The bench reads a run's journal on the event loop and in worker threads while the
    executor appends: every read is the journal as far as it had been written, each line
    once."""
    import threading

    (tmp_path / "run").mkdir()
    rec = RunRecord(tmp_path / "run")
    journal = Journal(rec.events_path, fsync=False)
    reads: list[list[int]] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            reads.append([e["i"] for e in rec.events()])

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(2000):
            journal.append("w", durable=False, i=i)
    finally:
        done.set()
        for t in threads:
            t.join()
        journal.close()
    assert len(reads) > 10
    for seen in reads:
        assert seen == list(range(len(seen)))
    assert [e["i"] for e in rec.events()] == list(range(2000))


def test_concurrent_writers_never_interleave_within_a_line(tmp_path: Path) -> None:
    p = tmp_path / "events.jsonl"
    code = (
        "import sys; from labctl.store import Journal\n"
        "j = Journal(sys.argv[1], fsync=False)\n"
        "for i in range(300): j.append('w', who=sys.argv[2], i=i, pad='x' * 3000)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(p), str(k)]) for k in range(3)]
    assert all(pr.wait(60) == 0 for pr in procs)
    evs = read_journal(p)
    assert len(evs) == 900
    for k in range(3):
        assert [e["i"] for e in evs if e["who"] == str(k)] == list(range(300))


def test_replay_finds_completed_and_in_doubt_steps() -> None:
    evs = [
        {"event": "run_created", "run_id": "r"},
        {"event": "step_started", "step": "seq", "kind": "sequence", "t": "1"},
        {"event": "step_started", "step": "a", "kind": "action", "t": "1"},
        {"event": "step_finished", "step": "a", "kind": "action", "t": "2",
         "result": {"volume_l": 0.001}},
        {"event": "step_started", "step": "b", "kind": "action", "t": "3"},
        {"event": "step_failed", "step": "b", "kind": "action", "t": "4", "error": "x",
         "continued": True},
        {"event": "step_started", "step": "c", "kind": "action", "t": "5"},
        {"event": "step_failed", "step": "c", "kind": "action", "t": "6", "error": "boom",
         "retrying": True},
        {"event": "step_started", "step": "c", "kind": "action", "t": "7", "attempt": 2},
        {"event": "step_started", "step": "w", "kind": "wait", "t": "8"},
    ]
    r = replay(evs)
    assert r.completed == ["a", "b"]
    assert r.in_doubt == ["c", "w"]  # the container "seq" is never in doubt itself
    assert r.steps["c"].attempts == 2 and r.steps["a"].result == {"volume_l": 0.001}
    evs.append({"event": "decision", "step": "c", "decision": "accept"})
    assert replay(evs).in_doubt == ["w"]
    assert replay(evs).completed == ["a", "b", "c"]


def test_index_runs_and_commands_survive_reopening(tmp_path: Path) -> None:
    idx = RunIndex(tmp_path / "runs.sqlite")
    idx.upsert_run("r1", recipe="x", status="queued", created="2025-01-01T00:00:00Z",
                   path="/p/r1")
    idx.upsert_run("r2", recipe="y", status="queued", created="2025-01-02T00:00:00Z",
                   path="/p/r2")
    idx.upsert_run("r1", status="completed", figures=[{"name": "sigma", "value": 1.0}])
    assert idx.seen_command("c1") is None
    idx.remember_command("c1", {"id": "c1", "ok": True, "run_id": "r1"})
    idx.remember_command("c1", {"id": "c1", "ok": False})  # the first reply wins
    idx.close()
    idx = RunIndex(tmp_path / "runs.sqlite")
    assert [r["run_id"] for r in idx.list_runs()] == ["r2", "r1"]
    r1 = idx.get_run("r1")
    assert r1 is not None and r1["status"] == "completed"
    assert r1["figures"] == [{"name": "sigma", "value": 1.0}]
    assert idx.seen_command("c1") == {"id": "c1", "ok": True, "run_id": "r1"}
    assert [r["run_id"] for r in idx.list_runs(status="queued")] == ["r2"]
    mode = idx._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    with pytest.raises(KeyError):
        idx.upsert_run("r1", nonsense=1)


def test_a_queued_runs_first_files_stay_in_the_index_until_it_leaves_the_queue(
        tmp_path: Path) -> None:
    idx = RunIndex(tmp_path / "runs.sqlite")
    files = {"events.jsonl": b'{"seq":1}\n', "recipe.json": "{\"µ\": 1}\n".encode()}
    row = {"recipe": "r", "status": "queued", "created": "2026-12-06", "path": "p"}
    idx.accept_run("run-a", row, ("cmd-a", {"ok": True}), files)
    idx.accept_run("run-b", row, None, files)
    assert idx.submissions() == {"run-a": files, "run-b": files}  # bytes back as written
    idx.upsert_run("run-a", status="queued")  # still queued: kept
    idx.upsert_run("run-b", status="running", started="now")  # started: gone, same commit
    assert set(idx.submissions()) == {"run-a"}
    assert idx.get_run("run-b")["status"] == "running"
    idx.upsert_run("run-a", status="cancelled")
    assert idx.submissions() == {}
    idx.close()


def test_a_queued_runs_claims_stay_in_the_index_with_its_first_files(tmp_path: Path) -> None:
    """The stock a run will take and the samples it takes are kept with its first files,
    and go with them: when it leaves the queue, or when start-up has put them back."""
    idx = RunIndex(tmp_path / "runs.sqlite")
    files = {"events.jsonl": b'{"seq":1}\n'}
    row = {"recipe": "r", "status": "queued", "created": "2026-12-06", "path": "p"}
    claims = {"uses": {"add_ec": [["ec_reservoir", "ec", 0.0005, "L"]]},
              "inputs": {"vial": "S-1"}}
    idx.accept_run("run-a", row, None, files, claims)
    idx.accept_run("run-b", row, None, files, claims)
    idx.accept_run("run-c", row, None, files)  # takes nothing: no claims kept
    assert idx.submitted_claims() == {"run-a": claims, "run-b": claims}
    idx.upsert_run("run-a", status="running", started="now")
    idx.forget_submission("run-b")
    assert idx.submitted_claims() == {} and set(idx.submissions()) == {"run-c"}
    idx.close()


def test_a_commit_without_its_fsync_is_committed_and_the_connection_syncs_again(
        tmp_path: Path) -> None:
    """InventoryStore.plan_run(durable=False): the rows are there for every reader at once;
    the connection is back at synchronous=FULL for the next commit, whatever happened in
    the transaction; sync() fsyncs the write-ahead log."""
    import sqlite3

    from labctl.store.inventory import InventoryStore

    inv = InventoryStore(tmp_path)
    uses = {"add_ec": [("ec_reservoir", "ec", 0.0005, "L")]}
    inv.plan_run("run-a", uses, durable=False)
    assert inv._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    other = sqlite3.connect(tmp_path / "inventory.sqlite")
    try:
        assert other.execute("SELECT run_id, step_id, amount FROM planned").fetchall() == [
            ("run-a", "add_ec", 0.0005)]
    finally:
        other.close()
    with pytest.raises(sqlite3.Error):  # a failed transaction also puts FULL back
        inv._write(lambda db: db.execute("INSERT INTO nowhere VALUES (1)"), durable=False)
    assert inv._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert (tmp_path / "inventory.sqlite-wal").exists()
    inv.sync()
    inv.close()
    from labctl.store.sqlite_db import sync_wal

    sync_wal(tmp_path / "never-opened.sqlite")  # no log (a checkpoint took it): nothing to do


def test_a_folder_created_without_fsync_is_restored_from_its_first_files(
        tmp_path: Path) -> None:
    files = {"events.jsonl": b'{"seq":1}\n', "recipe.json": b"{}\n"}
    rec = RunRecord.create_files(tmp_path, "run-a", files, durable=False)
    rec.sync()
    with open(rec.events_path, "ab") as f:  # a line appended after the first ones
        f.write(b'{"seq":2}\n')
    assert not RunRecord.restore(tmp_path, "run-a", files)  # intact: nothing written
    assert rec.events_path.read_bytes() == b'{"seq":1}\n{"seq":2}\n'
    rec.recipe_path.write_bytes(b"")
    assert RunRecord.restore(tmp_path, "run-a", files)
    assert rec.recipe_path.read_bytes() == b"{}\n"
    assert rec.events_path.read_bytes() == b'{"seq":1}\n{"seq":2}\n'


def test_atomic_json_replaces_whole_files(tmp_path: Path) -> None:
    p = tmp_path / "result.json"
    write_json_atomic(p, {"status": "running"})
    write_json_atomic(p, {"status": "completed", "x": [1, 2]})
    assert json.loads(p.read_text()) == {"status": "completed", "x": [1, 2]}
    assert [f.name for f in tmp_path.iterdir()] == ["result.json"]  # no temp files left


def test_run_ids_and_folders(tmp_path: Path) -> None:
    rid = new_run_id("electrolyte conductivity/1")
    assert "/" not in rid and " " not in rid and "electrolyte_conductivity_1" in rid
    rec = RunRecord.create(tmp_path, rid)
    assert rec.data_dir.is_dir()
    with pytest.raises(FileExistsError):
        RunRecord.create(tmp_path, rid)
    with pytest.raises(ValueError):
        RunRecord.create(tmp_path, "../escape")
    with pytest.raises(FileNotFoundError):
        RunRecord.open(tmp_path, "../etc")
    assert rec.data_path("eis[2]/x").name == "eis_2_x.bdf.csv"


def test_data_files_are_hashed_with_their_bdf_columns(tmp_path: Path) -> None:
    rec = RunRecord.create(tmp_path, "r1")
    p = rec.data_path("eis")
    p.write_text("Test Time / s,Frequency / Hz,Real Impedance / ohm,Step ID\n0,1000,12.5,eis\n")
    [entry] = rec.data_files()
    import hashlib

    assert entry["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert entry["path"] == "data/eis.bdf.csv"
    assert entry["columns"][1] == {"name": "Frequency / Hz", "quantity": "Frequency",
                                   "unit": "Hz"}
    assert entry["columns"][3]["unit"] is None
    assert csv_columns(tmp_path / "missing.csv") == []


def test_a_step_attempted_again_gets_a_new_data_file(tmp_path: Path) -> None:
    """A retry or a re-run after resume writes beside the killed attempt's rows, never over
    them (nothing recorded is lost), and both files are in the run's data files."""
    rec = RunRecord.create(tmp_path, "r1")
    first = rec.data_path("eis")
    first.write_text("Test Time / s,Step ID\n0,eis\n1,eis\n")
    second = rec.data_path("eis")
    assert second != first and second.name == "eis.attempt2.bdf.csv"
    second.write_text("Test Time / s,Step ID\n0,eis\n")
    assert first.read_text().count("\n") == 3
    assert rec.data_path("eis").name == "eis.attempt3.bdf.csv"
    assert [d["path"] for d in rec.data_files()] == ["data/eis.attempt2.bdf.csv",
                                                     "data/eis.bdf.csv"]


def test_provenance_from_journal_records() -> None:
    evs = [
        {"event": "record", "kind": "addition", "t": "2025-01-01T00:00:01.000Z", "seq": 5,
         "ts": 1.0, "step": "add1", "material": "DMC", "vessel": "vial", "requested": 0.002,
         "actual": 0.00199, "unit": "L"},
        {"event": "record", "kind": "mixing", "t": "2025-01-01T00:00:02.000Z", "step": "mix",
         "speed_rpm": 400, "duration_s": 60},
        {"event": "record", "kind": "addition", "t": "2025-01-01T00:00:03.000Z", "step": "salt",
         "material": "LiPF6", "vessel": "vial", "requested": 0.5, "actual": 0.498, "unit": "g"},
        {"event": "record", "kind": "heating", "t": "2025-01-01T00:00:04.000Z",
         "temperature_c": 60},
        {"event": "record", "kind": "weighing", "t": "2025-01-01T00:00:05.000Z", "mass_g": 13},
    ]
    out = records_from_journal(evs)
    assert [(a["order"], a["material"], a["time"]) for a in out["additions"]] == [
        (1, "DMC", "2025-01-01T00:00:01.000Z"), (2, "LiPF6", "2025-01-01T00:00:03.000Z")]
    assert out["mixing"][0]["speed_rpm"] == 400
    assert out["temperatures"][0]["temperature_c"] == 60
    assert out["observations"][0]["kind"] == "weighing"
    meta = build_metadata(context={"run_id": "r", "times": {"created": "c"}}, events=evs,
                          data_files=[], status="completed")
    assert meta["outcome"]["status"] == "completed" and meta["times"]["created"] == "c"
    assert instigator_info("ai:client-7", {"id": "req-42", "quantity": "conductivity"}) == {
        "kind": "ai", "id": "client-7", "request": {"id": "req-42", "quantity": "conductivity"},
        "request_id": "req-42"}
    assert instigator_info("alice")["kind"] == "operator"


def test_export_writes_an_ro_crate_zip(tmp_path: Path) -> None:
    """The zip has ro-crate-metadata.json at its root; ro-crate-py reads it back as a Process
    Run Crate naming only the instruments the run drove, with the figures of the data."""
    from rocrate.rocrate import ROCrate

    store = RunStore(tmp_path)
    rec = store.create("demo")
    rec.write_recipe({"recipe": {"name": "demo"}})
    rec.data_path("eis").write_text(
        "Test Time / s,Frequency / Hz,Real Impedance / ohm,Imaginary Impedance / ohm\n"
        "0,1000,100,-20\n1,100,120,-40\n2,10,150,-30\n")
    rec.journal.append("transition", trigger="start", source="ready", dest="running")
    rec.journal.append("step_started", step="eis", kind="action", device="potentiostat",
                       action="peis")
    rec.journal.append("record", kind="measurement", step="eis", device="potentiostat",
                       technique="peis")
    rec.journal.append("step_finished", step="eis", kind="action", device="potentiostat")
    rec.journal.append("run_finished", status="completed")
    meta = build_metadata(
        context={"run_id": rec.run_id, "recipe": {"name": "demo", "sha256": "ab"},
                 "times": {"created": "c"},
                 "instigator": {"kind": "ai", "id": "opt-1", "request_id": "q7"},
                 "instruments": {"potentiostat": {"driver": "palmsens-emstat",
                                                  "capabilities": ["potentiostat"],
                                                  "identity": {"model": "EmStat Pico",
                                                               "serial": "SIM1"}},
                                 "balance": {"driver": "mettler-balance",
                                             "capabilities": ["balance"]}},
                 "software": {"version": "0.1.0"}, "fidelity": {"level": "simulated"}},
        events=rec.events(), data_files=rec.data_files(), status="completed")
    rec.write_metadata(meta)
    rec.write_result({"status": "completed"})
    rec.close()
    zpath = store.export(rec.run_id, tmp_path / "out.zip")
    with zipfile.ZipFile(zpath) as z:
        names = set(z.namelist())
        raw = json.loads(z.read("ro-crate-metadata.json"))
    assert {"ro-crate-metadata.json", "recipe.json", "metadata.json", "events.jsonl",
            "result.json", "data/eis.bdf.csv", "figures/eis_nyquist.png",
            "figures/eis_bode.svg"} <= names
    assert not any(n.startswith(f"{rec.run_id}/") for n in names)
    assert raw["@context"] == "https://w3id.org/ro/crate/1.1/context"

    crate = ROCrate(zpath)  # read back with the library
    assert crate.metadata["about"] is crate.root_dataset
    descriptor = next(e for e in raw["@graph"] if e["@id"] == "ro-crate-metadata.json")
    assert descriptor["conformsTo"] == {"@id": "https://w3id.org/ro/crate/1.1"}
    root = crate.root_dataset
    assert root["conformsTo"].id == "https://w3id.org/ro/wfrun/process/0.5"
    [action] = [e for e in crate.get_entities() if e.type == "CreateAction"]
    assert action in root["mentions"]
    assert action["agent"]["identifier"] == "q7"
    instruments = {e.id for e in action["instrument"]}
    assert instruments == {"#software-labctl", "#instrument-potentiostat"}  # no balance
    assert crate.get("#instrument-potentiostat")["serialNumber"] == "SIM1"
    assert [e.id for e in action["object"]] == ["recipe.json"]
    assert {"data/eis.bdf.csv", "result.json"} <= {e.id for e in action["result"]}
    assert action["startTime"] and action["endTime"]
    data = crate.get("data/eis.bdf.csv")
    assert data["sha256"] == meta["data_files"][0]["sha256"]
    nyquist = crate.get("figures/eis_nyquist.png")
    assert nyquist["encodingFormat"] == "image/png" and nyquist["about"] is data
    store.close()


def test_journal_append_is_on_disk_before_return(tmp_path: Path) -> None:
    """A durable append survives the writer being killed right after it."""
    p = tmp_path / "events.jsonl"
    code = ("import os, sys; from labctl.store import Journal\n"
            "j = Journal(sys.argv[1]); j.append('step_started', step='s')\n"
            "os.kill(os.getpid(), 9)\n")
    pr = subprocess.run([sys.executable, "-c", code, str(p)], check=False, timeout=60)
    assert pr.returncode == -9
    assert [e["event"] for e in read_journal(p)] == ["step_started"]
    assert os.path.getsize(p) == len(p.read_bytes())


def test_record_documents_are_indented_json_as_the_json_module_writes_it(
        tmp_path: Path) -> None:
    """metadata.json and result.json are written by orjson (labctl.store.record.json_bytes):
    the layout of json.dumps(indent=2, ensure_ascii=False) and the same values (a small
    float may be spelled 0.00001 instead of 1e-05), and what orjson cannot write is still
    written, through the json module."""
    import dataclasses
    from datetime import UTC, datetime
    from enum import StrEnum

    import numpy as np

    from labctl.store.record import json_bytes

    class Kind(StrEnum):
        AI = "ai"

    @dataclasses.dataclass
    class Point:
        x: float

    doc = {"name": "électrolyte LiPF₆ 1 M", "kind": Kind.AI, "n": 3, "ok": True, "none": None,
           "floats": [0.1, 1e16, 2.5e-310, -0.0, 123456789.125], "empty": {}, "list": [],
           "nested": {"a": [{"b": [1, 2, {"c": "d"}]}]}, "tuple": (1, 2), "set": {7},
           "path": Path("/data/run"), "when": datetime(2026, 12, 6, tzinfo=UTC),
           "point": Point(1.5)}
    from labctl.store.journal import _default
    expected = json.dumps(doc, indent=2, default=_default, ensure_ascii=False) + "\n"
    assert json_bytes(doc) == expected.encode("utf-8")
    small = {"volume_l": [1e-05, 2.5e-07, 0.0001]}
    assert json.loads(json_bytes(small)) == small
    # numpy numbers are numbers; an integer beyond 64 bits falls back to the json module
    assert json.loads(json_bytes({"v": np.float64(0.25), "i": np.int64(4)})) == {"v": 0.25,
                                                                                "i": 4}
    assert json.loads(json_bytes({"big": 2 ** 70})) == {"big": 2 ** 70}
    # JSON has no NaN: null, which every JSON reader accepts
    assert json.loads(json_bytes({"fit": float("nan")})) == {"fit": None}
    write_json_atomic(tmp_path / "metadata.json", doc)
    assert (tmp_path / "metadata.json").read_text(encoding="utf-8") == expected
    assert stat.S_IMODE((tmp_path / "metadata.json").stat().st_mode) == 0o644

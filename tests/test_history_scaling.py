"""The questions a bench asks at every publish and every submit cost the same after a long
history as on a fresh bench: the MQTT outbox's unpublished results, the live samples, the
live sample in a vessel, the next sample number and a lookup by barcode each go through an
index, never over every result or sample ever recorded (bench/history_scaling.py shows
what a scan cost: a submit 4.6 -> 35 ms with 10,000 runs behind the bench).

The work is counted in SQLite virtual-machine instructions (the connection's progress
handler called at every one), not timed: a scan executes a few instructions per row, an
index search the same few whatever the table holds."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labctl.mqtt.outbox import Outbox
from labctl.store.samples import SampleStore

SMALL, LARGE = 20, 400


def vm_steps(db: sqlite3.Connection, call: Callable[[], Any]) -> tuple[int, Any]:
    """SQLite instructions `call` makes `db` execute, and what `call` returned."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    db.set_progress_handler(count, 1)
    try:
        out = call()
    finally:
        db.set_progress_handler(None, 1)
    return steps, out


def outbox_with_history(path: Path, published: int) -> Outbox:
    """An outbox that published `published` results and holds three still to publish."""
    outbox = Outbox(path)
    for i in range(published):
        outbox.add(f"old-{i:04d}", {"status": "completed", "text": "x" * 2000})
        outbox.mark_published(f"old-{i:04d}")
    for i in range(3):
        outbox.add(f"new-{i}", {"status": "completed", "n": i})
    return outbox


def test_the_outbox_finds_its_unpublished_results_without_reading_the_published(
        tmp_path: Path) -> None:
    counts = {}
    for size in (SMALL, LARGE):
        outbox = outbox_with_history(tmp_path / f"outbox-{size}.sqlite", size)
        try:
            counts[size], pending = vm_steps(outbox._db, outbox.pending)
        finally:
            outbox.close()
        assert [run_id for run_id, _ in pending] == ["new-0", "new-1", "new-2"]  # in order
    assert counts[LARGE] == counts[SMALL], counts


def test_an_outbox_written_before_the_index_gets_it_when_opened(tmp_path: Path) -> None:
    """A bench upgraded with a year of results: the index is built on first open."""
    path = tmp_path / "mqtt-outbox.sqlite"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE results (run_id TEXT PRIMARY KEY, payload TEXT NOT NULL, "
                     "published INTEGER NOT NULL DEFAULT 0);")
    db.executemany("INSERT INTO results VALUES (?, '{}', ?)",
                   [(f"old-{i:04d}", 1) for i in range(LARGE)] + [("new", 0)])
    db.commit()
    db.close()
    outbox = Outbox(path)
    try:
        steps, pending = vm_steps(outbox._db, outbox.pending)
    finally:
        outbox.close()
    assert [run_id for run_id, _ in pending] == ["new"]
    assert steps < LARGE, steps  # a scan takes several instructions per row


def samples_with_history(folder: Path, runs: int) -> SampleStore:
    """A sample store after `runs` runs that each filled vial_a (the sample before is
    consumed by the next) and one run that filled vial_b."""
    store = SampleStore(folder, "b1")
    for i in range(runs):
        store.record_run(f"run-{i:04d}", made={"vial_a": {"rack": "r", "position": 1,
                                                          "grams": {"EC": 1.0}}},
                         added={}, events=[])
    [sid] = store.record_run("run-b", made={"vial_b": {"rack": "r", "position": 2}},
                             added={}, events=[])
    store.set_barcode(sid, "BC-0001")
    return store


def sample_queries(store: SampleStore, runs: int) -> dict[str, int]:
    """Instructions of each question asked of `samples_with_history(..., runs)`, each
    checked for its answer."""
    c = {}
    c["live"], live = vm_steps(store._db, store.live_at)
    assert live == {"vial_a": f"S-b1-{runs:06d}", "vial_b": f"S-b1-{runs + 1:06d}"}
    c["barcode"], found = vm_steps(store._db, lambda: store.get("BC-0001"))
    assert found["id"] == f"S-b1-{runs + 1:06d}"
    # a new sample: the next number, and the live one in its vessel consumed
    c["made"], made = vm_steps(store._db, lambda: store.record_run(
        "run-next", made={"vial_a": {"rack": "r", "position": 1}}, added={}, events=[]))
    assert made == [f"S-b1-{runs + 2:06d}"]
    assert store.get(f"S-b1-{runs:06d}")["status"] == "consumed"
    return c


def test_live_samples_numbers_and_barcodes_are_found_without_reading_every_sample(
        tmp_path: Path) -> None:
    counts = {}
    for size in (SMALL, LARGE):
        store = samples_with_history(tmp_path / f"samples-{size}", size)
        try:
            counts[size] = sample_queries(store, size)
        finally:
            store.close()
    assert counts[LARGE] == counts[SMALL], counts

"""Run records: the run folder, its crash-safe journal, the SQLite index, provenance and
RO-Crate export. `RunStore(data_dir)` is the entry point."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labctl.store.index import RunIndex
from labctl.store.journal import (
    Journal,
    JournalReader,
    Replay,
    StepProgress,
    read_journal,
    replay,
    utc_iso,
)
from labctl.store.record import RunRecord, new_run_id, write_json_atomic

DEFAULT_DATA_DIR = Path("runs")


class RunStore:
    """`<data-dir>/<run_id>/` folders plus `<data-dir>/runs.sqlite`."""

    def __init__(self, data_dir: str | Path = DEFAULT_DATA_DIR):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.index = RunIndex(self.data_dir / "runs.sqlite")

    def create(self, recipe_name: str, run_id: str | None = None, *,
               events: Sequence[dict[str, Any]] = (),
               documents: dict[str, Any] | None = None) -> RunRecord:
        """A new run folder (RunRecord.create: its first journal lines and documents)."""
        return RunRecord.create(self.data_dir, run_id or new_run_id(recipe_name),
                                events=events, documents=documents)

    def open(self, run_id: str) -> RunRecord:
        return RunRecord.open(self.data_dir, run_id)

    def list(self, *, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        return self.index.list_runs(limit=limit, status=status)

    def show(self, run_id: str) -> dict[str, Any]:
        """Index row, result and metadata of one run (FileNotFoundError if unknown)."""
        rec = self.open(run_id)
        return {
            "run_id": run_id,
            "path": str(rec.folder),
            "index": self.index.get_run(run_id),
            "result": rec.read_json("result.json"),
            "metadata": rec.read_json("metadata.json"),
            # a run answering a FINALES2 request: the request and the result posted for it
            "finales": rec.read_json("finales.json"),
        }

    def export(self, run_id: str, dest: str | Path | None = None) -> Path:
        """A zip of the run folder and its figures, ro-crate-metadata.json at its root."""
        from labctl.store.rocrate import export_zip

        rec = self.open(run_id)
        meta = rec.read_json("metadata.json") or {"run_id": run_id}
        target = Path(dest) if dest else self.data_dir / f"{run_id}.zip"
        return export_zip(rec.folder, meta, rec.read_json("result.json"), target)

    def seen_command(self, command_id: str) -> dict[str, Any] | None:
        return self.index.seen_command(command_id)

    def remember_command(self, command_id: str, reply: dict[str, Any]) -> None:
        self.index.remember_command(command_id, reply)

    def close(self) -> None:
        self.index.close()


__all__ = [
    "DEFAULT_DATA_DIR",
    "Journal",
    "JournalReader",
    "Replay",
    "RunIndex",
    "RunRecord",
    "RunStore",
    "StepProgress",
    "new_run_id",
    "read_journal",
    "replay",
    "utc_iso",
    "write_json_atomic",
]

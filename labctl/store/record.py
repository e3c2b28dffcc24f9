"""One run's folder: `<data-dir>/<run_id>/` with recipe.json, metadata.json, events.jsonl,
data/ and result.json.

JSON documents are replaced atomically (temp file, fsync, rename, fsync of the folder), so
a reader — or a crash — only ever sees the old or the new version, never half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from labctl.store.journal import (
    Journal,
    JournalReader,
    Replay,
    _default,
    dumps,
    replay,
)

RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def new_run_id(recipe_name: str) -> str:
    """Sortable and readable: '20251126T031245Z-electrolyte_conductivity-3fa9c1'."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    slug = re.sub(r"[^A-Za-z0-9_]+", "_", recipe_name).strip("_")[:40] or "run"
    return f"{stamp}-{slug}-{secrets.token_hex(3)}"


#: orjson writes the layout of `json.dumps(indent=2, ensure_ascii=False)` some 50x faster (a
#: run's metadata.json: 0.26 ms -> 0.006 ms); the values are the same, a small float may be
#: spelled 0.00001 rather than 1e-05. Dataclasses and datetimes go through `_default` as
#: they do with the json module; numpy scalars and arrays are numbers.
_ORJSON_OPTIONS = (orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
                   | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATACLASS
                   | orjson.OPT_PASSTHROUGH_DATETIME)


def json_bytes(data: Any) -> bytes:
    """A record document as written: indented UTF-8 JSON, for the people who open it.
    Non-finite floats are written as null (JSON has no NaN). What orjson cannot write (an
    integer beyond 64 bits) goes through the json module instead."""
    try:
        return orjson.dumps(data, default=_default, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return (json.dumps(data, indent=2, default=_default, ensure_ascii=False)
                + "\n").encode("utf-8")


def _write_file(path: Path, data: bytes, *, durable: bool = True) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def first_files(events: Sequence[dict[str, Any]] = (),
                documents: dict[str, Any] | None = None) -> dict[str, bytes]:
    """The files a new run folder starts with, as bytes: its journal (`events`, one line
    each; empty when none) and each document as JSON."""
    files = {"events.jsonl": "".join(dumps(ev) + "\n" for ev in events).encode("utf-8")}
    for name, data in (documents or {}).items():
        files[name] = json_bytes(data)
    return files


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace `path` with `data` as JSON: temp file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data_bytes = json_bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data_bytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def csv_columns(path: Path) -> list[dict[str, str | None]]:
    """Columns of a CSV data file from its header; BDF names carry the unit
    ('Voltage / V' -> quantity 'Voltage', unit 'V')."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        return []
    cols: list[dict[str, str | None]] = []
    for name in (c.strip().strip('"') for c in header.split(",") if c.strip()):
        quantity, sep, unit = name.rpartition(" / ")
        cols.append({"name": name, "quantity": quantity if sep else name,
                     "unit": unit if sep else None})
    return cols


class RunRecord:
    """The files of one run. Create with `RunRecord.create`, reopen with `RunRecord.open`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.run_id = folder.name
        self._journal: Journal | None = None
        self._reader: JournalReader | None = None

    # -- paths ---------------------------------------------------------------------------
    @property
    def recipe_path(self) -> Path:
        return self.folder / "recipe.json"

    @property
    def metadata_path(self) -> Path:
        return self.folder / "metadata.json"

    @property
    def events_path(self) -> Path:
        return self.folder / "events.jsonl"

    @property
    def result_path(self) -> Path:
        return self.folder / "result.json"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    # -- life cycle ----------------------------------------------------------------------
    @classmethod
    def create(cls, data_dir: Path, run_id: str, *, events: Sequence[dict[str, Any]] = (),
               documents: dict[str, Any] | None = None) -> RunRecord:
        """A new run folder holding its first journal `events` and `documents` (file name
        to JSON data: recipe.json, metadata.json). Built under a hidden name and renamed
        into place, so a run folder never exists without its journal and documents,
        whatever instant the process is killed at: one fsync per file, one for the
        folder, one for the data dir, however many lines and documents it starts with."""
        return cls.create_files(data_dir, run_id, first_files(events, documents))

    @classmethod
    def create_files(cls, data_dir: Path, run_id: str, files: dict[str, bytes], *,
                     durable: bool = True) -> RunRecord:
        """A new run folder holding `files` (name to bytes), as `create` builds it.
        `durable=False` leaves the fsyncs to a later `sync()` (a killed process loses
        nothing, the kernel has the files; a power cut may): for a caller that has the
        same bytes (`first_files`) committed elsewhere first."""
        if not RUN_ID_RE.match(run_id):
            raise ValueError(f"invalid run id {run_id!r}")
        folder = Path(data_dir) / run_id
        if folder.exists():
            raise FileExistsError(f"run {run_id!r} exists in {data_dir}")
        staging = Path(data_dir) / f".{run_id}.creating"
        if staging.exists():
            shutil.rmtree(staging)  # left by a process killed while creating this run
        (staging / "data").mkdir(parents=True)
        for name, data in files.items():
            _write_file(staging / name, data, durable=durable)
        if durable:
            _fsync_dir(staging)
        os.rename(staging, folder)
        if durable:
            _fsync_dir(Path(data_dir))
        return cls(folder)

    def sync(self) -> None:
        """fsync what `create(durable=False)` wrote: every file at the folder's top, the
        folder and the data dir holding it."""
        for path in self.folder.iterdir():
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        _fsync_dir(self.folder)
        _fsync_dir(self.folder.parent)

    @classmethod
    def restore(cls, data_dir: Path, run_id: str, files: dict[str, bytes]) -> bool:
        """Make a run folder hold `files` as they were first written (a power cut after
        `create(durable=False)` may have lost them): a missing folder is created, a file
        that does not start with its first bytes is written again (lines appended later are
        kept when the first ones are intact); all of it synced. True when anything had to
        be written."""
        folder = Path(data_dir) / run_id
        if not folder.is_dir():
            cls.create_files(data_dir, run_id, files)
            return True
        written = False
        for name, data in files.items():
            path = folder / name
            try:
                intact = path.read_bytes().startswith(data)
            except OSError:
                intact = False
            if not intact:
                _write_file(path, data, durable=True)
                written = True
        (folder / "data").mkdir(exist_ok=True)
        cls(folder).sync()
        return written

    @classmethod
    def open(cls, data_dir: Path, run_id: str) -> RunRecord:
        if not RUN_ID_RE.match(run_id):
            raise FileNotFoundError(f"invalid run id {run_id!r}")
        folder = Path(data_dir) / run_id
        if not folder.is_dir():
            raise FileNotFoundError(f"no run {run_id!r} in {data_dir}")
        return cls(folder)

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            self._journal = Journal(self.events_path)
        return self._journal

    def close(self) -> None:
        """Close the journal, and let go of the events read from it: a run's record is
        closed when the run has ended, and a bench keeps its last runs' records."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self._reader = None

    # -- documents -----------------------------------------------------------------------
    def write_recipe(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.recipe_path, data)

    def write_metadata(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.metadata_path, data)

    def write_result(self, data: dict[str, Any]) -> None:
        write_json_atomic(self.result_path, data)

    def read_json(self, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.folder / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return data

    def events(self) -> list[dict[str, Any]]:
        """The journal's events; read again, only the lines appended since are parsed
        (shared between reads: do not change them)."""
        if self._reader is None:
            self._reader = JournalReader(self.events_path)
        return self._reader.read()

    def replay(self) -> Replay:
        return replay(self.events())

    def data_path(self, step_id: str, suffix: str = ".bdf.csv") -> Path:
        """Where a step's measurements go (step ids are made file-name safe). A step
        attempted again (a retry, a re-run after resume) gets a new file
        (`<step>.attempt2<suffix>` ...): the earlier attempt's rows are never overwritten."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", step_id).strip("._") or "step"
        self.data_dir.mkdir(exist_ok=True)
        path = self.data_dir / f"{safe}{suffix}"
        attempt = 1
        while path.exists():
            attempt += 1
            path = self.data_dir / f"{safe}.attempt{attempt}{suffix}"
        return path

    def data_files(self) -> list[dict[str, Any]]:
        """Every file under data/ with its size, SHA-256 and columns (for provenance)."""
        out: list[dict[str, Any]] = []
        if not self.data_dir.is_dir():
            return out
        for p in sorted(self.data_dir.rglob("*")):
            if not p.is_file() or p.name.startswith("."):
                continue
            entry: dict[str, Any] = {
                "path": str(p.relative_to(self.folder)),
                "bytes": p.stat().st_size,
                "sha256": sha256_file(p),
                "modified": datetime.fromtimestamp(p.stat().st_mtime, UTC).isoformat(),
            }
            if p.name.endswith(".csv"):
                entry["format"] = "BDF (Battery Data Format) CSV" if ".bdf." in p.name else "CSV"
                entry["columns"] = csv_columns(p)
            out.append(entry)
        return out

"""`labctl run RECIPE --params-csv FILE`: a campaign, one run per row.

A column per parameter; a unit goes in the header (`temperature [degC]`, applied to bare
numbers of that column) or in the cell (`25 degC`); an empty cell keeps the recipe's
default. A `priority` column (an integer, higher first; empty: 0) sets each row's place in
the queue, unless the recipe declares a parameter of that name. Every row is validated
before anything starts (exit 2 naming the row and the parameter); then all rows are
submitted, and the bench runs them as concurrently as it allows (config `[bench]
concurrency`, or `--concurrency`), one live display for the campaign, a summary table
with each row's figures of merit at the end.
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from labctl.cli import display

if TYPE_CHECKING:
    from labctl.bench import Bench
    from labctl.config import BenchConfig
    from labctl.recipe.plan import Plan

_HEADER = re.compile(r"^\s*(?P<name>[^\[\]]+?)\s*(?:\[(?P<unit>[^\[\]]*)\])?\s*$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class CsvError(ValueError):
    """A parameters file that cannot be read: names the file, line and column."""


def read_rows(path: Path) -> list[dict[str, str]]:
    """The parameter values of each row ({name: text with its unit}); CsvError naming
    where for a malformed file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CsvError(f"{path}: {exc.strerror or exc}") from None
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        raise CsvError(f"{path}: empty file (a header of parameter names is needed)") from None
    columns: list[tuple[str, str | None]] = []
    for i, cell in enumerate(header, 1):
        m = _HEADER.match(cell)
        if m is None or not m.group("name").strip():
            raise CsvError(f"{path}: line 1, column {i}: {cell!r} is not a parameter name "
                           "(NAME or NAME [unit])")
        name = m.group("name").strip()
        if any(name == c for c, _ in columns):
            raise CsvError(f"{path}: line 1, column {i}: parameter {name!r} twice")
        columns.append((name, (m.group("unit") or "").strip() or None))
    rows: list[dict[str, str]] = []
    for line_no, cells in enumerate(reader, 2):
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) > len(columns):
            raise CsvError(f"{path}: line {line_no}: {len(cells)} cells, the header has "
                           f"{len(columns)}")
        row: dict[str, str] = {}
        for (name, unit), cell in zip(columns, cells, strict=False):
            value = cell.strip()
            if not value:
                continue  # the recipe's default
            if unit and _NUMBER.match(value):
                value = f"{value} {unit}"
            row[name] = value
        rows.append(row)
    if not rows:
        raise CsvError(f"{path}: no rows (one run per row below the header)")
    return rows


PRIORITY_COLUMN = "priority"


def declared_parameters(recipe: Path) -> set[str]:
    """The parameter names a recipe file declares (none when it cannot be read: the
    planner then reports why)."""
    try:
        doc = json.loads(recipe.read_text(encoding="utf-8"))
        return set(doc.get("parameters") or {}) if isinstance(doc, dict) else set()
    except (OSError, ValueError, AttributeError):
        return set()


def take_priorities(rows: list[dict[str, str]], declared: set[str]) -> list[int]:
    """Each row's queue priority, taken out of its `priority` cell (0 when empty or when
    the recipe declares a `priority` parameter, which the column then sets); CsvError
    naming the row for a cell that is not an integer in the range every adapter takes."""
    from labctl.mqtt.payloads import parse_priority

    if PRIORITY_COLUMN in declared:
        return [0] * len(rows)
    out: list[int] = []
    for i, row in enumerate(rows, 1):
        try:
            out.append(parse_priority(row.pop(PRIORITY_COLUMN, "")))
        except ValueError as exc:
            raise CsvError(f"row {i}: priority {exc}") from None
    return out


def plan_rows(recipe: Path, rows: list[dict[str, str]], cfg: BenchConfig,
              extra: dict[str, str], data_dir: Path | None = None) -> list[Plan]:
    """A plan per row (`extra`: --param values for every row); CsvError naming the row
    and every issue of the first invalid one. Nothing starts before all are valid. With
    the bench's `data_dir`, sample ids and omitted vials are bound as `labctl run` does
    (the vials each row really gets are chosen at submit: `bind_rows`)."""
    from labctl.bench.samples import bind_offline
    from labctl.recipe import RecipeError, build_plan

    plans = []
    for i, row in enumerate(rows, 1):
        try:
            params: dict[str, Any] = {**extra, **row}
            stock = None
            if data_dir is not None:
                params, stock = bind_offline(cfg, data_dir, recipe, params)
            plans.append(build_plan(recipe, params, cfg, stock=stock))
        except RecipeError as exc:
            raise CsvError(f"row {i} ({_row_text(row)}): {exc}") from None
    return plans


def bind_rows(bench: Bench, recipe: Path, rows: list[dict[str, str]],
              extra: dict[str, str]) -> list[Plan]:
    """Each row's plan on the started bench: sample ids to their vessels and a distinct
    free vial per row where a `vial` parameter is left out (rows are bound in order, each
    seeing the vials the rows before it took), then the whole campaign checked against the
    persisted stock at once (labctl.bench.stock.check_plans: the sum of all rows counts).
    CsvError naming the row; nothing is submitted when any row fails."""
    from labctl.bench.stock import check_plans
    from labctl.recipe import RecipeError

    plans: list[Plan] = []
    taken: set[str] = set()
    for i, row in enumerate(rows, 1):
        params = {**extra, **row}
        try:
            bound, _inputs, vessels = bench.samples.bind(recipe, params, bench.runs.active(),
                                                         exclude=taken)
            plans.append(bench.plan(recipe, bound, stock=bench.stock_view()))
        except RecipeError as exc:
            raise CsvError(f"row {i} ({_row_text(row)}): {exc}") from None
        rows[i - 1] = {**row, **{k: str(v) for k, v in bound.items()
                                 if k not in params and isinstance(v, str)}}
        taken |= vessels
    try:
        check_plans(bench.stock, plans, bench.runs.active(), bench.samples.vial_levels())
    except RecipeError as exc:
        raise CsvError(f"the campaign of {len(rows)} runs: {exc}") from None
    return plans


def _row_text(row: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in row.items()) or "defaults"


class CampaignView:
    """One line per run of the campaign: state, progress, current steps."""

    def __init__(self, bench: Bench, run_ids: list[str], rows: list[dict[str, str]]):
        self.bench = bench
        self.run_ids = run_ids
        self.rows = rows
        self.t0 = time.monotonic()
        self.ended: dict[str, str] = {}

    def render(self) -> Any:
        st = self.bench.status()
        running = {r["run_id"]: r for r in st.get("running") or []}
        queued = {q["run_id"]: q for q in st.get("queue") or []}
        table = Table(title=f"campaign: {len(self.run_ids)} runs, "
                            f"{len(self.ended)} ended, "
                            f"{time.monotonic() - self.t0:.1f} s", title_justify="left")
        for col in ("row", "run", "state", "progress", "steps"):
            table.add_column(col)
        for i, rid in enumerate(self.run_ids, 1):
            run = running.get(rid)
            prog = (run or {}).get("progress") or {}
            if rid in self.ended:
                state, frac = self.ended[rid], 1.0 if self.ended[rid] == "completed" else None
            elif run is not None:
                state, frac = str(run.get("state")), prog.get("fraction")
            elif rid in queued:
                state, frac = f"queued ({queued[rid].get('position')})", None
            else:
                state, frac = "…", None
            steps = ", ".join(s["id"] for s in prog.get("steps") or []) if run else ""
            table.add_row(str(i), rid, state,
                          "" if frac is None else f"{100 * float(frac):5.1f} %",
                          Text(steps, overflow="ellipsis", no_wrap=True))
        return table


def figures(result: dict[str, Any]) -> dict[str, str]:
    """A run's figures of merit as {name: "value unit"}."""
    out: dict[str, str] = {}
    for f in result.get("figures_of_merit") or []:
        name = str(f.get("name") or f.get("quantity") or f.get("analysis") or "?")
        value = f.get("value")
        if isinstance(value, float):
            value = f"{value:.4g}"
        unit = display.unit_symbol(str(f.get("unit") or ""))
        out[name] = f"{value}{' ' + unit if unit else ''}"
    return out


def summary(rows: list[dict[str, str]], run_ids: list[str],
            results: list[dict[str, Any]]) -> Table:
    """A line per row: its parameters, run, status and a column per figure of merit."""
    params = list(dict.fromkeys(k for row in rows for k in row))
    figs = [figures(r) for r in results]
    names = list(dict.fromkeys(k for f in figs for k in f))
    table = display.table("campaign", "row", *params, "run", "status", *names,
                          ids=("row", "run", "status"))
    for i, (row, rid, res, fig) in enumerate(zip(rows, run_ids, results, figs,
                                                 strict=True), 1):
        table.add_row(str(i), *(row.get(p, "") for p in params), rid,
                      str(res.get("status")), *(fig.get(n, "") for n in names))
    return table


def exit_code(results: list[dict[str, Any]]) -> int:
    """0 every run completed; 1 any failed; 3 any aborted (none failed)."""
    statuses = {r.get("status") for r in results}
    if statuses <= {"completed"}:
        return 0
    if "aborted" in statuses and not (statuses - {"completed", "aborted"}):
        return 3
    return 1


def json_line(i: int, row: dict[str, str], result: dict[str, Any]) -> str:
    """A row's result document, with the row number and its cells (`row_values`)."""
    return json.dumps({"row": i, "row_values": row, **result}, default=str)


async def drive(bench: Bench, plans: list[Plan], rows: list[dict[str, str]],
                extra: dict[str, str], *, who: str, source: str,
                as_json: bool, priorities: list[int] | None = None
                ) -> tuple[list[str], list[dict[str, Any]]]:
    """Start the bench, submit every row (with its queue priority), show the campaign,
    handle signals (the first aborts every run, a second is an e-stop); (run ids,
    results) in row order."""
    import asyncio
    import contextlib
    import signal

    from rich.console import Console
    from rich.live import Live

    from labctl.errors import LabctlError

    loop = asyncio.get_running_loop()
    err = Console(stderr=True)
    stopping = {"count": 0}
    await bench.start()
    try:
        plans = bind_rows(bench, Path(source), rows, extra)
        prio = priorities or [0] * len(rows)
        ids: dict[int, str] = {}
        # submitted highest priority first (ties in row order): the first runs to start
        # are the most urgent ones, not just the first rows
        for i in sorted(range(len(rows)), key=lambda i: -prio[i]):
            ids[i] = await bench.submit(plans[i], {**extra, **rows[i]}, instigator=who,
                                        source=source, priority=prio[i])
        run_ids = [ids[i] for i in range(len(rows))]
    except BaseException:
        await bench.close()
        raise
    if as_json:
        print(json.dumps({"event": "started", "run_ids": run_ids,
                          "concurrency": bench.runs.max_concurrent}), flush=True)
    else:
        err.print(f"campaign of {len(run_ids)} runs, up to {bench.runs.max_concurrent} at "
                  f"once; records in {bench.store.data_dir}", soft_wrap=True)

    async def on_signal() -> None:
        stopping["count"] += 1
        with contextlib.suppress(LabctlError):
            if stopping["count"] == 1:
                err.print("[yellow]stopping: aborting every run safely "
                          "(again for an emergency stop)…[/yellow]")
                for rid in run_ids:  # the queued ones first, then the running
                    with contextlib.suppress(Exception):
                        await bench.cancel(rid)
                await bench.abort()
            else:
                await bench.estop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(on_signal()))
    view = CampaignView(bench, run_ids, rows)

    async def one(i: int, rid: str) -> dict[str, Any]:
        res = await bench.wait(rid)
        view.ended[rid] = str(res.get("status"))
        if as_json:
            print(json_line(i, rows[i - 1], res), flush=True)
        return res

    try:
        waiter = asyncio.ensure_future(asyncio.gather(
            *(one(i, rid) for i, rid in enumerate(run_ids, 1))))
        if as_json or not err.is_terminal:
            results = list(await waiter)
        else:
            with Live(view.render(), console=err, refresh_per_second=4) as live:
                while not waiter.done():
                    await asyncio.wait({waiter}, timeout=0.25)
                    live.update(view.render())
            results = list(waiter.result())
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await bench.close()
    return run_ids, results

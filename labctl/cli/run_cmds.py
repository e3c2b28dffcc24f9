"""`labctl run`, `labctl resume` and `labctl runs list|show|export|plot`.

`run` validates first (exit 2, nothing started, on any fault), then runs the recipe on the
bench through the Bench service with a live display, and exits 0 completed, 1 failed,
3 aborted; 2 too when another process has the bench (its data dir's lock or a device's
serial line), which is then left untouched. `runs list|show|export` only read records and
take no lock. Ctrl-C or SIGTERM aborts safely (a second one is an e-stop).
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from labctl.bench_lock import BenchInUse
from labctl.cli import display
from labctl.cli.common import (
    DEFAULT_CONFIG_PATH,
    EXIT_ABORTED,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    ConcurrencyOpt,
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    ParamOpt,
    TimeScaleOpt,
    fail,
    load_bench_config,
)
from labctl.cli.root import app
from labctl.errors import ConfigError, LabctlError
from labctl.progress import format_s, plan_leaves, progress_text

DEFAULT_DATA_DIR = Path("runs")
EXIT_BY_STATUS = {"completed": EXIT_OK, "failed": EXIT_FAILED, "aborted": EXIT_ABORTED}

OperatorOpt = Annotated[str | None, typer.Option(
    "--operator", help="Who runs this (recorded as the run's instigator; default: $USER).")]

runs_app = typer.Typer(help="Run records: list, show, export, plot.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

if TYPE_CHECKING:
    from labctl.bench import Bench


def parse_params(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            fail(f"--param {item!r}: expected NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def _operator(name: str | None) -> str:
    import getpass

    if name:
        return name
    try:
        return getpass.getuser()
    except Exception:  # no user database in some containers
        return "unknown"


# ---------------------------------------------------------------- live display


class LiveView:
    """Step, progress bar, elapsed/ETA and the last readings, fed by bench events."""

    def __init__(self, bench: Bench, run_id: str):
        self.bench = bench
        self.run_id = run_id
        self.readings: dict[str, str] = {}
        self.last_event = ""
        self.t0 = time.monotonic()
        #: the last progress seen of this run, and how it ended: the last frame is drawn
        #: after the bench has let go of the run
        self.last_prog: dict[str, Any] = {}
        self.outcome: str | None = None

    def feed(self, ev: dict[str, Any]) -> None:
        if ev.get("run_id") not in (None, self.run_id):
            return
        kind = ev.get("event")
        if kind == "record":
            skip = {"event", "type", "seq", "t", "ts", "run_id", "bench_id", "kind", "step",
                    "device"}
            shown = ", ".join(display.reading(k, v) for k, v in ev.items()
                              if k not in skip and v is not None)
            self.readings[f"{ev.get('device') or ev.get('step')} {ev.get('kind')}"] = shown
        elif kind in ("step_started", "step_finished", "step_failed", "transition"):
            what = ev.get("step") or f"{ev.get('source')} → {ev.get('dest')}"
            self.last_event = f"{kind} {what}"
        if kind == "run_finished" and ev.get("run_id") == self.run_id:
            self.outcome = str(ev.get("status") or "")

    def finish(self, result: dict[str, Any]) -> None:
        """The run has ended: the last frame shows its outcome (100 % when completed)."""
        self.outcome = str(result.get("status") or self.outcome or "")

    def _progress(self, run: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """This run's progress and state, also before it starts and after it ended."""
        if run.get("run_id") == self.run_id and run.get("progress"):
            self.last_prog = dict(run["progress"])
            return self.last_prog, str(run.get("state"))
        prog = dict(self.last_prog)
        ticket = getattr(self.bench, "tickets", {}).get(self.run_id)
        if self.outcome:
            if self.outcome == "completed":
                total = prog.get("steps_total") or len(plan_leaves(getattr(ticket, "plan",
                                                                           None)))
                prog.update(fraction=1.0, eta_s=0.0, steps_done=total, steps_total=total)
            return prog, self.outcome
        est = getattr(getattr(ticket, "plan", None), "estimated_s", None)
        clock = getattr(getattr(self.bench, "instruments", None), "clock", None)
        if isinstance(est, (int, float)) and clock is not None:
            prog = {**prog, "est_total_s": clock.to_wall(est)}
        return prog, str(run.get("state") or "starting")

    def render(self) -> Any:
        st = self.bench.status()
        run = st.get("run") or {}
        prog, state = self._progress(run)
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("run", Text(f"{self.run_id}  [{state}]"))
        steps = [] if self.outcome else (prog.get("steps") or [])
        table.add_row("step", ", ".join(
            f"{s['id']} ({s.get('device') or s.get('kind')}"
            f"{'.' + s['action'] if s.get('action') else ''})" for s in steps) or "—")
        frac = float(prog.get("fraction") or 0.0)
        bar = ProgressBar(total=1.0, completed=frac, width=40)
        line = Table.grid(padding=(0, 1))  # a Group would drop the text after the bar
        line.add_row(bar, Text(progress_text(prog, state=state)))
        table.add_row("progress", line)
        eta = prog.get("eta_s")
        table.add_row("elapsed / ETA",
                      f"{time.monotonic() - self.t0:7.1f} s / "
                      + (format_s(eta) if isinstance(eta, (int, float)) and not self.outcome
                         else "done" if self.outcome else "--"))
        for key, value in list(self.readings.items())[-4:]:
            table.add_row(key, value)
        if self.last_event:
            table.add_row("last", self.last_event)
        return table


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) > 3:
        return f"{len(v)} values, last {_short(v[-1])}"
    return str(v)


def _took(started: str | None, ended: str | None) -> str:
    """Wall time of a step from its ISO start and end ('' when unknown)."""
    from datetime import datetime

    try:
        dt = (datetime.fromisoformat(str(ended)) - datetime.fromisoformat(str(started)))
    except ValueError:
        return ""
    return display.quantity(dt.total_seconds(), "s", 3)


# ---------------------------------------------------------------- running


async def _drive(bench: Bench, start: Callable[[Bench], Awaitable[str]], *,
                 as_json: bool) -> tuple[dict[str, Any], str]:
    """Start the bench, submit (via `start`), show progress, handle signals; the result."""
    import asyncio  # not at the top: ~25 ms of `labctl --help` (bench/startup.py)
    loop = asyncio.get_running_loop()
    stopping = {"count": 0}
    await bench.start()
    try:
        run_id = await start(bench)
    except BaseException:
        await bench.close()
        raise
    err = Console(stderr=True)
    rec_dir = bench.store.open(run_id).folder
    if not as_json:
        err.print(f"run [bold]{run_id}[/bold] — record in {rec_dir}", soft_wrap=True)
    else:
        print(json.dumps({"event": "started", "run_id": run_id, "record": str(rec_dir)}),
              flush=True)

    async def on_signal() -> None:
        stopping["count"] += 1
        with contextlib.suppress(LabctlError):
            if stopping["count"] == 1:
                err.print("[yellow]stopping: aborting the run safely "
                          "(again for an emergency stop)…[/yellow]")
                await bench.abort()
            else:
                await bench.estop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(on_signal()))
    view = LiveView(bench, run_id)
    watcher: asyncio.Task[Any] | None = None

    async def watch() -> None:
        async for ev in bench.subscribe():
            view.feed(ev)

    try:
        watcher = asyncio.create_task(watch())
        waiter = asyncio.create_task(bench.wait(run_id))
        if as_json or not err.is_terminal:
            result = await waiter
        else:
            with Live(view.render(), console=err, refresh_per_second=8, transient=False) as live:
                while not waiter.done():
                    await asyncio.wait({waiter}, timeout=0.125)
                    live.update(view.render())
                view.finish(waiter.result())
                live.update(view.render())
            result = waiter.result()
    finally:
        if watcher is not None:
            watcher.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await bench.close()
    return result, run_id


def _report(result: dict[str, Any], *, as_json: bool) -> int:
    status = result.get("status", "failed")
    if as_json:  # JSON Lines: the "started" line, then the result
        print(json.dumps(result, default=str), flush=True)
        return EXIT_BY_STATUS.get(status, EXIT_FAILED)
    out = display.console()
    style = {"completed": "green", "failed": "red", "aborted": "yellow"}.get(status, "red")
    out.print(f"[{style}]run {result.get('run_id')} {status}[/{style}]", soft_wrap=True)
    figs = result.get("figures_of_merit") or []
    if figs:
        table = display.table("figures of merit", "quantity", "value", "unit", "method")
        for f in figs:
            name = f.get("name") or f.get("quantity") or f.get("analysis") or "?"
            value = f.get("value")
            table.add_row(str(name), _short(value) if value is not None else "",
                          display.unit_symbol(str(f.get("unit") or "")),
                          str(f.get("method") or f.get("analysis") or ""))
        out.print(table)
    for e in result.get("errors") or []:
        out.print(f"[red]error:[/red] {e.get('message') or e}")
    if result.get("in_doubt"):
        out.print(f"in-doubt steps: {', '.join(result['in_doubt'])}")
    out.print(f"fidelity: {(result.get('fidelity') or {}).get('level')}")
    out.print(f"record: {result.get('record')}", soft_wrap=True)
    return EXIT_BY_STATUS.get(status, EXIT_FAILED)


def _make_bench(config: Path, data_dir: Path, time_scale: float | None, as_json: bool
                ) -> Bench:
    from labctl.bench import Bench

    cfg = load_bench_config(config, as_json=as_json)
    return Bench(cfg, data_dir=data_dir, time_scale=time_scale)


RUN_HELP = (
    "Validate RECIPE against the bench, then run it, recording everything under "
    "DATA_DIR/<run_id>/.\n\n"
    "Exit 0 completed, 1 failed, 2 invalid input (nothing ran), 3 aborted. "
    "Ctrl-C aborts safely; a second Ctrl-C is an emergency stop."
)
RESUME_HELP = (
    "Continue an interrupted run: completed steps are not repeated, idempotent in-doubt "
    "steps are re-run, any other in-doubt step needs --accept-in-doubt STEP or --redo STEP "
    "(exit 2 otherwise).\n\nThe decision is recorded in the run's journal and metadata."
)


@app.command(help=RUN_HELP)
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe file (JSON, labctl.recipe/1).")],
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    param: ParamOpt = None,
    data_dir: DataDirOpt = DEFAULT_DATA_DIR,
    time_scale: TimeScaleOpt = None,
    operator: OperatorOpt = None,
    json_out: JsonOpt = False,
    params_csv: Annotated[Path | None, typer.Option(
        "--params-csv", help="A campaign: one run per row of this CSV file (a column per "
        "parameter; units in the header, `temperature [degC]`, or in the cells), run as "
        "concurrently as the bench allows.")] = None,
    concurrency: ConcurrencyOpt = None,
) -> None:
    """Validate, then run a recipe with a live display."""
    import asyncio  # not at the top: ~25 ms of `labctl --help` (bench/startup.py)

    from labctl.analysis.worker import AnalysisWorker

    # the analysis process starts now and imports scipy while labctl's recipe code is
    # imported, the config read, the plan made, the simulators started and the first steps
    # run (labctl.analysis.worker)
    analyses = AnalysisWorker()
    analyses.prepare(_analyses_named(recipe))
    try:
        from labctl.recipe import RecipeError, build_plan

        params = parse_params(param)
        cfg = load_bench_config(config, as_json=json_out)
        if concurrency is not None:
            cfg.bench.concurrency = concurrency
        if params_csv is not None:
            analyses.close()  # a campaign's bench starts its own
            _campaign(recipe, params_csv, params, cfg, data_dir=data_dir, time_scale=time_scale,
                      who=f"operator:{_operator(operator)}", as_json=json_out)
        from labctl.bench.samples import bind_offline

        try:
            # sample ids to their vessels, omitted vials to free ones (labctl.bench.samples)
            bound, stock = bind_offline(cfg, data_dir, recipe, params)
            plan = build_plan(recipe, bound, cfg, stock=stock)
        except RecipeError as exc:
            _refused(exc, data_dir, json_out)
        who = f"operator:{_operator(operator)}"
        from labctl.bench import Bench

        # the run prepares the analyses of included recipes too, when it starts (Executor)
        bench = Bench(cfg, data_dir=data_dir, time_scale=time_scale, analysis_worker=analyses)

        async def start(b: Bench) -> str:
            rid: str = await b.submit(plan, params, instigator=who, source=str(recipe))
            return rid

        try:
            result, _ = asyncio.run(_drive(bench, start, as_json=json_out))
        except BenchInUse as exc:  # another process has this data dir or a device's line
            fail(str(exc), EXIT_INVALID, as_json=json_out)
        except RecipeError as exc:  # refused at submit: the persisted inventory cannot serve it
            _refused(exc, data_dir, json_out)
        except (ConfigError, LabctlError) as exc:
            fail(str(exc), EXIT_FAILED if not isinstance(exc, ConfigError) else EXIT_INVALID,
                 as_json=json_out)
        raise typer.Exit(_report(result, as_json=json_out))
    finally:  # an early exit (invalid recipe, bench in use) stops it too
        analyses.close()


def _analyses_named(recipe: Path) -> set[str]:
    """The analyses a recipe file's own steps name, read before it is validated (so that
    their process can start early); none when it cannot be read, which validation reports."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("analysis"), str):
                found.add(node["analysis"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    with contextlib.suppress(OSError, ValueError):
        walk(json.loads(recipe.read_text(encoding="utf-8")))
    return found


_SHORT_STOCK = re.compile(r"^(?P<vessel>\S+) holds .*, cannot (take|dose) ")


def _refused(exc: Any, data_dir: Path, as_json: bool) -> NoReturn:
    """An invalid recipe: every issue (JSON or text), exit 2. When the bench's persisted
    stock is what runs short, say how an operator records the refill."""
    if as_json:
        print(json.dumps(exc.to_dict(), indent=2))
        raise typer.Exit(EXIT_INVALID)
    print(f"error: {exc}", file=sys.stderr)
    short = sorted({m.group("vessel") for i in exc.issues
                    if (m := _SHORT_STOCK.match(i.message))})
    for vessel in short:
        print(f"hint: after refilling {vessel}, record it: labctl inventory refill {vessel} "
              f"AMOUNT --data-dir {data_dir} (levels: labctl inventory show)", file=sys.stderr)
    raise typer.Exit(EXIT_INVALID)


def _campaign(recipe: Path, csv_path: Path, params: dict[str, str], cfg: Any, *,
              data_dir: Path, time_scale: float | None, who: str, as_json: bool) -> None:
    """`run --params-csv`: every row validated first (exit 2), then all run
    (labctl.cli.params_csv); exits like a run: 0 all completed, 1 any failed, 3 aborted."""
    import asyncio

    from labctl.bench import Bench
    from labctl.cli import params_csv as pc

    try:
        rows = pc.read_rows(csv_path)
        priorities = pc.take_priorities(rows, pc.declared_parameters(recipe))
        plans = pc.plan_rows(recipe, rows, cfg, params, data_dir)
    except pc.CsvError as exc:
        fail(str(exc), EXIT_INVALID, as_json=as_json)
    bench = Bench(cfg, data_dir=data_dir, time_scale=time_scale)
    try:
        run_ids, results = asyncio.run(pc.drive(bench, plans, rows, params, who=who,
                                                source=str(recipe), as_json=as_json,
                                                priorities=priorities))
    except BenchInUse as exc:
        fail(str(exc), EXIT_INVALID, as_json=as_json)
    except (ConfigError, LabctlError) as exc:
        fail(str(exc), EXIT_FAILED if not isinstance(exc, ConfigError) else EXIT_INVALID,
             as_json=as_json)
    if not as_json:
        display.console().print(pc.summary(rows, run_ids, results))
    raise typer.Exit(pc.exit_code(results))


@app.command(help=RESUME_HELP)
def resume(
    run_id: Annotated[str, typer.Argument(help="The run to continue.")],
    accept_in_doubt: Annotated[list[str] | None, typer.Option(
        "--accept-in-doubt", help="Mark an in-doubt STEP done as it stands (repeatable).")] = None,
    redo: Annotated[list[str] | None, typer.Option(
        "--redo", help="Repeat an in-doubt STEP (repeatable).")] = None,
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    data_dir: DataDirOpt = DEFAULT_DATA_DIR,
    time_scale: TimeScaleOpt = None,
    operator: OperatorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Continue an interrupted run."""
    import asyncio  # not at the top: ~25 ms of `labctl --help` (bench/startup.py)

    from labctl.bench import InDoubtError, NothingToResume
    from labctl.recipe import RecipeError

    bench = _make_bench(config, data_dir, time_scale, json_out)
    try:  # decisions first: no device is touched while one is missing
        bench.check_resume(run_id, accept_in_doubt=accept_in_doubt or [], redo=redo or [])
    except InDoubtError as exc:
        bench.store.close()
        fail(str(exc), EXIT_INVALID, as_json=json_out, in_doubt=exc.steps,
             **({"sim_world": exc.world} if exc.world else {}))
    except (NothingToResume, RecipeError) as exc:
        bench.store.close()
        fail(str(exc), EXIT_INVALID, as_json=json_out)
    try:  # a simulated bench starts from the world the run saved, not an empty one
        saved = bench.use_saved_world(run_id)
    except ConfigError as exc:
        bench.store.close()
        fail(str(exc), EXIT_INVALID, as_json=json_out)
    if saved is not None and not json_out:
        at = saved.get("at") or {}
        Console(stderr=True).print(
            f"simulated world restored as saved at {at.get('event')} {at.get('step')} "
            f"({saved.get('saved')})")

    async def start(b: Bench) -> str:
        rid: str = await b.resume_run(run_id, accept_in_doubt=accept_in_doubt or [],
                                      redo=redo or [], operator=_operator(operator))
        return rid

    try:
        result, _ = asyncio.run(_drive(bench, start, as_json=json_out))
    except InDoubtError as exc:
        fail(str(exc), EXIT_INVALID, as_json=json_out, in_doubt=exc.steps)
    except (NothingToResume, RecipeError, ConfigError, BenchInUse) as exc:
        fail(str(exc), EXIT_INVALID, as_json=json_out)
    except LabctlError as exc:
        fail(str(exc), EXIT_FAILED, as_json=json_out)
    raise typer.Exit(_report(result, as_json=json_out))


# ---------------------------------------------------------------- records


def _store(data_dir: Path) -> Any:
    from labctl.store import RunStore

    return RunStore(data_dir)


@runs_app.command("list")
def runs_list(
    data_dir: DataDirOpt = DEFAULT_DATA_DIR,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many (newest first).")] = 50,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The runs recorded in DATA_DIR (newest first)."""
    store = _store(data_dir)
    rows = store.list(limit=limit, status=status)
    store.close()
    if json_out:
        print(json.dumps(rows, indent=2, default=str))
        return
    out = display.console()
    wide = out.width >= 120  # the run id already holds the time and the recipe
    cols = ("run id", "status", "by") + (("fidelity", "recipe", "created") if wide else ())
    table = display.table(f"runs in {data_dir}", *cols, ids=("run id", "status"))
    display.fit_ids(table, [
        (r["run_id"], r["status"], r.get("instigator") or "")
        + ((r.get("fidelity") or "", r["recipe"], display.short_time(r.get("created")))
           if wide else ())
        for r in rows])
    out.print(table)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    data_dir: DataDirOpt = DEFAULT_DATA_DIR,
    json_out: JsonOpt = False,
) -> None:
    """One run: status, figures of merit, steps, errors and where its files are."""
    store = _store(data_dir)
    try:
        info = store.show(run_id)
    except FileNotFoundError as exc:
        store.close()
        fail(str(exc), EXIT_INVALID, as_json=json_out)
    store.close()
    if json_out:
        print(json.dumps(info, indent=2, default=str))
        return
    out = display.console()
    meta = info.get("metadata") or {}
    result = info.get("result") or {}
    status = result.get("status") or (info.get("index") or {}).get("status")
    out.print(f"[bold]{run_id}[/bold]", soft_wrap=True)
    out.print(f"recipe {meta.get('recipe', {}).get('name')}  \\[{status}]")
    out.print(f"folder: {info['path']}", soft_wrap=True)
    who = meta.get("instigator") or {}
    if who:
        out.print(f"instigator: {who.get('kind')}:{who.get('id')}"
                  + (f"  request {who['request_id']}" if who.get("request_id") else ""))
    link = info.get("finales") or {}
    if link:
        out.print(f"FINALES2 {link.get('server')}: request {link.get('request_id')} -> "
                  f"result {link.get('result_id')} ({link.get('status')})")
    wide = out.width >= 100
    table = display.table("steps", "step", "device", "action", "status", "took",
                          *(("started",) if wide else ()),
                          ids=("step", "device", "action", "status"))
    display.fit_ids(table, [
        (s["id"], str(s.get("device") or ""), str(s.get("action") or s.get("kind")),
         str(s.get("status")), _took(s.get("started"), s.get("ended")))
        + ((display.short_time(s.get("started")),) if wide else ())
        for s in meta.get("steps", [])])
    out.print(table)
    if result:
        _report(result, as_json=False)


@runs_app.command("export")
def runs_export(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    data_dir: DataDirOpt = DEFAULT_DATA_DIR,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="File to write (default DATA_DIR/RUN_ID.zip, or "
        "DATA_DIR/RUN_ID.bluesky.jsonl with --format bluesky).")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="rocrate: a zip with the run's files, figures and an RO-Crate 1.1 "
        "(Process Run Crate). bluesky: event-model documents (RunStart, EventDescriptor, "
        "Event, RunStop), one JSON array (name, document) per line.")] = "rocrate",
    json_out: JsonOpt = False,
) -> None:
    """Write a run as an RO-Crate zip (its files, its figures, ro-crate-metadata.json at the
    root, Process Run Crate profile) or as Bluesky event-model documents."""
    if fmt not in ("rocrate", "bluesky"):
        fail(f"--format {fmt!r}: expected 'rocrate' or 'bluesky'", EXIT_INVALID,
             as_json=json_out)
    store = _store(data_dir)
    try:
        if fmt == "rocrate":
            path = store.export(run_id, output)
            extra: dict[str, Any] = {"zip": str(path)}
        else:
            from labctl.store.bluesky import export_jsonl

            folder = store.open(run_id).folder
            path, counts = export_jsonl(
                folder, output or Path(data_dir) / f"{run_id}.bluesky.jsonl")
            extra = {"documents": str(path), "counts": counts}
    except FileNotFoundError as exc:
        store.close()
        fail(str(exc), EXIT_INVALID, as_json=json_out)
    store.close()
    if json_out:
        print(json.dumps({"ok": True, "run_id": run_id, "format": fmt, **extra}))
    else:
        print(str(path))


@runs_app.command("plot")
def runs_plot(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    data_dir: DataDirOpt = DEFAULT_DATA_DIR,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for the figures (default DATA_DIR/RUN_ID/figures).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Figures of a run as PNG and SVG: Nyquist and Bode plots with the fitted circuit,
    voltammograms with the stability window marked, capacity and coulombic efficiency per
    cycle, mass and temperature traces; figures.json lists them with their point counts."""
    store = _store(data_dir)
    try:
        folder = store.open(run_id).folder
    except FileNotFoundError as exc:
        store.close()
        fail(str(exc), EXIT_INVALID, as_json=json_out)
    store.close()
    from labctl.plots import plot_run

    made = plot_run(folder, out)
    target = out if out is not None else folder / "figures"
    if json_out:
        print(json.dumps({"ok": True, "run_id": run_id, "out": str(target),
                          "figures": [p.as_dict() for p in made]}))
        return
    if not made:
        print(f"run {run_id}: no data to plot")
    for p in made:
        for name in p.files:
            print(str(target / name))

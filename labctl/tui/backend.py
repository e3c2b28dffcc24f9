"""What the TUI operates: one interface, `BenchBackend`, over a bench in this process
(`LocalBackend`, wrapping `labctl.bench.Bench`) or a bench behind an MQTT agent
(`RemoteBackend`, wrapping `labctl.client.BenchClient`), plus `BenchDirectory`, the list of
benches on a broker for the bench picker.

Backends keep a `BenchView` (labctl.tui.model) up to date from their own tasks; the screens
only read it. Every call that may wait on a device or a broker is bounded by a timeout, and
a device that does not answer keeps its last reading, marked stale, while the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from labctl.problems import BenchError, ErrorCode, Issue, LocalCode
from labctl.progress import STATE_CHANGE_EVENTS as STATE_CHANGES
from labctl.tui.measurement import BdfTail
from labctl.tui.model import (
    BenchView,
    DeviceRow,
    EventLine,
    Measurement,
    QueueRow,
    RunView,
    StepRow,
    apply_event,
    event_kind,
)

if TYPE_CHECKING:
    from labctl.bench import Bench
    from labctl.bench.local import LocalService
    from labctl.client import BenchClient
    from labctl.config import BenchConfig

log = logging.getLogger("labctl.tui")

T = TypeVar("T")

COMMAND_TIMEOUT_S = 15.0
"""The longest the TUI waits for any one command before it says so."""
ACTIVE_POLL_S = 0.5
"""A device working in a running step is read at least this often (wall s)."""


#: one validation issue, the type the validator found it as (labctl.problems)
Problem = Issue


class BackendError(BenchError):
    """A command the bench refused or could not be reached for (the one error type,
    labctl.problems.BenchError); `message` is for the operator."""

    def __init__(self, message: str, *, code: ErrorCode | LocalCode = "refused"):
        super().__init__(code, message)


class RecipeRejected(BenchError):
    """The recipe or its parameters failed validation; nothing was queued."""

    def __init__(self, problems: list[Issue]):
        err = BenchError.invalid(problems)
        super().__init__(err.code, err.message, path=err.path, issues=err.issues)

    @property
    def problems(self) -> list[Issue]:
        return self.issues


# ---------------------------------------------------------------- recipes on disk

@dataclass
class RecipeEntry:
    """A recipe file of the recipe folder, with its declared parameters."""

    path: Path
    name: str
    description: str = ""
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None  # unreadable file: shown, never submitted


def read_recipe(path: Path) -> RecipeEntry:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return RecipeEntry(path, path.stem, error=f"unreadable: {exc}")
    if not isinstance(doc, dict):
        return RecipeEntry(path, path.stem, error="not a JSON object")
    raw = doc.get("parameters")
    params: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return RecipeEntry(path, str(doc.get("name") or path.stem),
                       str(doc.get("description") or ""),
                       {str(k): (v if isinstance(v, dict) else {}) for k, v in params.items()})


def list_recipes(folder: Path) -> list[RecipeEntry]:
    """Every `*.json` recipe of a folder, by file name."""
    if not folder.is_dir():
        return []
    return [read_recipe(p) for p in sorted(folder.glob("*.json"))]


def _operator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database in some containers
        return "unknown"


# ---------------------------------------------------------------- the interface

class BenchBackend(ABC):
    """The bench as the TUI sees it: a live `view` kept from the bench, and commands sent
    through the bench-service protocol (labctl.protocol), which raise BenchError."""

    mode: str = "local"

    def __init__(self, recipes_dir: Path):
        self.view = BenchView(mode=self.mode)
        self.recipes_dir = recipes_dir

    @abstractmethod
    async def start(self) -> None:
        """Connect (start the bench, or reach the broker) and begin updating `view`."""

    @abstractmethod
    async def close(self) -> None:
        """Stop updating; a local bench is left safe."""

    @abstractmethod
    async def validate(self, recipe: Path, parameters: dict[str, Any]) -> list[Issue]:
        """Problems of a recipe with these parameters on this bench (empty: valid)."""

    @abstractmethod
    async def submit(self, recipe: Path, parameters: dict[str, Any], *,
                     priority: int = 0) -> str:
        """Queue a run (higher `priority` first); its id. BenchError `invalid_recipe` with
        every issue when invalid (nothing queued)."""

    @abstractmethod
    async def pause(self) -> None: ...

    @abstractmethod
    async def resume(self) -> None: ...

    @abstractmethod
    async def abort(self) -> None: ...

    @abstractmethod
    async def estop(self) -> None: ...

    @abstractmethod
    async def cancel(self, run_id: str) -> None: ...

    @abstractmethod
    async def run_record(self, run_id: str | None = None) -> dict[str, Any]:
        """The record of a run (the current or last one by default): run_id, index row,
        result, metadata, as far as they exist."""

    async def inventory(self, action: str = "show", **change: Any) -> dict[str, Any]:
        """The bench's inventory levels, after a refill or set (`vessel`, `material`,
        `amount`, `lot`) when asked."""
        raise BackendError("this bench shows no inventory", code="refused")

    def recipes(self) -> list[RecipeEntry]:
        return list_recipes(self.recipes_dir)

    def note(self, text: str, level: str = "info") -> None:
        """A line of the operator's own (command outcomes) in the event log."""
        from labctl.store import utc_iso

        self.view.log(EventLine(utc_iso().split("T", 1)[1][:8], "operator", text, level))


async def _stop_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel and reap; cancel again if a task swallowed the first one."""
    while tasks:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=1.0)
        tasks[:] = [t for t in tasks if not t.done()]


# ---------------------------------------------------------------- local bench

class LocalBackend(BenchBackend):
    """A bench in this process: `labctl.bench.Bench` on a bench config."""

    mode = "local"

    def __init__(
        self,
        cfg: BenchConfig | None = None,
        *,
        bench: Bench | None = None,
        data_dir: str | Path = "runs",
        time_scale: float | None = None,
        recipes_dir: Path | None = None,
        poll_interval_s: float = 1.0,
        poll_timeout_s: float = 5.0,
        refresh_s: float = 0.1,
        operator: str | None = None,
    ):
        if cfg is None:
            if bench is None:
                raise ValueError("LocalBackend needs a bench config or a Bench")
            cfg = bench.cfg
        self.cfg: BenchConfig = cfg
        folder = recipes_dir or Path(str(getattr(self.cfg.bench, "recipes_dir", "recipes")))
        super().__init__(folder)
        self.bench = bench
        self.service: LocalService | None = None
        self._own_bench = bench is None
        self.data_dir = Path(data_dir)
        self.time_scale = time_scale
        self.poll_interval_s = poll_interval_s
        self.poll_timeout_s = poll_timeout_s
        self.refresh_s = refresh_s
        self.operator = operator or _operator()
        self._tasks: list[asyncio.Task[Any]] = []
        self._tail: BdfTail | None = None
        self._subscribed = asyncio.Event()
        self._wake: dict[str, asyncio.Event] = {}

    async def start(self) -> None:
        from labctl.bench import Bench
        from labctl.bench.local import LocalService

        v = self.view
        v.bench_id = str(self.cfg.bench.id)
        v.simulated = bool(self.cfg.bench.simulate)
        v.connection = "starting the bench"
        v.touch("bench")
        if self.bench is None:
            self.bench = Bench(self.cfg, data_dir=self.data_dir, time_scale=self.time_scale)
        self.service = LocalService(self.bench, self.recipes_dir)
        self._tasks.append(asyncio.create_task(self._follow_events(), name="tui-events"))
        await self._subscribed.wait()
        try:
            await self.bench.start()  # no-op when the caller started it
        except BaseException:
            await self.close()
            raise
        v.connected = True
        v.connection = "local"
        v.touch("bench")
        for name, dev in self.bench.instruments.devices.items():
            v.devices[name] = DeviceRow(name)
            self._tasks.append(asyncio.create_task(self._poll_device(name, dev),
                                                   name=f"tui-poll-{name}"))
        v.touch("devices")
        self._tasks.append(asyncio.create_task(self._refresh(), name="tui-refresh"))

    async def close(self) -> None:
        await _stop_tasks(self._tasks)
        if self._own_bench and self.bench is not None:
            await self.bench.close()  # aborts a run in progress and applies safe states
        self.view.connected = False
        self.view.connection = "closed"

    # -- keeping the view ---------------------------------------------------------------
    async def _follow_events(self) -> None:
        assert self.bench is not None
        events = self.bench.subscribe()
        first = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0)  # the generator has registered its queue once it waits
        self._subscribed.set()
        ev = await first
        while True:
            try:
                self._on_event(ev)
            except Exception:  # an odd event must not stop the screen
                log.exception("event %r", ev)
            ev = await events.__anext__()

    def _on_event(self, ev: dict[str, Any]) -> None:
        run_id = ev.get("run_id")
        if run_id and event_kind(ev) != "queued" and (
                self.view.run is None or self.view.run.run_id != run_id):
            self._adopt_run(str(run_id))
        if event_kind(ev) == "data_file" and self.view.run is not None:
            self._follow_data(ev)
        apply_event(self.view, ev)
        if event_kind(ev) in STATE_CHANGES:
            self._poll_all_now()

    def _adopt_run(self, run_id: str) -> None:
        """The run the bench works on now: its plan's steps, states replayed from its
        journal (events before this screen saw them)."""
        assert self.bench is not None
        ticket = self.bench.tickets.get(run_id)
        if ticket is None:
            return
        plan = ticket.plan
        steps = [StepRow(id=s.id, kind=str(s.kind), device=s.device, action=s.action,
                         description=s.description or "")
                 for s in plan.leaves()]
        for s in steps:
            if s.id in ticket.skip:
                s.state = "skipped"
        self.view.run = RunView(
            run_id=run_id, recipe=str(plan.name or plan.recipe.get("name") or "recipe"),
            version=plan.version or plan.recipe.get("version"),
            parameters=dict(plan.parameters or ticket.parameters or {}),
            state=str(ticket.machine.state), steps=steps, steps_total=len(steps))
        self.view.measurement = None
        self._tail = None
        quiet = BenchView()
        quiet.run = self.view.run
        for ev in ticket.record.events():
            apply_event(quiet, ev)  # states only; the log shows what happens from now on
            if event_kind(ev) == "data_file":
                self._follow_data(ev)
        self.view.touch("run", "plot", "bench")

    def _follow_data(self, ev: dict[str, Any]) -> None:
        assert self.bench is not None and self.view.run is not None
        ticket = self.bench.tickets.get(self.view.run.run_id)
        if ticket is None or not ev.get("path"):
            return
        m = Measurement(self.view.run.run_id, ev.get("step"), str(ev.get("technique") or ""))
        self.view.measurement = m
        self._tail = BdfTail(ticket.record.folder / str(ev["path"]), m)
        self.view.touch("plot")

    def _poll_all_now(self) -> None:
        """A state changed (a step started or ended, the run paused, aborted, safe state):
        every device is read again at once, not at its next poll."""
        for wake in self._wake.values():
            wake.set()

    async def _poll_device(self, name: str, dev: Any) -> None:
        """One task per device: a slow one delays nobody else."""
        wake = self._wake.setdefault(name, asyncio.Event())
        while True:
            wake.clear()
            row = self.view.devices[name]
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
                # races the reply, and the poller would then outlive close()
                async with asyncio.timeout(self.poll_timeout_s):
                    st = await dev.status()
            except Exception as exc:  # kept: last reading, marked stale
                row.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                d = st.to_dict()
                row.state, row.readings, row.fault = d["state"], d["readings"], d["fault"]
                row.updated, row.error = float(d.get("timestamp") or time.time()), None
            self.view.touch("devices")
            every = self.poll_interval_s
            if self._in_step(name):  # what it does now changes: read it more often
                every = min(every, ACTIVE_POLL_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await wake.wait()

    def _in_step(self, device: str) -> bool:
        run = self.view.run
        return run is not None and any(
            s.device == device and s.state in ("running", "retrying") for s in run.steps)

    async def _refresh(self) -> None:
        while True:
            try:
                self._apply_status(self.bench.status() if self.bench else {})
                if self._tail is not None and self._tail.poll():
                    self.view.touch("plot")
            except Exception:  # keep refreshing whatever one status looked like
                log.exception("refresh")
            await asyncio.sleep(self.refresh_s)

    def _apply_status(self, st: dict[str, Any]) -> None:
        v = self.view
        state = str(st.get("state") or "unknown")
        if state != v.state:
            v.state = state
            v.touch("bench")
        run = st.get("run")
        if run and (v.run is None or v.run.run_id != run.get("run_id")):
            self._adopt_run(str(run["run_id"]))
        if run and v.run is not None:
            prog = run.get("progress") or {}
            new = (str(run.get("state") or v.run.state), float(prog.get("fraction") or 0.0),
                   prog.get("elapsed_s"), prog.get("eta_s"))
            old = (v.run.state, v.run.fraction, v.run.elapsed_s, v.run.eta_s)
            if new != old and v.run.state not in ("completed", "aborted", "failed"):
                v.run.state, v.run.fraction, v.run.elapsed_s, v.run.eta_s = new
                v.touch("run")
        queue = [QueueRow(str(r["run_id"]), str((r.get("recipe") or {}).get("name") or ""),
                          0, int(r.get("priority") or 0), str(r.get("state") or "running"))
                 for r in (st.get("running") or [])[1:]]
        queue += [QueueRow(q["run_id"], str(q.get("recipe") or ""), q.get("position"),
                           int(q.get("priority") or 0))
                  for q in st.get("queue") or []]
        if queue != v.queue:
            v.queue = queue
            v.touch("queue")

    # -- commands -------------------------------------------------------------------------
    def _service(self) -> LocalService:
        if self.service is None:
            raise BackendError("the bench is not started", code="unreachable")
        return self.service

    async def validate(self, recipe: Path, parameters: dict[str, Any]) -> list[Issue]:
        return await self._service().plan(recipe, parameters)

    async def submit(self, recipe: Path, parameters: dict[str, Any], *,
                     priority: int = 0) -> str:
        submitted = await self._bounded(self._service().submit(
            recipe, parameters, priority=priority,
            instigator={"kind": "operator", "id": self.operator, "via": "tui"}))
        return str(submitted.run_id)

    async def _bounded(self, aw: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                return await aw
        except TimeoutError:
            raise BackendError(f"no answer from the bench within {COMMAND_TIMEOUT_S:.0f} s "
                               "(still working on it)", code="timeout") from None

    async def pause(self) -> None:
        await self._bounded(self._service().control("pause"))

    async def resume(self) -> None:
        await self._bounded(self._service().control("resume"))

    async def abort(self) -> None:
        await self._bounded(self._service().control("abort"))

    async def estop(self) -> None:
        await self._bounded(self._service().control("estop"))

    async def cancel(self, run_id: str) -> None:
        await self._bounded(self._service().control("cancel", run_id))

    async def inventory(self, action: str = "show", **change: Any) -> dict[str, Any]:
        return await self._bounded(self._service().inventory(action, who=self.operator,
                                                             **change))

    async def run_record(self, run_id: str | None = None) -> dict[str, Any]:
        assert self.bench is not None
        rid = run_id or (self.view.run.run_id if self.view.run else None)
        if rid is None:
            rows = self.bench.list_runs(1)
            if not rows:
                raise BackendError("no run recorded on this bench yet", code="not_found")
            rid = str(rows[0]["run_id"])
        await self.bench.closed(rid)  # a run that has just ended: its result.json written
        try:
            return dict(await asyncio.to_thread(self.bench.store.show, rid))
        except FileNotFoundError:
            raise BackendError(f"no record of run {rid}", code="not_found") from None


# ---------------------------------------------------------------- remote bench (MQTT)

def _normalise_event(body: dict[str, Any]) -> dict[str, Any]:
    """An EventPayload from the agent -> the in-process event shape."""
    raw = body.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    ev = {**data, "event": body.get("type"), "type": body.get("type"),
          "t": body.get("time"), "run_id": body.get("run_id")}
    if body.get("step") is not None:
        ev["step"] = body.get("step")
    return ev


class RemoteBackend(BenchBackend):
    """A bench served by `labctl serve`, through the broker: commands via BenchClient,
    the view from the retained `status` and `online` topics and the `events` stream."""

    mode = "remote"

    def __init__(
        self,
        broker_url: str,
        bench_id: str,
        *,
        recipes_dir: Path = Path("recipes"),
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        timeout_s: float = COMMAND_TIMEOUT_S,
        stale_after_s: float = 30.0,
    ):
        super().__init__(recipes_dir)
        from labctl.mqtt.connection import BrokerSettings
        from labctl.mqtt.topics import Topics

        self.broker_url = broker_url
        self.bench_id = bench_id
        self.creds: dict[str, Any] = {"username": username, "password": password,
                                      "tls_ca": tls_ca, "tls_cert": tls_cert,
                                      "tls_key": tls_key}
        self.settings = BrokerSettings.from_url(broker_url, **self.creds)
        self.topics = Topics(bench_id)
        self.timeout_s = timeout_s
        self.stale_after_s = stale_after_s
        self.client: BenchClient | None = None
        self.online: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._first = asyncio.Event()
        self._run_seen_at: float | None = None
        self.view.bench_id = bench_id

    async def start(self) -> None:
        from labctl.client import BenchClient

        self.view.connection = f"connecting to {self.settings.url()}"
        self.view.touch("bench")
        self.client = BenchClient(self.broker_url, self.bench_id, timeout=self.timeout_s,
                                  **self.creds)
        try:
            await self.client.__aenter__()
        except Exception as exc:
            raise BackendError(f"cannot reach the broker {self.settings.url()}: {exc}",
                               code="unreachable") from None
        self._task = asyncio.create_task(self._watch(), name="tui-remote-watch")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout_s):
                await self._first.wait()

    async def close(self) -> None:
        if self._task is not None:
            await _stop_tasks([self._task])
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        self.view.connected = False
        self.view.connection = "closed"

    async def _watch(self) -> None:
        """Status, online and events of the bench, through the BenchClient's own connection
        (one connection per username: the shipped broker configuration sets
        `use_username_as_clientid`, so a second one would take the first one's place)."""
        client = self._client()
        client.add_listener(self._on_message)
        for t in (self.topics.status, self.topics.online, self.topics.events):
            await client.subscribe(t)
        was: bool | None = None
        while True:
            up = client.connected.is_set()
            if up != was:
                self.view.connected = up
                if up:
                    self.view.connection = f"via {self.settings.url()}"
                else:
                    self.view.connection = "broker lost; retrying"
                    self._mark_all_stale("broker unreachable")
                self.view.touch("bench")
                self._first.set()
                was = up
            await asyncio.sleep(0.2)

    def _on_message(self, topic: str, payload: Any) -> None:
        raw = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload).encode()
        if topic == self.topics.online:
            self.online = raw.decode(errors="replace")
            if self.online != "online":
                self._mark_all_stale(f"bench {self.online}")
            self.view.touch("bench")
            return
        try:
            body = json.loads(raw)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        try:
            if topic == self.topics.status:
                self._apply_status(body)
            elif topic == self.topics.events:
                self._on_event(_normalise_event(body))
        except Exception:  # one odd payload must not stop the screen
            log.exception("payload on %s", topic)

    def _mark_all_stale(self, why: str) -> None:
        for row in self.view.devices.values():
            row.error = why
        self.view.touch("devices")

    def _on_event(self, ev: dict[str, Any]) -> None:
        run_id = ev.get("run_id")
        kind = event_kind(ev)
        if run_id and kind not in ("queued",) and (
                self.view.run is None or self.view.run.run_id != run_id):
            self._new_run(str(run_id), "")
        if kind == "data_file" and self.view.run is not None:
            self.view.measurement = Measurement(self.view.run.run_id, ev.get("step"),
                                                str(ev.get("technique") or ""))
            self.view.touch("plot")
        apply_event(self.view, ev)

    def _new_run(self, run_id: str, recipe: str) -> None:
        self.view.run = RunView(run_id=run_id, recipe=recipe, state="running",
                                plan_known=False)
        self._run_seen_at = time.monotonic()
        self.view.measurement = None
        self.view.touch("run", "plot")

    def _apply_status(self, st: dict[str, Any]) -> None:
        v = self.view
        v.state = str(st.get("state") or "unknown")
        v.simulated = st.get("simulated")
        run_id = st.get("run_id")
        if run_id:
            if v.run is None or v.run.run_id != run_id:
                self._new_run(str(run_id), str(st.get("recipe") or ""))
            run = v.run
            assert run is not None
            if st.get("recipe"):
                run.recipe = str(st["recipe"])
            run.state = v.state if v.state not in ("idle", "held") else run.state
            if st.get("progress") is not None:
                run.fraction = float(st["progress"])
            run.eta_s = st.get("eta_s")
            if self._run_seen_at is not None:
                run.elapsed_s = time.monotonic() - self._run_seen_at
            for sid in st.get("steps") or ([st["step"]] if st.get("step") else []):
                if run.step(str(sid)) is None:
                    run.steps.append(StepRow(id=str(sid), state="running"))
                    run.steps_total = len(run.steps)
            v.touch("run")
        v.queue = [QueueRow(str(r.get("run_id")), str(r.get("recipe") or ""), 0,
                            int(r.get("priority") or 0), str(r.get("state") or "running"))
                   for r in (st.get("running") or [])[1:]]
        v.queue += [QueueRow(str(q), "", i + (1 if run_id else 0))
                    for i, q in enumerate(st.get("queue") or [])]
        v.touch("queue")
        devices = st.get("devices") or {}
        for name, d in devices.items():
            if not isinstance(d, dict):
                continue
            row = v.devices.setdefault(name, DeviceRow(name))
            row.state = str(d.get("state") or "unknown")
            row.readings = dict(d.get("readings") or {})
            row.fault = d.get("fault")
            row.updated = float(d["timestamp"]) if d.get("timestamp") else None
            row.error = None if self.online in (None, "online") else f"bench {self.online}"
            self._plot_point(row)
        if devices:
            v.touch("devices")
        v.touch("bench")

    def _plot_point(self, row: DeviceRow) -> None:
        """A potentiostat's last point, as the status carries it (remote benches publish no
        data files): the plot follows at the status rate."""
        r = row.readings
        m = self.view.measurement
        if m is None or "current_a" not in r:
            return
        t = m.technique.lower()
        if t in ("cv", "lsv"):
            x, y = r.get("potential_v"), r.get("current_a")
        elif t == "ca":
            x, y = r.get("time_s"), r.get("current_a")
        elif t in ("peis", "eis"):
            return
        else:
            x, y = r.get("time_s"), r.get("potential_v")
        if isinstance(x, int | float) and isinstance(y, int | float):
            if not (m.xs and m.xs[-1] == x and m.ys[-1] == y):
                m.add(float(x), float(y))
                self.view.touch("plot")

    # -- commands -------------------------------------------------------------------------
    def _client(self) -> BenchClient:
        if self.client is None:
            raise BackendError(f"not connected to bench {self.bench_id}", code="unreachable")
        return self.client

    async def _command(self, aw: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout_s + 1):
                return await aw
        except TimeoutError:
            raise BackendError(f"no reply from bench {self.bench_id} within "
                               f"{self.timeout_s:.0f} s", code="timeout") from None

    async def validate(self, recipe: Path, parameters: dict[str, Any]) -> list[Issue]:
        return await self._command(self._client().plan(recipe, parameters))

    async def submit(self, recipe: Path, parameters: dict[str, Any], *,
                     priority: int = 0) -> str:
        run = await self._command(self._client().submit(
            recipe, parameters, request={"client": f"labctl-tui:{_operator()}"},
            priority=priority))
        return str(run.run_id)

    async def pause(self) -> None:
        await self._command(self._client().control("pause"))

    async def resume(self) -> None:
        await self._command(self._client().control("resume"))

    async def abort(self) -> None:
        await self._command(self._client().control("abort"))

    async def estop(self) -> None:
        await self._command(self._client().control("estop"))

    async def cancel(self, run_id: str) -> None:
        await self._command(self._client().control("cancel", run_id))

    async def inventory(self, action: str = "show", **change: Any) -> dict[str, Any]:
        return await self._command(self._client().inventory(action, **change))

    async def run_record(self, run_id: str | None = None) -> dict[str, Any]:
        rows = await self._command(self._client().runs(20))
        rid = run_id or (self.view.run.run_id if self.view.run else None) or (
            rows[0]["run_id"] if rows else None)
        if rid is None:
            raise BackendError("no run recorded on this bench yet", code="not_found")
        row = next((r for r in rows if r.get("run_id") == rid), None)
        result = await self._retained_result(str(rid))
        return {"run_id": rid, "index": row, "result": result, "metadata": None,
                "path": (result or {}).get("provenance", {}).get("record")}

    async def _retained_result(self, run_id: str, wait_s: float = 2.0) -> dict[str, Any] | None:
        """The retained result of a run, if the broker has one."""
        try:
            result = await self._client().retained_result(run_id, wait_s)
        except Exception:  # the record view shows what it has
            return None
        return result if isinstance(result, dict) else None


# ---------------------------------------------------------------- benches on a broker

@dataclass
class BenchEntry:
    bench_id: str
    online: str | None = None
    state: str | None = None
    recipe: str | None = None
    run_id: str | None = None
    progress: float | None = None
    simulated: bool | None = None


class BenchDirectory:
    """Every bench on a broker, from the retained `labctl/+/online` and `labctl/+/status`."""

    def __init__(self, broker_url: str, **creds: Any):
        from labctl.mqtt.connection import BrokerSettings

        self.broker_url = broker_url
        self.creds = {k: v for k, v in creds.items() if v is not None}
        self.settings = BrokerSettings.from_url(broker_url, **self.creds)
        self.benches: dict[str, BenchEntry] = {}
        self.version = 0
        self.connected = False
        self.error: str | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="tui-bench-directory")

    async def close(self) -> None:
        if self._task is not None:
            await _stop_tasks([self._task])

    async def _watch(self) -> None:
        import aiomqtt

        from labctl.mqtt.connection import MqttClient, subscribe_options
        from labctl.mqtt.topics import ROOT

        delay = 0.2
        while True:
            try:
                async with MqttClient(self.settings, f"labctl-tui-dir-{uuid.uuid4().hex[:10]}",
                                      clean_start=True) as c:
                    await c.subscribe(f"{ROOT}/+/online", options=subscribe_options(1))
                    await c.subscribe(f"{ROOT}/+/status", options=subscribe_options(1))
                    self.connected, self.error = True, None
                    self.version += 1
                    delay = 0.2
                    async for m in c.messages:
                        self.on_message(str(m.topic), m.payload)
            except aiomqtt.MqttError as exc:
                self.connected, self.error = False, str(exc)
                self.version += 1
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    def on_message(self, topic: str, payload: Any) -> None:
        parts = topic.split("/")
        if len(parts) != 3:
            return
        _, bench_id, leaf = parts
        raw = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload).encode()
        entry = self.benches.setdefault(bench_id, BenchEntry(bench_id))
        if leaf == "online":
            entry.online = raw.decode(errors="replace")
        elif leaf == "status":
            try:
                st = json.loads(raw)
            except ValueError:
                return
            if isinstance(st, dict):
                entry.state = st.get("state")
                entry.recipe = st.get("recipe")
                entry.run_id = st.get("run_id")
                entry.progress = st.get("progress")
                entry.simulated = st.get("simulated")
        self.version += 1

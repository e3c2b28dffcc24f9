"""Run a Plan on a bench's devices: step dispatch, waits, parallel groups, retries and
timeouts, pause/resume/abort/e-stop, safe state, and the journal of all of it.

The executor knows steps (labctl.recipe's PlannedStep: id, kind, device, action, args,
duration_s, children, timeout_s, retries, on_error, idempotent, estimated_s) and capability
actions (labctl.actions' ActionSpec.run(device, args, ctx)); it never knows a vendor.
Every step start is journaled (fsync'd) before the step is dispatched.

Pause takes effect at the next step boundary of every branch; a wait pauses at once (its
remaining time is kept), and so does a running action whose device can pause and resume
(it is paused on the device, and the action parks at its next `ctx.checkpoint()`). Abort
cancels the running steps, then applies every device's safe state. E-stop applies every
safe state at once, concurrently with the cancellation, without waiting for anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from labctl.clock import Clock, wall_budget
from labctl.device import Device, safe_state_of
from labctl.errors import (
    DeviceError,
    DeviceFault,
    DeviceTimeout,
    LabctlError,
    LimitError,
    MaterialInDoubt,
)
from labctl.progress import RunProgress
from labctl.recipe.plan import Plan, PlannedStep
from labctl.run_machine import FINAL_STATES, IllegalTransition, RunMachine, RunState
from labctl.store.journal import LEAF_KINDS
from labctl.store.record import RunRecord

if TYPE_CHECKING:
    from labctl.analysis.worker import AnalysisWorker

log = logging.getLogger("labctl.executor")

#: the least wall time a step timeout allows (a step does several serial exchanges, which
#: take real time at any time scale) ...
STEP_WALL_FLOOR_S = 10.0
#: ... or this many reply timeouts of the step's device, when that is longer
STEP_FLOOR_EXCHANGES = 5

EmitFn = Callable[[dict[str, Any]], None]
SafeStateFn = Callable[[], Awaitable[dict[str, str]]]
ActionResolver = Callable[[Device, str], Any]


class StepGate(Protocol):
    """Holds what a leaf step touches while other runs share the bench: `enter` waits
    until the step may run and returns the claims newly held, `exit` returns those
    released after the step, `close` releases the rest at the run's end."""

    async def enter(self, step: PlannedStep) -> list[Any]: ...

    async def exit(self, step: PlannedStep) -> list[Any]: ...

    async def close(self) -> list[Any]: ...

    def sharing(self, step: PlannedStep) -> list[str]:
        """Other runs holding this step's device now (a vial block several runs stir)."""
        ...


class StepFailed(LabctlError):
    """A step failed for good (retries spent, on_error = abort): names the step, the device
    and the device's own error (vendor code and text where there is one)."""

    def __init__(self, step_id: str, error: BaseException, *, device: str | None = None,
                 action: str | None = None):
        self.step_id = step_id
        self.error = error
        self.device = device or getattr(error, "device", None)
        self.action = action
        self.code = getattr(error, "code", None)
        self.vendor_text = getattr(error, "vendor_text", None)
        what = f"{self.device}.{action}" if self.device and action else (self.device or "step")
        super().__init__(f"step {step_id} ({what}) failed: {type(error).__name__}: {error}")

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step_id, "device": self.device, "action": self.action,
                "type": type(self.error).__name__, "message": str(self.error),
                "code": self.code, "vendor_text": self.vendor_text}


class StepTimeout(DeviceTimeout):
    """A step ran longer than its `timeout`."""


class _Aborted(Exception):
    """Raised inside the run when an abort has been requested."""


@dataclass
class _Active:
    """A leaf step in flight."""

    step: PlannedStep
    device: Device | None
    task: asyncio.Task[Any] | None
    suspended: bool = False
    device_paused: bool = False
    timeout_cm: Any = None
    timeout_left: float | None = None
    started_wall: float = field(default_factory=time.monotonic)


def iter_leaves(steps: Collection[PlannedStep]) -> list[PlannedStep]:
    """Every leaf step (action, wait, analysis) in plan order."""
    out: list[PlannedStep] = []
    for s in steps:
        if s.kind in LEAF_KINDS:
            out.append(s)
        out.extend(iter_leaves(s.children))
    return out


def moves_material(step: PlannedStep, spec: object = None) -> bool:
    """Does this step move material (so that it may never be repeated without an
    operator's decision)? Asked of the step itself, of its effects, of its action spec
    when one is at hand, else of the action catalogue; without a capability, any action
    of that name that moves material counts (the safe side)."""
    if step.kind != "action":
        return False
    if step.moves_material or any(e.get("kind") == "move" for e in step.effects):
        return True
    if spec is not None and getattr(spec, "moves_material", False):
        return True
    from labctl.actions import ACTIONS

    action = step.action
    capability = step.capability
    candidates = [ACTIONS.get(str(capability), {})] if capability else list(ACTIONS.values())
    return any(getattr(c.get(str(action)), "moves_material", False) for c in candidates)


def undecided_material_steps(events: list[dict[str, Any]],
                             steps: Collection[PlannedStep]) -> list[str]:
    """Leaf steps the journal leaves in doubt (started, never ended) that move material and
    have no operator's "redo" decision since they last started: running any of them again
    could add material twice."""
    last_start: dict[str, int] = {}
    ended: set[str] = set()
    redone: dict[str, int] = {}
    for i, ev in enumerate(events):
        sid = str(ev.get("step"))
        kind = ev.get("event")
        if kind == "step_started":
            last_start[sid] = i
            ended.discard(sid)
        elif kind == "step_finished" or (kind == "step_failed" and ev.get("continued")):
            ended.add(sid)  # a failure that stopped the run leaves the step in doubt
        elif kind == "decision" and ev.get("decision") == "accept":
            ended.add(sid)
        elif kind == "decision" and ev.get("decision") == "redo":
            redone[sid] = i
    out = []
    for step in iter_leaves(steps):
        sid = step.id
        if sid not in last_start or sid in ended or not moves_material(step):
            continue
        if redone.get(sid, -1) > last_start[sid]:
            continue
        out.append(sid)
    return out


def interrupted_steps(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Leaf steps an earlier session started and never ended, each with the "record" facts
    it journaled since it last started (a dose's reference mass...). A step is ended by
    finishing, by a failure the run continued after, by a recovery, or by recording its
    addition (a failed dose that could weigh what it delivered)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        kind = ev.get("event")
        sid = str(ev.get("step"))
        if kind == "step_started" and ev.get("kind") in LEAF_KINDS:
            out[sid] = []
        elif kind in ("step_finished", "step_recovered") or (
                kind == "step_failed" and ev.get("continued")) or (
                kind == "record" and ev.get("kind") == "addition"):
            out.pop(sid, None)
        elif kind == "record" and sid in out:
            out[sid].append(ev)
    return out


#: resuming: a restored temperature setpoint is back when read within this band...
RESTORE_BAND_C = 0.3
#: ...polled this often (device time)...
RESTORE_POLL_S = 5.0
#: ...and a fault when not back after this long
RESTORE_TIMEOUT_S = 3600.0


def standing_setpoints(leaves: Collection[PlannedStep], done: Collection[str]
                       ) -> dict[str, dict[str, float]]:
    """Per device, the set-points that the `done` steps (in plan order) left running: a
    stirrer's `set` temperature and speed, a temperature controller's `set_temperature` or
    `hold` temperature, until an `off` (or the end of a `stir`) took them back. After a crash
    the start-up safe state switched them off; a resumed run puts them back before going
    on, or it would measure a sample its skipped steps had heated at room temperature."""
    state: dict[str, dict[str, float]] = {}
    for s in leaves:
        if s.id not in done or s.kind != "action":
            continue
        cap, action = s.capability, s.action
        args = s.args
        d = state.setdefault(str(s.device), {})
        t, rpm = args.get("temperature_c"), args.get("speed_rpm")
        if cap == "stirrer" and action == "set":
            if t is not None:
                d["temperature_c"] = float(t)
            if rpm is not None:
                d["speed_rpm"] = float(rpm)
        elif cap == "stirrer" and action == "stir":
            d.pop("speed_rpm", None)  # a stir stops its motor at its end...
            if t is not None:  # ...and its heater, when it heated
                d.pop("temperature_c", None)
        elif cap == "temperature_controller" and action in ("set_temperature", "hold"):
            d["temperature_c"] = float(args["temperature_c"])
        elif action == "off" and cap in ("stirrer", "temperature_controller"):
            d.clear()
    for d in state.values():
        if d.get("speed_rpm") == 0.0:
            del d["speed_rpm"]
    return {dev: d for dev, d in state.items() if d}


def default_action_resolver(device: Device, action: str) -> Any:
    """The ActionSpec of labctl.actions for a device and an action name."""
    from labctl.actions import get_action

    spec = get_action(device, action)
    if spec is None:
        raise LimitError(f"{device.name} ({', '.join(device.capabilities)}) has no action "
                         f"{action!r}", device=device.name, parameter="action", value=action)
    return spec


def is_pausable(device: Device | None) -> bool:
    """Can this device pause mid-move and resume later (not just stop)?"""
    if device is None:
        return False
    return callable(getattr(device, "pause", None)) and callable(getattr(device, "resume", None))


class StepContext:
    """What an action gets besides its device and args (labctl.actions' ActionContext)."""

    def __init__(self, executor: Executor, step: PlannedStep, active: _Active | None):
        self._ex = executor
        self._step = step
        self._active = active
        self.step_id: str = step.id
        self.device_name: str | None = step.device
        self.clock: Clock = executor.clock
        self.run_id: str = executor.record.run_id
        self.data_dir = executor.record.data_dir
        self.data_files: list[str] = []

    def data_path(self, suffix: str = ".bdf.csv") -> Any:
        return self._ex.record.data_path(self.step_id, suffix)

    def shared_with(self) -> list[str]:
        gate = self._ex._claims
        return gate.sharing(self._step) if gate is not None else []

    def data_writer(self, technique: Any) -> Any:
        """A BDF writer (labctl.bdf) for this step's data file, flushed at least once a
        second; the file joins the run's provenance."""
        from labctl import bdf

        path = self.data_path()
        self.data_files.append(str(path.relative_to(self._ex.record.folder)))
        start_unix_s = self._ex.data_time()
        self._ex._log("data_file", durable=False, step=self.step_id,
                      path=self.data_files[-1],
                      technique=getattr(technique, "technique", str(technique)),
                      start_unix_s=start_unix_s, clock=self._ex.time_basis)
        return bdf.BdfWriter(path, technique=technique, start_unix_s=start_unix_s)

    def record(self, kind: str, *, durable: bool = False, **fields: Any) -> None:
        """A fact for the provenance (an addition with requested and actual amounts, a
        mixing speed, a temperature, a reading). Written to the journal at once; fsync'd
        before this returns when `durable` (a fact a resume depends on)."""
        facts = {"step": self.step_id, "device": self.device_name, **fields}
        facts.pop("kind", None)
        self._ex._log("record", durable=durable, kind=kind, **facts)
        self._ex._step_facts.setdefault(self.step_id, []).append({"kind": kind, **facts})

    def earlier(self, kind: str) -> list[dict[str, Any]]:
        """Facts of `kind` this step recorded in its earlier attempts of this session
        (a retry of a dose adds only what the failed attempt did not deliver)."""
        return [f for f in self._ex._step_facts.get(self.step_id, []) if f["kind"] == kind]

    async def checkpoint(self) -> None:
        """Where a long action may be paused or stopped: parks here while the run is
        paused (abort cancels the waiting action)."""
        await self._ex._park(self._active)

    async def resolve_route(self, target: str | None) -> dict[str, Any]:
        """The vessel a route leads to now: `@sel_valve` is asked for its position and the
        position looked up in its port_map (routes through several routing devices are
        followed). Returns {"vessel", "route": [{"device", "position"}...]} and, when the
        route cannot be read, "vessel": None with "route_error" — an addition is then
        recorded as unresolved, never against the wrong vessel."""
        hops: list[dict[str, Any]] = []
        seen: set[str] = set()
        lead = target
        while lead is not None and str(lead).startswith("@"):
            name = str(lead)[1:]
            if name in seen:
                return {"vessel": None, "route": hops, "route_error": f"routing loop at {lead}"}
            seen.add(name)
            device = self._ex.devices.get(name)
            read_position = getattr(device, "position", None)
            if device is None or not callable(read_position):
                return {"vessel": None, "route": hops,
                        "route_error": f"routing device {name!r} is not connected"}
            try:
                position = int(await read_position())
            except Exception as exc:  # recorded as unresolved, the run goes on
                return {"vessel": None, "route": hops,
                        "route_error": f"{name}: position unreadable: {exc}"}
            port_map = device.spec.params.get("port_map") or {}
            lead = port_map.get(str(position)) if isinstance(port_map, Mapping) else None
            hops.append({"device": name, "position": position, "leads_to": lead})
            if lead is None:
                return {"vessel": None, "route": hops,
                        "route_error": f"{name} position {position} leads nowhere known"}
        return {"vessel": lead, "route": hops}

    async def cell_temperature(self, vessel: str | None) -> dict[str, Any] | None:
        """The measured temperature of a vessel from a device that sits under it and reads
        temperature (a stirrer hotplate's medium probe, a heated block), with where it came
        from; None when no such device is connected or it cannot be read."""
        if not vessel:
            return None
        for name, device in self._ex.devices.items():
            params = device.spec.params
            block = params.get("vessels")  # a vial block: every vial on the plate
            if params.get("vessel") != vessel and not (isinstance(block, list)
                                                       and vessel in block):
                continue
            if not ({"stirrer", "temperature_controller"} & set(device.capabilities)):
                continue
            reader = getattr(device, "temperature_c", None)
            if not callable(reader):
                continue
            try:
                value = float(await reader())
            except Exception as exc:  # another device may still answer
                self._ex._log("warning", device=name,
                              message=f"temperature of {vessel} unreadable: {exc}")
                continue
            sensor = getattr(device, "sensor", None)
            return {"measured_c": value, "device": name, "vessel": vessel,
                    "sensor": str(sensor) if sensor else None,
                    "source": f"measured by {name}"
                              + (f" ({sensor} sensor)" if sensor else "")
                              + f" at {vessel}"}
        return None


def _analysis_name(step: PlannedStep) -> str:
    """The analysis an analysis step runs (its `analysis`, else its action)."""
    return str(step.analysis or step.action)


class Executor:
    """Runs one plan once (or resumes it). Owned by a Bench; also usable on its own."""

    def __init__(
        self,
        plan: Plan,
        devices: Mapping[str, Device],
        *,
        clock: Clock,
        record: RunRecord,
        machine: RunMachine,
        safe_state_all: SafeStateFn | None = None,
        actions: ActionResolver | None = None,
        analyses: Mapping[str, Callable[..., Any]] | None = None,
        analysis_worker: AnalysisWorker | None = None,
        emit: EmitFn | None = None,
        prior_results: Mapping[str, dict[str, Any]] | None = None,
        time_basis: str | None = None,
        on_boundary: Callable[[str, str], None] | None = None,
        gate: StepGate | None = None,
    ):
        self.plan = plan
        #: around each leaf: waits for and holds the devices and vessels it touches when
        #: several runs share the bench (labctl.bench.resources.RunGate); None: no waiting
        self._claims = gate
        #: called with (event, step id) before a leaf step's start or end is journaled: a
        #: simulated bench saves its world there (labctl.simulation.WorldKeeper)
        self._on_boundary = on_boundary
        self.devices = devices
        self.clock = clock
        self.record = record
        self.machine = machine
        self._safe_state_all = safe_state_all
        self._resolve_action = actions or default_action_resolver
        #: provenance facts per step recorded in this session (StepContext.earlier)
        self._step_facts: dict[str, list[dict[str, Any]]] = {}
        self._analyses = analyses
        #: runs the installed analyses in a process of their own (not a given `analyses`)
        self._analysis_worker = analysis_worker if analyses is None else None
        self._emit = emit
        self.results: dict[str, dict[str, Any]] = dict(prior_results or {})
        self.figures: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self._gate = asyncio.Event()
        self._gate.set()
        self._pause_requested = asyncio.Event()
        self._active: dict[str, _Active] = {}
        self._main: asyncio.Task[Any] | None = None
        self._stop_reason: str | None = None
        self._estop = False
        self._estop_task: asyncio.Task[Any] | None = None
        self._finished = asyncio.Event()
        #: set once the run has started (or failed to): an abort or e-stop that arrives
        #: while the start transition is in flight waits for it instead of cancelling it
        self._started = asyncio.Event()
        self._skip: set[str] = set()
        self._leaves = iter_leaves(plan.steps)
        self.total_estimate_s = float(plan.estimated_s
                                      or sum(s.estimated_s for s in self._leaves))
        self.done_estimate_s = 0.0
        self.steps_done = 0
        #: fraction and ETA within steps, fed with this executor's events (labctl.progress)
        self.tracker = RunProgress(plan)
        self.started_wall: float | None = None
        self.outcome: RunState | None = None
        self.failure: StepFailed | None = None
        self.safe_state_errors: dict[str, str] = {}
        #: which clock the data's Unix Time follows: "simulated" (simulated seconds anchored
        #: once at the run start) or "wall" (the computer's clock, for real instruments)
        self.time_basis = time_basis or ("wall" if clock.time_scale == 1 else "simulated")
        self._anchor_unix: float | None = None
        self._anchor_clock = 0.0

    # -- the data's clock ------------------------------------------------------------------
    def _anchor(self) -> None:
        """Fix the data clock once per session: on a simulated bench simulated time runs
        from the wall time of the run start (or from where an earlier session of a resumed
        run left off, if that is later), so Unix Time never goes back across steps."""
        floor = 0.0
        with contextlib.suppress(Exception):
            for ev in self.record.events():
                for key in ("clock_unix_s", "start_unix_s"):
                    v = ev.get(key)
                    if isinstance(v, (int, float)):
                        floor = max(floor, float(v))
        floor = max(floor, _last_unix_time(self.record.data_dir))
        self._anchor_unix = max(time.time(), floor)
        self._anchor_clock = self.clock.monotonic()
        self._log("clock_anchor", basis=self.time_basis, anchor_unix_s=self._anchor_unix,
                  time_scale=self.clock.time_scale)

    def data_time(self) -> float:
        """Now on the data's clock (Unix seconds): wall time on real hardware, simulated
        time since the anchor on a simulated bench."""
        if self.time_basis == "wall":
            return time.time()
        if self._anchor_unix is None:
            self._anchor()
        assert self._anchor_unix is not None
        return self._anchor_unix + (self.clock.monotonic() - self._anchor_clock)

    # -- journal & events ----------------------------------------------------------------
    def _log(self, event: str, *, durable: bool = True, **fields: Any) -> dict[str, Any]:
        rec = self.record.journal.append(event, durable=durable, run_id=self.record.run_id,
                                         **fields)
        self.tracker.feed(rec, self.clock.monotonic())
        if self._emit is not None:
            try:
                self._emit(rec)
            except Exception:  # a subscriber must never break a run
                log.exception("event subscriber failed")
        return rec

    def _step_boundary(self, event: str, step_id: str) -> None:
        if self._on_boundary is not None:
            self._on_boundary(event, step_id)

    # -- public control ------------------------------------------------------------------
    @property
    def stop_reason(self) -> str | None:
        """Why the run was stopped (abort, e-stop), None while it was not."""
        return self._stop_reason

    @property
    def state(self) -> RunState:
        return self.machine.state

    def progress(self) -> dict[str, Any]:
        """Current steps, fraction done (moving within steps, labctl.progress), elapsed and
        ETA (wall s; the ETA revised by how the run kept to its estimates so far)."""
        now = self.clock.monotonic()
        state = self.state
        if state == RunState.PAUSED:
            self.tracker.pause(now)
        elif state in (RunState.RUNNING, RunState.STOPPING):
            self.tracker.resume(now)
        elif state in FINAL_STATES and self.tracker.outcome is None:
            self.tracker.end(str(state), now)
        snap = self.tracker.snapshot(now, self.clock.to_wall)
        elapsed = time.monotonic() - self.started_wall if self.started_wall else 0.0
        return {
            "state": str(state),
            "steps": [{"id": a.step.id,
                       "device": a.step.device, "action": a.step.action,
                       "kind": a.step.kind, "suspended": a.suspended,
                       "fraction": round(self.tracker.step_fraction(a.step.id, now), 4)}
                      for a in self._active.values()],
            "steps_done": self.steps_done,
            "steps_total": len(self._leaves),
            "fraction": snap["fraction"],
            "elapsed_s": round(elapsed, 3),
            "eta_s": snap["eta_s"],
            "est_total_s": snap["est_total_s"],
            "pace": snap["pace"],
        }

    async def pause(self, *, reason: str | None = None) -> RunState:
        """Pause at the next step boundary; waits and pausable devices pause at once."""
        await self.machine.request("pause", reason=reason)
        self._gate.clear()
        self._pause_requested.set()
        for sid, act in list(self._active.items()):
            if is_pausable(act.device) and not act.device_paused and act.task is not None:
                self._log("device_paused", step=sid, device=act.device.name if act.device
                          else None)
                try:
                    await act.device.pause()  # type: ignore[union-attr]
                    act.device_paused = True
                    self._suspend(act)
                except DeviceError as exc:
                    self._log("warning", step=sid, message=f"could not pause: {exc}")
        await self._maybe_paused()
        return self.state

    async def resume(self, *, reason: str | None = None) -> RunState:
        await self.machine.request("resume", reason=reason)
        for sid, act in list(self._active.items()):
            if act.device_paused and act.device is not None:
                self._log("device_resumed", step=sid, device=act.device.name)
                await act.device.resume()  # type: ignore[attr-defined]
                act.device_paused = False
        self._pause_requested.clear()
        for act in list(self._active.values()):
            self._unsuspend(act)
        self._gate.set()
        return self.state

    async def abort(self, *, reason: str = "abort requested") -> RunState:
        """Cancel the running steps, then safe state for every device; returns once the
        run has stopped."""
        if self.started_wall is not None:
            await self._started.wait()
        await self.machine.request("abort", reason=reason)
        self._stop_reason = reason
        if self.started_wall is None:  # never started: nothing to cancel
            await self._stopped()
            self._finished.set()
            return self.state
        if self._main is not None:
            self._main.cancel()
        await self._finished.wait()
        return self.state

    async def estop(self, *, reason: str = "emergency stop",
                    bench_safe_state: asyncio.Future[dict[str, str]] | None = None
                    ) -> RunState:
        """Safe state for every device at once, concurrently with cancelling the steps.
        `bench_safe_state` is the bench-wide safe state an e-stop of several runs shares:
        each run awaits it (and records its errors) instead of safing only its own devices."""
        self._estop = True
        self._stop_reason = reason
        self._log("estop", reason=reason)
        self._estop_task = asyncio.ensure_future(self._apply_safe_state("estop",
                                                                        bench_safe_state))
        if self.started_wall is not None:
            await self._started.wait()
        if self.machine.can("abort"):
            await self.machine.request("abort", reason=reason)
        if self.started_wall is None:
            await self._stopped()
            self._finished.set()
            return self.state
        if self._main is not None:
            self._main.cancel()
        await self._finished.wait()
        return self.state

    # -- running -------------------------------------------------------------------------
    async def execute(self, *, skip: Collection[str] = ()) -> RunState:
        """Run every step not in `skip` (completed ones when resuming); returns the final
        state (completed, failed or aborted)."""
        self._skip = set(skip)
        self.steps_done = sum(1 for s in self._leaves if s.id in self._skip)
        self.done_estimate_s = sum(s.estimated_s for s in self._leaves
                                   if s.id in self._skip)
        self.tracker = RunProgress(self.plan, done=self._skip)
        self.started_wall = time.monotonic()
        if self._analysis_worker is not None:  # its imports run while the steps go on
            self._analysis_worker.prepare({_analysis_name(s) for s in self._leaves
                                           if s.kind == "analysis" and s.id not in self._skip})
        self._anchor()
        for leaf in self._leaves:  # resuming: the figures of analyses done before the crash
            sid = leaf.id
            if (leaf.kind == "analysis" and sid in self._skip
                    and isinstance(self.results.get(sid), dict)):
                self._add_figures(leaf, self.results[sid])
        try:
            try:
                await self.machine.request("start")
                self._main = asyncio.ensure_future(self._run_plan())
            finally:
                self._started.set()  # an abort that came meanwhile goes on now
            try:
                await self._main
            except asyncio.CancelledError:
                if self._stop_reason is None:
                    raise  # cancelled from outside: propagate after the finally
                await self._stopped()
            except StepFailed as exc:
                await self._failed(exc)
            else:
                if self._stop_reason is not None:
                    await self._stopped()
                else:
                    await self.machine.request("complete")
                    self.outcome = RunState.COMPLETED
            return self.state
        except asyncio.CancelledError:
            # the owner was cancelled (Ctrl-C, shutdown): leave the bench safe.
            self._stop_reason = self._stop_reason or "cancelled"
            if self._main is not None and not self._main.done():
                self._main.cancel()
                with contextlib.suppress(BaseException):
                    await self._main
            with contextlib.suppress(Exception):
                if self.machine.can("abort"):
                    await self.machine.request("abort", reason="cancelled")
                await self._stopped()
            raise
        finally:
            await self._release_all()
            self._finished.set()

    async def _stopped(self) -> None:
        if self._estop_task is not None:
            with contextlib.suppress(Exception):
                self.safe_state_errors.update(await self._estop_task)
        await self._apply_safe_state("abort" if not self._estop else "estop (after cancel)")
        if self.machine.can("stopped"):
            await self.machine.request("stopped", reason=self._stop_reason)
        self.outcome = RunState.ABORTED

    async def _failed(self, exc: StepFailed) -> None:
        self.failure = exc
        self.errors.append(exc.to_dict())
        await self._apply_safe_state(f"fault in step {exc.step_id}")
        if self.machine.can("fail"):
            await self.machine.request("fail", error=exc.to_dict())
        self.outcome = RunState.FAILED

    async def _apply_safe_state(self, why: str,
                                shared: asyncio.Future[dict[str, str]] | None = None
                                ) -> dict[str, str]:
        if self._safe_state_all is None and shared is None:
            return {}
        self._log("safe_state", reason=why)
        if shared is not None:
            errors = dict(await asyncio.shield(shared))
        else:
            assert self._safe_state_all is not None
            errors = await self._safe_state_all()
        self.safe_state_errors.update(errors)
        self._log("safe_state_done", durable=False, reason=why, errors=errors)
        return errors

    async def _run_plan(self) -> None:
        """The plan's steps, after the last line of defence against adding material
        twice: an in-doubt material move of an earlier session is never run again unless
        an operator journaled "redo" for it (whatever the plan's idempotent flag says)."""
        steps = self.plan.steps
        events = self.record.events()
        undecided = [s for s in undecided_material_steps(events, steps)
                     if s not in self._skip]
        if undecided:
            first = undecided[0]
            step = next(s for s in self._leaves if s.id == first)
            raise StepFailed(first, LabctlError(
                f"step {first} moved material when the run was interrupted and no operator "
                f"decided on it: it is not run again without --redo {first} (or "
                f"--accept-in-doubt {first})"), device=step.device,
                action=step.action)
        await self._recover_interrupted(events)
        if self._skip:
            await self._restore_setpoints()
        await self._run_list(steps)

    async def _recover_interrupted(self, events: list[dict[str, Any]]) -> None:
        """Before anything runs again, each step an earlier session left in doubt whose
        action can tell what it did (a dose weighed against its journaled reference)
        records it: what landed is an addition whether the operator accepted the step or
        asked for it again."""
        interrupted = interrupted_steps(events)
        for step in self._leaves:
            sid = step.id
            if sid not in interrupted or step.kind != "action":
                continue
            device = self.devices.get(str(step.device))
            if device is None:
                continue
            spec = self._resolve_action(device, str(step.action))
            recover = getattr(spec, "recover", None)
            if recover is None:
                continue
            try:
                result = await recover(device, step.args, interrupted[sid],
                                       StepContext(self, step, None))
            except Exception as exc:  # an addition that cannot be known stops the run
                raise StepFailed(sid, exc, device=device.name,
                                 action=step.action) from exc
            if result is None:
                continue
            result = jsonable(result)
            self._log("step_recovered", step=sid, kind=step.kind, device=device.name,
                      action=step.action, result=result)
            if sid in self._skip:
                self.results[sid] = result

    async def _restore_setpoints(self) -> None:
        """Resuming: the set-points the skipped steps left running, back on (journaled
        first, like every action)."""
        for name, points in standing_setpoints(self._leaves, self._skip).items():
            device = self.devices.get(name)
            self._log("setpoint_restored", device=name,
                      temperature_c=points.get("temperature_c"),
                      speed_rpm=points.get("speed_rpm"),
                      note="left running by completed steps; switched off by the start-up "
                           "safe state after the crash")
            try:
                if device is None:
                    raise DeviceError(f"device {name!r} is not connected", device=name)
                dev: Any = device
                if "speed_rpm" in points:
                    await dev.set_speed(points["speed_rpm"])
                if "temperature_c" in points:
                    await dev.set_temperature(points["temperature_c"])
                    reached = await self._settle(dev, points["temperature_c"])
                    self._log("setpoint_reached", durable=False, device=name,
                              temperature_c=reached)
            except Exception as exc:  # the run cannot go on in conditions it did not set
                raise StepFailed("resume", exc, device=name, action="restore set-points"
                                 ) from exc

    async def _settle(self, device: Any, setpoint_c: float) -> float:
        """Wait (simulated time on a simulated bench) until the device reads its setpoint
        again, within RESTORE_BAND_C; a DeviceFault after RESTORE_TIMEOUT_S."""
        waited = 0.0
        while True:
            t = float(await device.temperature_c())
            if abs(t - setpoint_c) <= RESTORE_BAND_C:
                return t
            if waited >= RESTORE_TIMEOUT_S:
                raise DeviceFault(f"{device.name} reads {t:.1f} °C, not back at its setpoint "
                                  f"{setpoint_c:g} °C after {RESTORE_TIMEOUT_S:g} s",
                                  device=device.name, code="setpoint_not_reached")
            await self.clock.sleep(RESTORE_POLL_S)
            waited += RESTORE_POLL_S

    async def _run_list(self, steps: Collection[PlannedStep]) -> None:
        for step in steps:
            await self._run_step(step)

    async def _run_step(self, step: PlannedStep) -> None:
        kind = step.kind
        sid = step.id
        if kind == "sequence":
            if self._all_skipped(step):
                return
            # A container acts on nothing: its start needs no fsync of its own. It reaches the
            # disk with its first leaf's step_started, which is fsync'd before that leaf acts.
            self._log("step_started", durable=False, step=sid, kind=kind, path=step.path)
            await self._run_list(step.children)
            self._log("step_finished", durable=False, step=sid, kind=kind)
        elif kind == "parallel":
            if self._all_skipped(step):
                return
            # No fsync of its own: as for a sequence.
            self._log("step_started", durable=False, step=sid, kind=kind, path=step.path)
            await self._run_parallel(step.children)
            self._log("step_finished", durable=False, step=sid, kind=kind)
        elif kind in LEAF_KINDS:
            if sid in self._skip:
                return
            await self._boundary()
            await self._run_leaf(step)
        else:
            raise StepFailed(sid, LabctlError(f"unknown step kind {kind!r}"))

    def _all_skipped(self, step: PlannedStep) -> bool:
        leaves = iter_leaves(step.children)
        return bool(leaves) and all(s.id in self._skip for s in leaves)

    async def _run_parallel(self, children: Collection[PlannedStep]) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for child in children:
                    tg.create_task(self._run_step(child))
        except BaseExceptionGroup as eg:
            failures = [e for e in _flatten(eg) if isinstance(e, StepFailed)]
            if failures:
                raise failures[0] from None
            others = [e for e in _flatten(eg) if not isinstance(e, asyncio.CancelledError)]
            if others:
                raise others[0] from None
            raise asyncio.CancelledError from None

    async def _boundary(self) -> None:
        """Before each leaf step: hold here while paused."""
        if not self._gate.is_set():
            await self._maybe_paused()
            await self._gate.wait()
        if self._stop_reason is not None:
            raise asyncio.CancelledError

    async def _park(self, act: _Active | None) -> None:
        """An action's checkpoint, or a wait: hold while paused, counted as paused."""
        if self._gate.is_set():
            return
        if act is None:
            await self._gate.wait()
            return
        self._suspend(act)
        await self._maybe_paused()
        await self._gate.wait()
        self._unsuspend(act)

    def _suspend(self, act: _Active) -> None:
        if act.suspended:
            return
        act.suspended = True
        cm = act.timeout_cm
        if cm is not None and cm.when() is not None:
            act.timeout_left = max(0.0, cm.when() - asyncio.get_running_loop().time())
            cm.reschedule(None)

    def _unsuspend(self, act: _Active) -> None:
        if not act.suspended:
            return
        act.suspended = False
        cm = act.timeout_cm
        if cm is not None and act.timeout_left is not None:
            cm.reschedule(asyncio.get_running_loop().time() + act.timeout_left)
            act.timeout_left = None

    async def _maybe_paused(self) -> None:
        if self.machine.state == RunState.PAUSING and all(
            a.suspended for a in self._active.values()
        ):
            with contextlib.suppress(IllegalTransition):  # another branch got there first
                await self.machine.request("paused")

    async def _run_leaf(self, step: PlannedStep) -> None:
        sid = step.id
        kind = step.kind
        device_name = step.device
        device = self.devices.get(device_name) if device_name else None
        retries = int(step.retries or 0)
        on_error = step.on_error or "abort"
        if on_error == "retry" and retries == 0:
            retries = 1
        if retries and not self._retry_safe(step, device):
            # a retry could add material twice (validation refuses this; plans built
            # otherwise get the same rule here)
            log.warning("step %s moves material and is not retry-safe: no retries", sid)
            retries = 0
        attempts = 1 + retries
        timeout_s = step.timeout_s
        # StepContext.earlier sees this step's earlier attempts, not a resume's recovery (a
        # redo the operator decided on is done in full)
        self._step_facts.pop(sid, None)
        await self._hold(step)
        for attempt in range(1, attempts + 1):
            act = _Active(step=step, device=device, task=asyncio.current_task())
            self._active[sid] = act
            self._step_boundary("step_started", sid)
            self._log("step_started", step=sid, kind=kind, path=step.path,
                      device=device_name, action=step.action,
                      args=jsonable(step.args), attempt=attempt,
                      idempotent=bool(step.idempotent))
            try:
                if timeout_s:
                    wall_s = self._step_wall_timeout(float(timeout_s), kind, device)
                    async with asyncio.timeout(wall_s) as cm:
                        act.timeout_cm = cm
                        result = await self._dispatch(step, device, act)
                else:
                    result = await self._dispatch(step, device, act)
            except asyncio.CancelledError:
                self._active.pop(sid, None)
                with contextlib.suppress(Exception):  # the cancellation goes on regardless
                    self._step_boundary("step_cancelled", sid)
                self._log("step_cancelled", durable=False, step=sid, kind=kind,
                          device=device_name, attempt=attempt, reason=self._stop_reason)
                raise
            except Exception as exc:  # every failure is recorded and decided on below
                self._active.pop(sid, None)
                if isinstance(exc, TimeoutError):
                    exc = StepTimeout(f"no end within the step timeout of {timeout_s} s",
                                      device=device_name)
                last = attempt == attempts or isinstance(exc, LimitError | MaterialInDoubt)
                cont = last and on_error == "continue"
                try:  # the step's own error is what the run must report
                    self._step_boundary("step_failed", sid)
                except Exception as save_exc:
                    log.error("step %s: could not save at its failure: %s", sid, save_exc)
                self._log("step_failed", step=sid, kind=kind, device=device_name,
                          action=step.action, attempt=attempt,
                          error=f"{type(exc).__name__}: {exc}",
                          code=getattr(exc, "code", None),
                          vendor_text=getattr(exc, "vendor_text", None),
                          retrying=not last, continued=cont)
                if device is not None and not isinstance(exc, LimitError):
                    await self._device_safe(device)
                if not last:
                    await self._maybe_paused()
                    continue
                failure = StepFailed(sid, exc, device=device_name, action=step.action)
                if cont:
                    self.errors.append({**failure.to_dict(), "continued": True})
                    await self._release(step)
                    self._leaf_done(step)
                    await self._maybe_paused()
                    return
                raise failure from exc
            else:
                self._active.pop(sid, None)
                result = jsonable(result or {})
                self.results[sid] = result
                self._step_boundary("step_finished", sid)
                self._log("step_finished", durable=False, step=sid, kind=kind,
                          device=device_name, action=step.action, result=result,
                          clock_unix_s=self.data_time())
                await self._release(step)
                self._leaf_done(step)
                await self._maybe_paused()
                return

    async def _hold(self, step: PlannedStep) -> None:
        """Wait for (and journal) what this step touches; a paused run does not start the
        step once it gets its claims."""
        if self._claims is None:
            return
        held = await self._claims.enter(step)
        self._log_claims("hold", held, step.id)
        await self._boundary()

    async def _release(self, step: PlannedStep) -> None:
        if self._claims is not None:
            self._log_claims("release", await self._claims.exit(step), step.id)

    async def _release_all(self) -> None:
        """The run ended: whatever it still holds is released (after its safe state)."""
        if self._claims is None:
            return
        with contextlib.suppress(Exception):  # the run's end must not be lost to this
            self._log_claims("release", await self._claims.close(), None)

    def _log_claims(self, event: str, claims: Collection[Any], step_id: str | None) -> None:
        now = self.data_time()
        for c in claims:
            self._log(event, durable=False, step=step_id, resource=c.resource, mode=c.mode,
                      key=c.key, clock_unix_s=now)

    def _retry_safe(self, step: PlannedStep, device: Device | None) -> bool:
        """May this leaf be attempted again automatically? Not when it moves material
        unless its action measures what a failed attempt delivered (ActionSpec.retry_safe)."""
        if not step.retry_safe:
            return False
        if step.kind != "action":
            return True
        spec = None
        if device is not None:
            with contextlib.suppress(Exception):  # unresolvable: dispatch reports it
                spec = self._resolve_action(device, str(step.action))
        if not moves_material(step, spec):
            return True
        return bool(getattr(spec, "retry_safe", False))

    def _step_wall_timeout(self, timeout_s: float, kind: Any, device: Device | None) -> float:
        """A step's timeout on the wall clock: scaled, but never under STEP_WALL_FLOOR_S
        (or STEP_FLOOR_EXCHANGES reply timeouts of its device), since its serial exchanges
        (or an analysis' computing) take real time at any time scale
        (labctl.clock.wall_budget). A wait is all clock time: no floor."""
        if kind == "wait":
            return self.clock.to_wall(timeout_s)
        floor = STEP_WALL_FLOOR_S
        if device is not None:
            floor = max(floor, STEP_FLOOR_EXCHANGES * device.spec.timeout_s)
        return wall_budget(self.clock, timeout_s, floor)

    def _leaf_done(self, step: PlannedStep) -> None:
        self.steps_done += 1
        self.done_estimate_s += step.estimated_s

    async def _device_safe(self, device: Device) -> None:
        error = await safe_state_of(device)
        if error is not None:  # the step already failed; note it and go on
            self._log("warning", device=device.name, message=f"safe state failed: {error}")

    async def _dispatch(self, step: PlannedStep, device: Device | None, act: _Active) -> Any:
        kind = step.kind
        if kind == "wait":
            await self._wait(float(step.duration_s or 0.0), act)
            return {"waited_s": float(step.duration_s or 0.0)}
        if kind == "analysis":
            return await self._analysis(step)
        if device is None:
            raise DeviceError(f"step {step.id}: device {step.device!r} "
                              "is not connected", device=step.device)
        spec = self._resolve_action(device, str(step.action))
        ctx = StepContext(self, step, act)
        run = spec.run if hasattr(spec, "run") else spec
        result = await run(device, step.args, ctx)
        if ctx.data_files and isinstance(result, dict):
            result.setdefault("data_files", ctx.data_files)
        return result

    async def _wait(self, duration_s: float, act: _Active) -> None:
        """Sleep on the clock; a pause freezes the remaining time."""
        remaining = duration_s
        while remaining > 0:
            if not self._gate.is_set():
                await self._park(act)
                continue
            t0 = self.clock.monotonic()
            sleeper = asyncio.ensure_future(self.clock.sleep(remaining))
            pauser = asyncio.ensure_future(self._pause_requested.wait())
            try:
                await asyncio.wait({sleeper, pauser}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (sleeper, pauser):
                    if not t.done():
                        t.cancel()
            if sleeper.done() and not sleeper.cancelled():
                return
            remaining -= self.clock.monotonic() - t0

    async def _analysis(self, step: PlannedStep) -> dict[str, Any]:
        """Figures of merit from the data of earlier steps:
        `labctl.analysis.ANALYSES[name](files, **args)`, files = {step_id: path}."""
        name = _analysis_name(step)
        table = self._analyses
        if table is None:
            from labctl.analysis import ANALYSES

            table = ANALYSES
        if name not in table:
            raise LabctlError(f"unknown analysis {name!r} (known: {', '.join(sorted(table))})")
        args = dict(step.args)
        self._add_measured_temperature(table[name], args)
        try:
            if self._analysis_worker is not None:  # an installed analysis: its own process
                out = await self._analysis_worker.run(name, self._data_files(), args)
            else:
                # In a worker thread: an EIS analysis imports impedance and scipy on its
                # first call and fits with scipy, each long enough to stall the event loop
                # while devices are connected (a hotplate's watchdog at a high time scale).
                analysis: Callable[..., Any] = table[name]
                out = await asyncio.to_thread(analysis, self._data_files(), **args)
                if inspect.isawaitable(out):
                    out = await out
        except Exception as exc:
            # a refusal (meaningless input) records its figures as failed, with the reason,
            # before the step fails: the result says why there is no number
            for failed in getattr(exc, "failed_figures", None) or []:
                self.figures.append({"analysis": name, "analysis_step": step.id,
                                     **jsonable(failed)})
            raise
        result = jsonable(out if isinstance(out, dict) else {"value": out})
        self._add_figures(step, result)
        return result

    def _add_figures(self, step: PlannedStep, result: dict[str, Any]) -> None:
        name = _analysis_name(step)
        figs = result.get("figures") if isinstance(result.get("figures"), list) else None
        for fig in figs or [result]:
            self.figures.append({"analysis": name, "analysis_step": step.id,
                                 **fig})

    def _add_measured_temperature(self, analysis: Any, args: dict[str, Any]) -> None:
        """An analysis that takes the cell's measured temperature gets the one recorded by
        the measurement it analyses (args.step, else the latest step that measured one),
        with where it came from; a recipe's own `measured_temperature` is kept."""
        accepted = getattr(analysis, "args", None)
        if not isinstance(accepted, Mapping) or "measured_temperature" not in accepted:
            return
        if args.get("measured_temperature") is not None:
            return
        wanted = args.get("step")
        for sid in reversed(list(self.results)):
            if wanted is not None and sid != wanted:
                continue
            cell = (self.results[sid] or {}).get("cell_temperature")
            if isinstance(cell, Mapping) and cell.get("measured_c") is not None:
                args["measured_temperature"] = float(cell["measured_c"]) + 273.15
                args["temperature_source"] = f"{cell.get('source')} (step {sid})"
                return

    def _data_files(self) -> dict[str, str]:
        """{step_id: absolute path} of every data file written so far in this run
        (including earlier sessions of a resumed run)."""
        files: dict[str, str] = {}
        for sid, res in self.results.items():
            for rel in (res or {}).get("data_files", []):
                files.setdefault(sid, str(self.record.folder / rel))
        return files


def _last_unix_time(data_dir: Any) -> float:
    """The latest `Unix Time / s` in the last rows of a run's data files (0 when none):
    a session killed mid-measurement leaves rows later than any journal line says."""
    from labctl.bdf import UNIX_TIME

    latest = 0.0
    for path in sorted(data_dir.glob("*.csv")) if data_dir.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, IndexError, UnicodeDecodeError):
            with open(path, "rb") as f:
                header = f.readline().decode("utf-8").rstrip("\n").split(",")
                if UNIX_TIME not in header:
                    continue
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 4096))
                lines = [x for x in f.read().decode("utf-8", "replace").splitlines() if x]
            for line in reversed(lines[1:] if len(lines) > 1 else lines):
                cells = line.split(",")
                if len(cells) == len(header):  # a whole row (the tail may be torn)
                    with contextlib.suppress(ValueError):
                        latest = max(latest, float(cells[header.index(UNIX_TIME)]))
                        break
    return latest


def _flatten(eg: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            out.extend(_flatten(e))
        else:
            out.append(e)
    return out


def jsonable(value: Any) -> Any:
    """Results and args as plain JSON data (pydantic models dumped, quantities as text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "to_dict"):
        return jsonable(value.to_dict())
    return str(value)


__all__ = [
    "Executor",
    "StepContext",
    "StepFailed",
    "StepTimeout",
    "default_action_resolver",
    "is_pausable",
    "iter_leaves",
]

"""The Bench service: the one in-process API through which the CLI, the MQTT agent and the
TUI drive a bench. None of them talks to a driver.

One run at a time; later submissions queue. Submitting validates first (a bad recipe raises
and creates nothing) and creates the run record at once, so a queued run already has its
folder, journal and index row. Start-up applies every device's safe state and deals with the
runs a crash (kill, power cut) left unfinished. After an e-stop the queue is held until
`resume()`.

One process per bench: start() takes `<data-dir>/bench.lock` (labctl.bench_lock) before it
opens a device, and raises BenchLocked, naming the holder, when another process has it;
serial lines are opened exclusively too (labctl.transport), for two data dirs on one bench.

Runs a crash left unfinished, and why they are treated so:
- A run that had started gets a final result at once, status "interrupted": its in-doubt
  steps (started, not finished: what they did to the world is not known) and how to go on
  (`labctl resume RUN_ID`, an operator deciding on each in-doubt step). Nothing is re-run
  by itself: repeating a dispense or a transfer could add material twice, and only someone
  who can look at the vials may decide that.
- A run that was queued and never started did nothing yet. With `requeue_unstarted` (the
  MQTT agent, which acknowledged those submits to its clients) it is queued again, in its
  original order, under the same run id: running it is what was promised. Without it (the
  CLI, which starts one run of its own) it is only marked interrupted, as before.
Either way every submitted run ends with one result: its own, or "interrupted".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labctl.bench_lock import BenchLock
from labctl.config import BenchConfig
from labctl.errors import LabctlError
from labctl.executor import Executor, _get, _jsonable, iter_leaves, moves_material
from labctl.instruments import Instruments
from labctl.run_machine import FINAL_STATES, IllegalTransition, RunMachine, RunState
from labctl.simulation import (
    WORLD_FILE,
    WorldKeeper,
    can_save,
    describe_in_doubt,
    in_doubt_report,
    read_saved_world,
)
from labctl.store import RunRecord, RunStore, replay, utc_iso
from labctl.store import provenance as prov

log = logging.getLogger("labctl.bench")

SUBSCRIBER_QUEUE = 10_000
RECIPE_DOC = "labctl.run-recipe/1"


#: ended runs whose tickets stay in memory (the rest are read from disk when asked)
KEEP_FINISHED_TICKETS = 20

class InDoubtError(LabctlError):
    """Resume needs an operator's decision on steps that were interrupted mid-action and
    may not simply be repeated."""

    def __init__(self, run_id: str, steps: list[str],
                 world: dict[str, Any] | None = None):
        self.run_id = run_id
        self.steps = steps
        #: simulated bench: what its saved world holds of each step (simulation.in_doubt_report)
        self.world = world or {}
        world_note = describe_in_doubt(self.world)
        names = ", ".join(steps)
        super().__init__(
            f"run {run_id}: step{'s' if len(steps) > 1 else ''} {names} started but did not "
            "finish, and repeating it could add material twice. Decide for each: "
            + "; ".join(f"--accept-in-doubt {s} (mark it done as it stands) or --redo {s} "
                        "(repeat it)" for s in steps)
            + (f". On resume {world_note}" if world_note else "")
        )


class NoRunInProgress(IllegalTransition):
    """Pause, resume or abort asked of a bench that is running nothing."""

    def __init__(self, trigger: str):
        super().__init__(trigger, RunState.IDLE, ["submit"])
        self.args = (f"cannot {trigger}: no run is in progress on this bench",)

    def __str__(self) -> str:
        return str(self.args[0])


class NothingToResume(LabctlError):
    """The run completed, or is unknown."""


@dataclass
class RunTicket:
    """A submitted run: queued, running, or ended."""

    run_id: str
    plan: Any
    record: RunRecord
    machine: RunMachine
    context: dict[str, Any]
    parameters: dict[str, Any]
    instigator: dict[str, Any]
    request: dict[str, Any] | None = None
    skip: set[str] = field(default_factory=set)
    prior_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    executor: Executor | None = None
    done: asyncio.Future[dict[str, Any]] | None = None
    submitted_wall: float = field(default_factory=time.monotonic)
    resumed: bool = False


def plan_document(plan: Any, parameters: Mapping[str, Any], source: str | None) -> dict[str, Any]:
    """recipe.json: the resolved recipe with its parameters and the planned steps."""
    recipe = _get(plan, "recipe")
    return {
        "schema": RECIPE_DOC,
        "source": source,
        "sha256": _get(plan, "sha256"),
        "parameters_submitted": _jsonable(dict(parameters)),
        "parameters": _jsonable(_get(plan, "parameters") or {}),
        "estimated_s": _get(plan, "estimated_s"),
        "recipe": _jsonable(recipe),
        "steps": [_step_doc(s) for s in (_get(plan, "steps") or [])],
    }


def _step_doc(step: Any) -> dict[str, Any]:
    doc = {k: _jsonable(_get(step, k)) for k in (
        "id", "path", "kind", "device", "action", "args", "duration_s", "timeout_s", "retries",
        "on_error", "idempotent", "estimated_s", "description")}
    doc["children"] = [_step_doc(c) for c in (_get(step, "children") or [])]
    return doc


def resolved_parameters(plan: Any) -> dict[str, Any]:
    """Every parameter's resolved value, defaults included, typed with its unit
    (`{"value": 1.2, "unit": "mol/kg", "type": "quantity", "text": ..., "source": ...}`);
    plain text values for plans built without the typed form."""
    typed = _get(plan, "parameters_typed")
    if typed:
        return dict(_jsonable(typed))
    return dict(_jsonable(_get(plan, "parameters") or {}))


def recipe_info(plan: Any) -> dict[str, Any]:
    recipe = _get(plan, "recipe")
    return {"name": str(_get(recipe, "name") or "recipe"),
            "version": _get(recipe, "version"),
            "description": _get(recipe, "description"),
            "sha256": _get(plan, "sha256")}


def safe_state_error(errors: dict[str, str]) -> dict[str, Any]:
    """The result's error entry for devices whose safe state failed: the device names
    and each one's error, and a message saying it all (what every adapter shows)."""
    text = "; ".join(f"{name}: {err}" for name, err in sorted(errors.items()))
    return {"type": "SafeStateError", "devices": dict(errors),
            "message": f"safe state not reached on {', '.join(sorted(errors))} ({text})"}


class Bench:
    """`async with Bench(cfg, data_dir="runs") as bench: run_id = await bench.submit(...)`"""

    def __init__(
        self,
        cfg: BenchConfig,
        *,
        data_dir: str | Path = "runs",
        time_scale: float | None = None,
        instruments: Instruments | None = None,
        store: RunStore | None = None,
        requeue_unstarted: bool = False,
    ):
        self.cfg = cfg
        #: queue again, at start-up, the runs a crash left queued (see the module docstring)
        self.requeue_unstarted = requeue_unstarted
        #: run ids closed as "interrupted" and queued again by the last start()
        self.interrupted_at_start: list[str] = []
        self.requeued_at_start: list[str] = []
        self.bench_id = cfg.bench.id
        self.time_scale = time_scale
        self._own_instruments = instruments is None
        self.instruments = instruments or Instruments(cfg, time_scale=time_scale)
        self.store = store or RunStore(data_dir)
        #: `<data-dir>/bench.lock`, held from start() to close() (labctl.bench_lock)
        self._lock = BenchLock(self.store.data_dir)
        self.tickets: dict[str, RunTicket] = {}
        self.queue: deque[RunTicket] = deque()
        self.current: RunTicket | None = None
        self.held = False  # after an e-stop: queued runs wait for resume()
        self.device_status: dict[str, dict[str, Any]] = {}
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._started = False
        self.startup_safe_state_errors: dict[str, str] = {}
        #: the run whose saved simulated world the simulators were started from, and it
        self._world_from: str | None = None
        self._saved_world: dict[str, Any] | None = None
        self.estop_safe_state_errors: dict[str, str] = {}

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Connect the instruments, apply every device's safe state, note interrupted runs,
        start the queue worker."""
        if self._started:
            return
        # one process per bench: before any device is opened (a second process would stop
        # the first's pumps with its start-up safe state) or any record touched (it would
        # close the first's running run as interrupted)
        self._lock.acquire()
        try:
            _preload_heavy_modules()
            if self._own_instruments or not self.instruments.devices:
                await self.instruments.start()
        except BaseException:
            self._lock.release()
            raise
        self.startup_safe_state_errors = await self.instruments.safe_state_all()
        self.requeued_at_start = []
        for run_id in self._mark_interrupted():
            try:
                await self.resume_run(run_id, operator="labctl", reason="requeued")
                self.requeued_at_start.append(run_id)
            except Exception:  # one unreadable record must not keep the bench down
                log.exception("run %s: could not queue it again", run_id)
                with contextlib.suppress(Exception):
                    self.store.index.upsert_run(run_id, status="interrupted")
        self._worker = asyncio.create_task(self._work(), name=f"bench-{self.bench_id}")
        self._started = True
        self._publish({"event": "bench_started", "bench_id": self.bench_id,
                       "safe_state_errors": self.startup_safe_state_errors})

    async def close(self) -> None:
        """Abort the current run (safe state), drop the queue, close the instruments."""
        for t in list(self.queue):
            with contextlib.suppress(Exception):
                await self.cancel(t.run_id)
        cur = self.current
        if cur is not None and cur.executor is not None and not cur.machine.final:
            with contextlib.suppress(Exception):
                await cur.executor.abort(reason="bench shutting down")
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(BaseException):
                await self._worker
            self._worker = None
        if self._started:
            with contextlib.suppress(Exception):
                await self.instruments.safe_state_all()
        if self._own_instruments:
            await self.instruments.close()
        self.store.close()
        self._started = False
        self._lock.release()

    async def __aenter__(self) -> Bench:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _mark_interrupted(self) -> list[str]:
        """Close the started runs a crash left unfinished with an "interrupted" result; the
        never-started ones to queue again (oldest first) when `requeue_unstarted`, else
        only marked interrupted."""
        self.interrupted_at_start = []
        unstarted: list[str] = []
        for row in reversed(self.store.list(limit=1000)):  # oldest first: the queue's order
            run_id = row["run_id"]
            status = row["status"]
            if status in {s.value for s in FINAL_STATES} | {"cancelled"}:
                continue
            try:
                rec = self.store.open(run_id)
                if status == "interrupted" and rec.result_path.exists():
                    continue  # dealt with at an earlier start
                events = rec.events()
                r = replay(events)
                if r.finished is not None:
                    continue
                if not r.order:  # no step ever started: it did nothing yet
                    if self.requeue_unstarted:
                        unstarted.append(run_id)
                    elif status != "interrupted":
                        self.store.index.upsert_run(run_id, status="interrupted")
                    continue
                self._close_interrupted(rec, events, r)
                self.interrupted_at_start.append(run_id)
            except Exception:  # one unreadable record must not keep the bench down
                log.exception("run %s: could not record its interruption", run_id)
                with contextlib.suppress(Exception):
                    self.store.index.upsert_run(run_id, status="interrupted")
        return unstarted

    def _close_interrupted(self, rec: RunRecord, events: list[dict[str, Any]],
                           r: Any) -> None:
        """Journal the interruption and write the run's final result (status
        "interrupted", in-doubt steps, how to continue); nothing is re-run."""
        run_id = rec.run_id
        in_doubt = list(r.in_doubt)
        completed = list(r.completed)
        message = (f"run {run_id} was interrupted: the process running it stopped (crash, "
                   "kill or power cut) in the middle of the run")
        if in_doubt:
            message += (f"; step{'s' if len(in_doubt) > 1 else ''} {', '.join(in_doubt)} "
                        "started but did not finish, and what it did is not known")
        message += (f". Nothing was repeated. An operator may continue it with `labctl resume "
                    f"{run_id}` (completed steps are kept"
                    + ("; decide on each in-doubt step with --accept-in-doubt STEP or --redo "
                       "STEP" if in_doubt else "") + ").")
        meta = rec.read_json("metadata.json") or {}
        instigator = meta.get("instigator") or {}
        started = next((e.get("t") for e in events if e.get("event") == "step_started"), None)
        last_heard = events[-1].get("t") if events else None
        rec.journal.append("interrupted", run_id=run_id, in_doubt=in_doubt,
                           completed=completed, last_event=last_heard, note=message)
        rec.close()
        rec.write_result({
            "schema": "labctl.run-result/1",
            "run_id": run_id,
            "status": "interrupted",
            "recipe": meta.get("recipe"),
            "parameters": meta.get("parameters_resolved"),
            "parameters_submitted": meta.get("parameters"),
            "instigator": instigator,
            "request_id": instigator.get("request_id"),
            "bench_id": self.bench_id,
            "started": started,
            "ended": last_heard,
            "figures_of_merit": [],
            "errors": [{"type": "Interrupted", "message": message, "in_doubt": in_doubt}],
            "in_doubt": in_doubt,
            "completed_steps": completed,
            "resume": f"labctl resume {run_id}",
            "fidelity": meta.get("fidelity"),
            "data_files": [{"path": d["path"], "sha256": d["sha256"]}
                           for d in rec.data_files()],
            "record": str(rec.folder),
        })
        self.store.index.upsert_run(run_id, status="interrupted", ended=last_heard,
                                    error=message)

    # -- planning ------------------------------------------------------------------------
    def plan(self, recipe: Any, parameters: Mapping[str, Any] | None = None) -> Any:
        """Validate a recipe (a path, JSON text, a dict or a Recipe) against this bench; the
        Plan, or labctl.recipe's RecipeError listing every fault."""
        from labctl.estimates import at_time_scale
        from labctl.recipe import build_plan

        return build_plan(recipe, dict(parameters or {}), at_time_scale(self.cfg, self.time_scale))

    # -- submitting ----------------------------------------------------------------------
    async def submit(
        self,
        plan_or_recipe: Any,
        parameters: Mapping[str, Any] | None = None,
        *,
        instigator: str | dict[str, Any] | None = None,
        request: dict[str, Any] | None = None,
        run_id: str | None = None,
        source: str | None = None,
    ) -> str:
        """Validate (unless given a Plan), create the run record, queue it; the run id."""
        params = dict(parameters or {})
        if source is None and isinstance(plan_or_recipe, Path):
            source = str(plan_or_recipe)
        plan = plan_or_recipe if _is_plan(plan_or_recipe) else self.plan(plan_or_recipe, params)
        info = recipe_info(plan)
        record = self.store.create(info["name"], run_id)
        who = prov.instigator_info(instigator, request)
        context = self._context(record.run_id, plan, params, who, source)
        ticket = self._ticket(record, plan, params, who, request, context)
        record.write_recipe(plan_document(plan, params, source))
        record.journal.append("run_created", run_id=record.run_id, recipe=info,
                              parameters=_jsonable(params), instigator=who,
                              bench_id=self.bench_id)
        await ticket.machine.request("validate")
        await ticket.machine.request("validated")
        record.write_metadata(prov.build_metadata(context=context, events=record.events(),
                                                  data_files=[]))
        self.store.index.upsert_run(
            record.run_id, recipe=info["name"], version=_str(info.get("version")),
            sha256=info.get("sha256"), status="queued", bench_id=self.bench_id,
            instigator=f"{who.get('kind')}:{who.get('id')}", request_id=_str(who.get("request_id")),
            fidelity=context["fidelity"]["level"], created=context["times"]["created"],
            path=str(record.folder),
        )
        self._enqueue(ticket)
        return record.run_id

    def _ticket(self, record: RunRecord, plan: Any, params: dict[str, Any],
                who: dict[str, Any], request: dict[str, Any] | None,
                context: dict[str, Any]) -> RunTicket:
        def journal_transition(info: dict[str, Any]) -> None:
            ev = record.journal.append("transition", run_id=record.run_id, **info)
            self._publish(ev)

        ticket = RunTicket(run_id=record.run_id, plan=plan, record=record,
                           machine=RunMachine(journal=journal_transition), context=context,
                           parameters=params, instigator=who, request=request)
        ticket.done = asyncio.get_running_loop().create_future()
        return ticket

    def _enqueue(self, ticket: RunTicket) -> None:
        self.tickets[ticket.run_id] = ticket
        self.queue.append(ticket)
        self._publish({"event": "queued", "run_id": ticket.run_id,
                       "position": len(self.queue) - (0 if self.current else 1)})
        self._wake.set()

    def queue_position(self, run_id: str) -> int | None:
        """0 = running now (or next), 1 = after that..."""
        if self.current is not None and self.current.run_id == run_id:
            return 0
        for i, t in enumerate(self.queue):
            if t.run_id == run_id:
                return i + (1 if self.current is not None else 0)
        return None

    def _context(self, run_id: str, plan: Any, params: dict[str, Any], who: dict[str, Any],
                 source: str | None) -> dict[str, Any]:
        devices = self.instruments.devices
        kinds = {n: (self.cfg.devices[n].simulator.kind or self.cfg.devices[n].driver)
                 for n in devices if n in self.cfg.devices}
        instruments = {}
        for name, dev in devices.items():
            d = dev.describe()
            d["simulated"] = bool(self.cfg.bench.simulate)
            if self.cfg.bench.simulate:
                d["simulator"] = kinds.get(name)
            instruments[name] = d
        recipe = _get(plan, "recipe")
        materials = _get(recipe, "materials")
        if hasattr(materials, "items") and not isinstance(materials, dict):
            materials = dict(materials.items())
        return {
            "run_id": run_id,
            "recipe": {**recipe_info(plan), "source": source},
            "parameters": _jsonable(params),
            "parameters_resolved": resolved_parameters(plan),
            "instigator": who,
            "bench": prov.bench_info(self.cfg),
            "conditions": prov.conditions_info(self.cfg),
            "times": {"created": utc_iso()},
            "materials": prov.materials_info(self.cfg, _jsonable(materials or {})),
            "instruments": instruments,
            "software": prov.software_info(),
            "fidelity": prov.fidelity_info(self.cfg, kinds),
            "sop": {"planned_steps": [
                {"id": _get(s, "id"), "description": _get(s, "description"),
                 "estimated_s": _get(s, "estimated_s")}
                for s in iter_leaves(_get(plan, "steps") or [])],
                "estimated_s": _get(plan, "estimated_s")},
            "sessions": [{"started": utc_iso(), "kind": "run",
                          "time_scale": self.instruments.clock.time_scale}],
        }

    # -- the queue worker ----------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            while not self.queue or self.held:
                self._wake.clear()
                await self._wake.wait()
            ticket = self.queue.popleft()
            self.current = ticket
            try:
                await self._execute(ticket)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not kill the bench: fail the run
                log.exception("run %s crashed", ticket.run_id)
                with contextlib.suppress(Exception):
                    await self.instruments.safe_state_all()
                with contextlib.suppress(Exception):
                    if ticket.machine.can("fail"):
                        await ticket.machine.request("fail", error=f"internal error: {exc}")
                with contextlib.suppress(Exception):
                    self._finish(ticket, RunState.FAILED,
                                 [{"type": type(exc).__name__, "message": str(exc)}])
            finally:
                self.current = None

    async def _execute(self, ticket: RunTicket) -> None:
        rec = ticket.record
        keeper = None
        if can_save(self.instruments.simulation):  # simulated in-process: keep its world
            keeper = WorldKeeper(self.instruments.simulation, rec.folder, ticket.run_id)
        ex = Executor(
            ticket.plan, self.instruments.devices, clock=self.instruments.clock, record=rec,
            machine=ticket.machine, safe_state_all=self.instruments.safe_state_all,
            emit=self._publish, prior_results=ticket.prior_results,
            time_basis="simulated" if self.cfg.bench.simulate else "wall",
            on_boundary=keeper.boundary if keeper is not None else None,
        )
        ticket.executor = ex
        self.store.index.upsert_run(ticket.run_id, status="running", started=utc_iso())
        state = await ex.execute(skip=ticket.skip)
        errors = list(ex.errors)
        if state == RunState.ABORTED and not errors:
            errors.append({"type": "Aborted", "message": ex._stop_reason or "aborted"})
        if ex.safe_state_errors:
            errors.append(safe_state_error(ex.safe_state_errors))
        self._finish(ticket, state, errors)

    def _finish(self, ticket: RunTicket, state: RunState, errors: list[dict[str, Any]]) -> None:
        """Close the record and tell every waiter. Each part is tried on its own: a full
        disk or a broken index must still end the run for `wait()` and the adapters, with
        the failure to record named in the result."""
        rec = ticket.record
        ex = ticket.executor
        figures = list(ex.figures) if ex else []
        record_errors: list[str] = []

        def attempt(what: str, fn: Any) -> Any:
            try:
                return fn()
            except Exception as exc:  # each part of the record is tried on its own
                log.error("run %s: could not %s: %s", ticket.run_id, what, exc)
                record_errors.append(f"could not {what}: {exc}")
                return None

        attempt("journal the end of the run", lambda: rec.journal.append(
            "run_finished", run_id=ticket.run_id, status=str(state), errors=errors,
            figures=figures))
        meta = attempt("build the metadata", lambda: prov.build_metadata(
            context=ticket.context, events=rec.events(), data_files=rec.data_files(),
            figures=figures, status=str(state)))
        if meta is None:
            meta = {"times": {"ended": utc_iso()}, "outcome": {"in_doubt": []}}
        else:
            attempt("write metadata.json", lambda: rec.write_metadata(meta))
        if record_errors:
            errors = [*errors, {"type": "RecordError", "message": "; ".join(record_errors)}]
            if state == RunState.COMPLETED:
                state = RunState.FAILED  # a run whose record is incomplete did not complete
        result = self._result_doc(ticket, state, errors, figures, meta)
        attempt("write result.json", lambda: rec.write_result(result))
        attempt("close the record", rec.close)
        attempt("index the run", lambda: self.store.index.upsert_run(
            ticket.run_id, status=str(state), ended=meta["times"].get("ended"), figures=figures,
            error="; ".join(str(e.get("message") or e) for e in errors) or None))
        ev = {"event": "run_finished", "run_id": ticket.run_id, "status": str(state),
              "result": result}
        self._publish(ev)
        if ticket.done is not None and not ticket.done.done():
            ticket.done.set_result(result)
        self._forget_old_tickets()

    def _forget_old_tickets(self) -> None:
        """Keep the last KEEP_FINISHED_TICKETS ended runs in memory (plans, executors); older
        ones are on disk only (`wait()` and `result()` read them from there), so a bench
        that serves for weeks does not grow with every run."""
        ended = [rid for rid, t in self.tickets.items()
                 if t.done is not None and t.done.done()]
        for rid in ended[:-KEEP_FINISHED_TICKETS] if len(ended) > KEEP_FINISHED_TICKETS else []:
            del self.tickets[rid]

    def _result_doc(self, ticket: RunTicket, state: RunState, errors: list[dict[str, Any]],
                    figures: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
        return {
            "schema": "labctl.run-result/1",
            "run_id": ticket.run_id,
            "status": str(state),
            "recipe": meta.get("recipe"),
            "parameters": meta.get("parameters_resolved") or resolved_parameters(ticket.plan),
            "parameters_submitted": _jsonable(ticket.parameters),
            "instigator": ticket.instigator,
            "request_id": ticket.instigator.get("request_id"),
            "bench_id": self.bench_id,
            "started": meta["times"].get("started"),
            "ended": meta["times"].get("ended"),
            "figures_of_merit": figures,
            "errors": errors,
            "in_doubt": meta.get("outcome", {}).get("in_doubt", []),
            "fidelity": meta.get("fidelity"),
            "data_files": [{"path": d["path"], "sha256": d["sha256"]}
                           for d in meta.get("data_files", [])],
            "record": str(ticket.record.folder),
        }

    # -- control -------------------------------------------------------------------------
    def _running(self, trigger: str) -> Executor:
        cur = self.current
        if cur is None or cur.executor is None:
            raise NoRunInProgress(trigger)
        return cur.executor

    async def pause(self) -> RunState:
        return await self._running("pause").pause()

    async def resume(self) -> RunState:
        """Resume the paused run; after an e-stop, release the held queue."""
        if self.held and (self.current is None or self.current.machine.final):
            self.held = False
            self._publish({"event": "queue_released"})
            self._wake.set()
            return RunState.IDLE
        return await self._running("resume").resume()

    async def abort(self) -> RunState:
        return await self._running("abort").abort(reason="abort requested by the operator")

    async def estop(self) -> RunState:
        """Every device safe at once; the current run ends aborted; the queue is held.
        With no run going, a device that failed its safe state is published
        (`safe_state_done` with its error) and kept in `estop_safe_state_errors`."""
        self.held = True
        cur = self.current
        if cur is not None and cur.executor is not None and not cur.machine.final:
            return await cur.executor.estop()
        self._publish({"event": "estop", "bench_id": self.bench_id})
        self.estop_safe_state_errors = await self.instruments.safe_state_all()
        self._publish({"event": "safe_state_done", "bench_id": self.bench_id,
                       "reason": "estop", "errors": self.estop_safe_state_errors})
        return RunState.IDLE

    async def cancel(self, run_id: str) -> None:
        """Withdraw a queued run (the running one is stopped with abort)."""
        for t in list(self.queue):
            if t.run_id == run_id:
                self.queue.remove(t)
                await t.machine.request("abort", reason="cancelled before it started")
                await t.machine.request("stopped", reason="cancelled")
                self._finish(t, RunState.ABORTED, [{"type": "Cancelled",
                                                    "message": "cancelled before it started"}])
                self.store.index.upsert_run(run_id, status="cancelled")
                return
        if self.current is not None and self.current.run_id == run_id:
            raise IllegalTransition("cancel", self.current.machine.state, ["abort"])
        raise NothingToResume(f"run {run_id} is not queued")

    async def wait(self, run_id: str) -> dict[str, Any]:
        """The result document of a submitted run, once it has ended."""
        t = self.tickets.get(run_id)
        if t is None or t.done is None:
            res = self.result(run_id)
            if res is None:
                raise NothingToResume(f"unknown run {run_id}")
            return res
        return await asyncio.shield(t.done)

    # -- views ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Bench state, current run and step, progress, ETA, queue, devices' last status."""
        cur = self.current
        run: dict[str, Any] | None = None
        state = "held" if self.held else "idle"
        if cur is not None:
            state = str(cur.machine.state)
            run = {"run_id": cur.run_id, "recipe": recipe_info(cur.plan),
                   "state": state, "instigator": cur.instigator}
            if cur.executor is not None:
                run["progress"] = cur.executor.progress()
        return {
            "bench_id": self.bench_id,
            "state": state,
            "simulated": bool(self.cfg.bench.simulate),
            "run": run,
            "queue": [{"run_id": t.run_id, "recipe": recipe_info(t.plan)["name"],
                       "position": self.queue_position(t.run_id)} for t in self.queue],
            "devices": dict(self.device_status),
            "time": utc_iso(),
        }

    async def poll_devices(self) -> dict[str, dict[str, Any]]:
        """Ask every device for its status (between commands of a run: links are locked
        per exchange)."""
        async def one(name: str, dev: Any) -> None:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                async with asyncio.timeout(5.0):
                    self.device_status[name] = (await dev.status()).to_dict()
            except Exception as exc:  # one device's trouble must not hide the others
                self.device_status[name] = {"state": "unknown", "fault": str(exc)}

        await asyncio.gather(*(one(n, d) for n, d in self.instruments.devices.items()))
        return self.device_status

    def result(self, run_id: str) -> dict[str, Any] | None:
        try:
            return self.store.open(run_id).read_json("result.json")
        except FileNotFoundError:
            return None

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Every event of this bench from now on (journal lines of runs, queue changes)."""
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self._subscribers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._subscribers.discard(q)

    def _publish(self, ev: dict[str, Any]) -> None:
        ev = {**ev, "type": ev.get("event"), "bench_id": self.bench_id}
        ev.setdefault("t", utc_iso())
        for q in list(self._subscribers):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()  # a slow subscriber loses the oldest, not the newest
            q.put_nowait(ev)

    # -- resuming an interrupted run -----------------------------------------------------
    def check_resume(
        self,
        run_id: str,
        *,
        accept_in_doubt: Collection[str] = (),
        redo: Collection[str] = (),
    ) -> tuple[RunRecord, Any, dict[str, Any], Any, list[str]]:
        """Everything resume needs to know, touching no device and writing nothing:
        (record, plan, recipe document, journal replay, in-doubt steps). Raises
        NothingToResume, InDoubtError or RecipeError."""
        try:
            rec = self.store.open(run_id)
        except FileNotFoundError as exc:
            raise NothingToResume(str(exc)) from None
        if run_id in self.tickets and not self.tickets[run_id].machine.final:
            raise NothingToResume(f"run {run_id} is queued or running in this bench")
        r = rec.replay()
        if r.finished is not None and r.finished.get("status") == "completed":
            raise NothingToResume(f"run {run_id} completed; nothing to resume")
        doc = rec.read_json("recipe.json")
        if doc is None:
            raise NothingToResume(f"run {run_id} has no recipe.json")
        plan = self.plan(*replan_source(doc))
        if doc.get("sha256") and _get(plan, "sha256") and _get(plan, "sha256") != doc["sha256"]:
            raise NothingToResume(
                f"run {run_id}: the recipe no longer resolves to the recorded one "
                f"(sha256 {_get(plan, 'sha256')} != {doc['sha256']}); the bench config changed?")
        leaves = {str(_get(s, "id")): s for s in iter_leaves(_get(plan, "steps") or [])}
        unknown = [s for s in [*accept_in_doubt, *redo] if s not in leaves]
        if unknown:
            raise NothingToResume(f"run {run_id} has no step {', '.join(unknown)}")
        in_doubt = [s for s in r.in_doubt if s in leaves]
        undecided = [s for s in in_doubt if s not in accept_in_doubt and s not in redo
                     and not _idempotent(leaves[s])]
        if undecided:
            world = None
            if self.cfg.bench.simulate:
                world = in_doubt_report(read_saved_world(rec.folder), undecided)
            raise InDoubtError(run_id, undecided, world)
        return rec, plan, doc, r, in_doubt

    def use_saved_world(self, run_id: str) -> dict[str, Any] | None:
        """Start this (simulated, not yet started) bench's simulators from the world the run
        saved, so its resume finds the vials as they were; the saved document, or None
        when the bench is not simulated or the run saved none."""
        if self._started:
            raise LabctlError("the saved simulated world must be chosen before the bench "
                              "starts")
        if not self.cfg.bench.simulate:
            return None
        try:
            rec = self.store.open(run_id)
        except FileNotFoundError as exc:
            raise NothingToResume(str(exc)) from None
        saved = read_saved_world(rec.folder)
        if saved is not None:
            self.instruments.sim_state = saved.get("state")
            self._world_from, self._saved_world = run_id, saved
        return saved

    def _world_on_resume(self, run_id: str, in_doubt: list[str]) -> dict[str, Any] | None:
        """What the resumed run's simulated world is (journaled with `resumed`)."""
        if self.instruments.simulation is None:
            return None  # real instruments, or simulators in a process of their own
        if self._world_from == run_id and self._saved_world is not None:
            saved = self._saved_world
            return {"restored": True, "saved": saved.get("saved"), "saved_at": saved.get("at"),
                    "in_doubt": in_doubt_report(saved, in_doubt)}
        rec = self.store.open(run_id)
        has = (rec.folder / WORLD_FILE).exists()
        return {"restored": False,
                "note": ("the run saved its simulated world, but this bench's simulators "
                         "were started without it (resume with `labctl resume`, which starts "
                         "them from it)") if has else "the run saved no simulated world"}

    async def resume_run(
        self,
        run_id: str,
        *,
        accept_in_doubt: Collection[str] = (),
        redo: Collection[str] = (),
        operator: str | None = None,
        reason: str = "resume",
    ) -> str:
        """Queue an interrupted (or failed/aborted) run again: completed steps are kept,
        idempotent in-doubt steps re-run, the others need accept or redo (InDoubtError).
        Each decision is journaled before the run goes on. `reason` names the session in
        provenance ("requeued": a never-started run queued again after a restart)."""
        rec, plan, doc, r, in_doubt = self.check_resume(
            run_id, accept_in_doubt=accept_in_doubt, redo=redo)
        who = operator or "unknown"
        journal = rec.journal
        skip = set(r.completed)
        world = self._world_on_resume(run_id, in_doubt)
        holds = (world or {}).get("in_doubt") or {}

        def sim(s: str) -> dict[str, Any]:
            return {"sim_world_holds": holds[s]["holds"]} if s in holds else {}

        for s in in_doubt:
            if s in accept_in_doubt:
                journal.append("decision", run_id=run_id, step=s, decision="accept",
                               operator=who, note="in-doubt step accepted as it stands",
                               **sim(s))
                skip.add(s)
            elif s in redo:
                journal.append("decision", run_id=run_id, step=s, decision="redo",
                               operator=who, note="in-doubt step repeated on resume",
                               **sim(s))
            else:
                journal.append("decision", run_id=run_id, step=s, decision="rerun",
                               operator="labctl", note="idempotent step re-run on resume")
        for s in redo:  # a completed step may be redone on request too
            if s not in in_doubt:
                journal.append("decision", run_id=run_id, step=s, decision="redo",
                               operator=who, note="completed step repeated on resume")
                skip.discard(s)
        meta = rec.read_json("metadata.json") or {}
        context = {k: v for k, v in meta.items() if k in (
            "run_id", "recipe", "parameters", "parameters_resolved", "instigator", "bench",
            "conditions",
            "times", "materials", "instruments", "software", "fidelity", "sop", "sessions")}
        fresh = self._context(run_id, plan, doc.get("parameters_submitted") or {},
                              meta.get("instigator") or {}, doc.get("source"))
        for key in ("instruments", "software", "fidelity"):
            context.setdefault(key, fresh[key])
        context["sessions"] = [*context.get("sessions", []),
                               {"started": utc_iso(), "kind": reason, "operator": who,
                                "skipped": sorted(skip),
                                "time_scale": self.instruments.clock.time_scale,
                                "instruments": fresh["instruments"],
                                "software": fresh["software"],
                                **({"sim_world": world} if world is not None else {})}]
        ticket = self._ticket(rec, plan, doc.get("parameters_submitted") or {},
                              context.get("instigator") or {}, None, context)
        ticket.skip = skip
        ticket.resumed = True
        ticket.prior_results = {sid: st.result or {} for sid, st in r.steps.items()
                                if st.state == "completed"}
        journal.append("resumed", run_id=run_id, operator=who, skip=sorted(skip),
                       in_doubt=in_doubt, reason=reason, sim_world=world)
        await ticket.machine.request("validate")
        await ticket.machine.request("validated")
        self.store.index.upsert_run(run_id, status="queued")
        self._enqueue(ticket)
        return run_id

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.store.list(limit=limit)

    def seen_command(self, command_id: str) -> dict[str, Any] | None:
        return self.store.seen_command(command_id)

    def remember_command(self, command_id: str, reply: dict[str, Any]) -> None:
        self.store.remember_command(command_id, reply)


def replan_source(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The recipe and parameters that rebuild a recorded plan: the resolved recipe (what
    ran, includes inlined — not the files, which may have changed since) with its parameter
    declarations, and the resolved parameter values."""
    recipe = dict(doc["recipe"])
    decls = recipe.get("parameters")
    if isinstance(decls, dict):
        recipe["parameters"] = {n: ({k: v for k, v in d.items() if k != "value"}
                                    if isinstance(d, dict) else d) for n, d in decls.items()}
    params = doc.get("parameters")
    if not isinstance(params, dict):
        params = doc.get("parameters_submitted") or {}
    return recipe, dict(params)


def _idempotent(step: Any) -> bool:
    """Waits and analyses may always be repeated; actions only when declared so, and never
    one that moves material, whatever its flag says (a plan built by hand, a recorded
    recipe edited by hand): an in-doubt addition waits for an operator's decision."""
    if moves_material(step):
        return False
    return _get(step, "kind") in ("wait", "analysis") or bool(_get(step, "idempotent"))


def _is_plan(obj: Any) -> bool:
    return hasattr(obj, "steps") and hasattr(obj, "sha256") and not isinstance(obj, (str, Path))


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _preload_heavy_modules() -> None:
    """Import what runs will need (numpy, scipy, the recipe engine) before any device is
    connected: an import in the middle of a run blocks the event loop for a second, which at
    a high simulated time scale is long enough to trip a hotplate's watchdog."""
    import labctl.actions
    import labctl.analysis
    import labctl.bdf
    import labctl.recipe  # noqa: F401

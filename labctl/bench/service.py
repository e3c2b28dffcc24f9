"""The Bench service: the one in-process API through which the CLI, the MQTT agent and the
TUI drive a bench (labctl.bench.protocol.BenchService is its shape). None of them talks to
a driver.

One run at a time; later submissions queue (labctl.bench.queue). Submitting validates
first (a bad recipe raises and creates nothing) and creates the run record at once, so a
queued run already has its folder, journal and index row. Start-up applies every device's
safe state and deals with the runs a crash left unfinished (labctl.bench.recovery). After
an e-stop the queue is held until `resume()`. Resuming an interrupted run:
labctl.bench.resume; what is written about a run: labctl.bench.provenance.

One process per bench: start() takes `<data-dir>/bench.lock` (labctl.bench_lock) before it
opens a device, and raises BenchLocked, naming the holder, when another process has it;
serial lines are opened exclusively too (labctl.transport), for two data dirs on one bench.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import Any

from labctl.analysis.worker import AnalysisWorker
from labctl.bench import provenance as runprov
from labctl.bench import recovery, sim_world
from labctl.bench import resume as resuming
from labctl.bench.dedup import CommandMemory, CommandReply
from labctl.bench.errors import NoRunInProgress, NothingToResume
from labctl.bench.events import EventHub
from labctl.bench.queue import RunQueue, RunTicket
from labctl.bench.resources import ResourceBoard, RunGate, claims_of
from labctl.bench.samples import BenchSamples, plan_claims
from labctl.bench.stock import BenchStock, check_plans
from labctl.bench_lock import BenchLock
from labctl.config import BenchConfig
from labctl.device import Device, safe_state_of
from labctl.errors import LabctlError
from labctl.executor import Executor, jsonable
from labctl.instruments import Instruments
from labctl.protocol import Submitted
from labctl.recipe.loading import RecipeSource
from labctl.recipe.plan import Plan
from labctl.recipe.validate import Stock, build_plan
from labctl.run_machine import IllegalTransition, RunMachine, RunState
from labctl.simulation import WorldKeeper, can_save, read_saved_world
from labctl.store import RunRecord, RunStore, new_run_id, utc_iso
from labctl.store import provenance as prov
from labctl.store.journal import journal_line
from labctl.store.record import first_files

log = logging.getLogger("labctl.bench")


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
        max_concurrent: int | None = None,
        analysis_worker: AnalysisWorker | None = None,
    ):
        self.cfg = cfg
        #: queue again, at start-up, the runs a crash left queued (labctl.bench.recovery)
        self.requeue_unstarted = requeue_unstarted
        #: run ids closed as "interrupted" and queued again by the last start()
        self.interrupted_at_start: list[str] = []
        self.requeued_at_start: list[str] = []
        self._events = EventHub(cfg.bench.id)
        self.time_scale = time_scale
        self._own_instruments = instruments is None
        self.instruments = instruments or Instruments(cfg, time_scale=time_scale)
        self.store = store or RunStore(data_dir)
        self.commands = CommandMemory(self.store)
        #: persisted reservoir and dispenser levels, debited from runs' journals
        self.stock = BenchStock(cfg, self.store.data_dir)
        #: samples runs make and take (vial and sample parameters)
        self.samples = BenchSamples(cfg, self.store.data_dir)
        #: `<data-dir>/bench.lock`, held from start() to close() (labctl.bench_lock)
        self._lock = BenchLock(self.store.data_dir)
        #: submits are checked and written one at a time (each sees the ones before)
        self._submitting = asyncio.Lock()
        #: finished runs whose records are being written in threads (_finish)
        self._closing: set[asyncio.Future[Any]] = set()
        self._world_saver = sim_world.WorldSaver(self)
        #: several runs at once (config `[bench] concurrency`): their steps wait for the
        #: devices and vessels they touch on this board (labctl.bench.resources)
        self.runs = RunQueue(max_concurrent or cfg.bench.concurrency)
        self.board = ResourceBoard()
        self.device_status: dict[str, dict[str, Any]] = {}
        self._worker: asyncio.Task[None] | None = None
        #: the process the installed analyses run in, started by the first run that has
        #: analysis steps (labctl.analysis.worker)
        self.analysis_worker = analysis_worker or AnalysisWorker()
        self._started = False
        self.startup_safe_state_errors: dict[str, str] = {}
        #: the run whose saved simulated world the simulators were started from, and it
        self._world_from: str | None = None
        self._saved_world: dict[str, Any] | None = None
        self.estop_safe_state_errors: dict[str, str] = {}

    # -- what adapters read ----------------------------------------------------------------
    @property
    def bench_id(self) -> str:
        return self._events.bench_id

    @bench_id.setter
    def bench_id(self, value: str) -> None:
        self._events.bench_id = value

    @property
    def tickets(self) -> dict[str, RunTicket]:
        return self.runs.tickets

    @property
    def queue(self) -> deque[RunTicket]:
        return self.runs.waiting

    @property
    def current(self) -> RunTicket | None:
        return self.runs.current

    @property
    def held(self) -> bool:
        return self.runs.held

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Connect the instruments, apply every device's safe state, deal with the runs a
        crash left unfinished, start the queue worker."""
        if self._started:
            return
        # one process per bench: before any device is opened (a second process would stop
        # the first's pumps with its start-up safe state) or any record touched (it would
        # close the first's running run as interrupted)
        self._lock.acquire()
        try:
            _preload_heavy_modules()
            if self._own_instruments or not self.instruments.devices:
                sim_world.load(self)  # the vials as the last process left them
                await self.instruments.start()
        except BaseException:
            self._lock.release()
            raise
        self.startup_safe_state_errors = await self.instruments.safe_state_all()
        found = recovery.close_unfinished(self.store, self.bench_id,
                                          requeue_unstarted=self.requeue_unstarted,
                                          restore_claims=self._restore_claims)
        self.interrupted_at_start = found.interrupted
        for run_id in found.interrupted:  # a kill may have cut a debit short
            self._sync_stock(run_id)
            with contextlib.suppress(Exception):  # and the samples it was making
                self.samples.sync(run_id, self.store.open(run_id).events())
        sim_world.follow_inventory(self)  # refills and counts made while it was down
        self.requeued_at_start = []
        for run_id in found.unstarted:
            try:
                await self.resume_run(run_id, operator="labctl", reason="requeued")
                self.requeued_at_start.append(run_id)
            except Exception:  # one unreadable record must not keep the bench down
                log.exception("run %s: could not queue it again", run_id)
                with contextlib.suppress(Exception):
                    self.store.index.upsert_run(run_id, status="interrupted")
        self._worker = asyncio.create_task(self.runs.serve(self._execute, self._crashed),
                                           name=f"bench-{self.bench_id}")
        self._started = True
        self._publish({"event": "bench_started", "bench_id": self.bench_id,
                       "safe_state_errors": self.startup_safe_state_errors})

    async def close(self) -> None:
        """Abort the current run (safe state), drop the queue, close the instruments."""
        for t in list(self.queue):
            with contextlib.suppress(Exception):
                await self.cancel(t.run_id)
        for cur in list(self.runs.running):
            if cur.executor is not None and not cur.machine.final:
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
        if self._closing:  # records being closed in threads: before the stores close
            await asyncio.gather(*list(self._closing), return_exceptions=True)
        if self._own_instruments:
            if self._started:
                self._world_saver.write(self._world_saver.snapshot())
            await self.instruments.close()
        self.analysis_worker.close()
        self.store.close()
        self.stock.close()
        self.samples.close()
        self._started = False
        self._lock.release()

    async def __aenter__(self) -> Bench:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- planning ------------------------------------------------------------------------
    def plan(self, recipe: RecipeSource, parameters: Mapping[str, Any] | None = None,
             *, base_dir: Path | None = None, stock: Stock | None = None) -> Plan:
        """Validate a recipe (a path, JSON text, a dict or a Recipe) against this bench; the
        Plan, or labctl.recipe's RecipeError listing every fault. Planned at the scale this
        bench really runs (a --time-scale override), so estimates count wall time there."""
        from labctl.estimates import at_time_scale

        return build_plan(recipe, dict(parameters or {}),
                          at_time_scale(self.cfg, self.time_scale), base_dir=base_dir,
                          stock=stock)

    def stock_view(self) -> Stock:
        """What a new run is planned from: the persisted levels less what active runs will
        still take, and the vials holding live samples as they hold them."""
        levels, reserved = self.stock.for_plan(self.runs.active())
        return {**levels, **self.samples.vial_levels()}, reserved

    # -- submitting ----------------------------------------------------------------------
    async def submit(self, plan_or_recipe: Plan | RecipeSource,
                     parameters: Mapping[str, Any] | None = None, **how: Any) -> str:
        """Validate (unless given a Plan), create the run record, queue it; the run id.
        The options are accept()'s."""
        return (await self.accept(plan_or_recipe, parameters, **how)).run_id

    async def accept(
        self,
        plan_or_recipe: Plan | RecipeSource,
        parameters: Mapping[str, Any] | None = None,
        *,
        instigator: str | dict[str, Any] | None = None,
        request: dict[str, Any] | None = None,
        run_id: str | None = None,
        source: str | None = None,
        priority: int = 0,
        command: CommandReply | None = None,
    ) -> Submitted:
        """Validate (unless given a Plan), create the run record, queue it (higher
        `priority` first); its run id and queue position. `command`: the id of the command
        that asked for this run and how to answer it (run id, queue position -> reply);
        the reply is recorded with the run's index row, in one transaction
        (labctl.bench.dedup)."""
        params = dict(parameters or {})
        if source is None and isinstance(plan_or_recipe, Path):
            source = str(plan_or_recipe)
        async with self._submitting:  # one submit at a time: each checks the ones before
            if isinstance(plan_or_recipe, Plan):
                plan = plan_or_recipe
                vessels, inputs = plan_claims(plan, params)
            else:  # sample ids to their vessels, free vials assigned (labctl.bench.samples)
                bound, inputs, vessels = self.samples.bind(plan_or_recipe, params,
                                                           self.runs.active())
                # validated in a thread (a large recipe must not hold up e-stop); the checks
                # below run on the loop again, against the runs active by then
                plan = await asyncio.to_thread(self.plan, plan_or_recipe, bound,
                                               stock=self.stock_view())
            active = self.runs.active()
            self.samples.check_free(plan, active)  # before anything is created
            check_plans(self.stock, [plan], active, self.samples.vial_levels())
            info = runprov.recipe_info(plan)
            run_id = run_id or new_run_id(info["name"])
            who = prov.instigator_info(instigator, request)
            context = self._context(run_id, plan, params, who, source)
            uses = self.stock.step_uses(plan)
            context["inventory"] = self.stock.provenance(uses)
            context["samples"] = self.samples.provenance(inputs)
            ticket = self._ticket(RunRecord(self.store.data_dir / run_id), plan, params, who,
                                  request, context)
            ticket.priority = int(priority)
            # The first journal lines are kept here and written with the folder: the run
            # exists, for a crash and for everybody else, once accept() below has returned.
            first = ticket.unwritten = [journal_line(1, "run_created", {
                "run_id": run_id, "recipe": info, "parameters": jsonable(params),
                "instigator": who, "bench_id": self.bench_id})]
            await ticket.machine.request("validate")
            await ticket.machine.request("validated")
            ticket.unwritten = None
            documents = {
                "recipe.json": runprov.plan_document(plan, params, source),
                "metadata.json": prov.build_metadata(context=context, events=first,
                                                     data_files=[]),
            }
            row = {"recipe": info["name"], "version": _str(info.get("version")),
                   "sha256": info.get("sha256"), "status": "queued",
                   "bench_id": self.bench_id,
                   "instigator": f"{who.get('kind')}:{who.get('id')}",
                   "request_id": _str(who.get("request_id")),
                   "fidelity": context["fidelity"]["level"],
                   "created": context["times"]["created"],
                   "path": str(ticket.record.folder)}
            position = self.runs.position_if_added(ticket.priority)
            answer = None if command is None else (command.id,
                                                   command.reply(run_id, position))
            # the disk work (one fsync per file, the inventory's and the index's commits) in
            # a thread: e-stop, status and the runs in progress do not wait for the disk.
            # A thread cannot be stopped: once it has begun, the run exists on disk (queued,
            # the command's reply kept), so a caller that gives up meanwhile (the TUI's
            # timeout, a shutdown) must not leave it out of the queue: the run is admitted
            # first, the cancellation raised after.
            cancelled = await _finish_even_if_cancelled(asyncio.ensure_future(
                asyncio.to_thread(self._write_accepted, ticket, first, documents, uses,
                                  inputs, row, answer)))
            # the fsyncs of the folder and of the stock and samples claims after the answer,
            # before the run may start (_execute) and its copy in the index is dropped
            ticket.syncing = asyncio.ensure_future(asyncio.to_thread(
                self._sync_accepted, ticket.record, uses=bool(uses), inputs=bool(inputs)))
            self.samples.claim(run_id, vessels, inputs)
            for ev in first[1:]:
                self._publish(ev)
            self._enqueue(ticket)
            if cancelled:
                raise asyncio.CancelledError
        return Submitted(run_id=run_id, queue_position=position)

    def _write_accepted(self, ticket: RunTicket, events: list[dict[str, Any]],
                        documents: dict[str, Any], uses: dict[str, Any],
                        inputs: dict[str, str], row: dict[str, Any],
                        answer: tuple[str, dict[str, Any]] | None) -> None:
        """Write a submitted run: its folder (journal, recipe.json, metadata.json), its
        planned stock uses and sample inputs, then its index row with the command's reply
        and the folder's files.
        The index row is the commit point: before it, a crash leaves a folder no start-up
        queues (the submit was not answered, and a redelivery makes the run); after it, the
        run is queued again at start-up and a redelivered command gets its reply. The
        folder is not fsync'd here: the same bytes are in that commit, the folder is synced
        once the reply is out (accept) and rebuilt from the index at start-up if a power
        cut took it (labctl.bench.recovery). The stock the run will take (the inventory's
        reservation) and the samples it takes are committed the same way: without their
        fsyncs, with a copy in that commit. One durable write before the answer, not six."""
        files = first_files(events, documents)
        RunRecord.create_files(self.store.data_dir, ticket.run_id, files, durable=False)
        self.stock.store.plan_run(ticket.run_id, uses, durable=False)
        if inputs:
            self.samples.store.note_inputs(ticket.run_id, inputs, durable=False)
        claims = {"uses": uses, "inputs": inputs} if uses or inputs else None
        self.store.index.accept_run(ticket.run_id, row, answer, files, claims)

    def _sync_accepted(self, record: RunRecord, *, uses: bool, inputs: bool) -> None:
        """After the answer: what `_write_accepted` left unsynced reaches the disk."""
        record.sync()
        if uses:
            self.stock.store.sync()
        if inputs:
            self.samples.store.sync()

    def _restore_claims(self, run_id: str, claims: dict[str, Any]) -> bool:
        """Put back a queued run's stock reservation and sample inputs from the index's copy
        where a power cut took them (labctl.bench.recovery.restore_submitted); True when
        anything had to be written."""
        restored = False
        uses = claims.get("uses") or {}
        if uses and not self.stock.store.planned(run_id):
            self.stock.store.plan_run(run_id, uses)  # rows as JSON lists: unpacked alike
            restored = True
        inputs = claims.get("inputs") or {}
        if inputs and not self.samples.store.inputs_of(run_id):
            self.samples.store.note_inputs(run_id, inputs)
            restored = True
        return restored

    def _ticket(self, record: RunRecord, plan: Plan, params: dict[str, Any],
                who: dict[str, Any], request: dict[str, Any] | None,
                context: dict[str, Any]) -> RunTicket:
        ticket: RunTicket

        def journal_transition(info: dict[str, Any]) -> None:
            if ticket.unwritten is not None:  # being submitted: written with the folder
                ticket.unwritten.append(journal_line(len(ticket.unwritten) + 1, "transition",
                                                     {"run_id": record.run_id, **info}))
                return
            ev = record.journal.append("transition", run_id=record.run_id, **info)
            self._publish(ev)

        ticket = RunTicket(run_id=record.run_id, plan=plan, record=record,
                           machine=RunMachine(journal=journal_transition), context=context,
                           parameters=params, instigator=who, request=request)
        ticket.done = asyncio.get_running_loop().create_future()
        ticket.claims = claims_of(plan, self.cfg)
        return ticket

    def _enqueue(self, ticket: RunTicket) -> None:
        position = self.runs.add(ticket)
        self._publish({"event": "queued", "run_id": ticket.run_id, "position": position})

    def queue_position(self, run_id: str) -> int | None:
        """0 = running now (or next), 1 = after that..."""
        return self.runs.position(run_id)

    def _context(self, run_id: str, plan: Plan, params: dict[str, Any], who: dict[str, Any],
                 source: str | None) -> dict[str, Any]:
        return runprov.run_context(self.cfg, self.instruments, run_id, plan, params, who,
                                   source)

    # -- running (called by the queue worker) ----------------------------------------------
    async def _execute(self, ticket: RunTicket) -> None:
        await ticket.synced()  # its folder on disk for good before any step
        if self.held:  # an e-stop came between its start and now: back to the queue
            self.runs.waiting.appendleft(ticket)
            return
        rec = ticket.record
        keeper = None
        if can_save(self.instruments.simulation):  # simulated in-process: keep its world
            keeper = ticket.keeper = WorldKeeper(self.instruments.simulation, rec.folder,
                                                 ticket.run_id)
        gate = None
        safe_state = self.instruments.safe_state_all
        if self.runs.max_concurrent > 1:  # others may run at once: wait for what steps touch
            self.board.register(ticket.run_id, ticket.claims, done=ticket.skip)
            gate = RunGate(self.board, ticket.run_id)

            async def safe_state() -> dict[str, str]:  # a fault safes this run's devices
                return await self._safe_state_of_run(ticket.run_id)
        ex = Executor(
            ticket.plan, self.instruments.devices, clock=self.instruments.clock, record=rec,
            machine=ticket.machine, safe_state_all=safe_state, gate=gate,
            emit=self._publish, prior_results=ticket.prior_results,
            analysis_worker=self.analysis_worker,
            time_basis="simulated" if self.cfg.bench.simulate else "wall",
            on_boundary=keeper.boundary if keeper is not None else None,
        )
        ticket.executor = ex
        # The index's commit in a thread, not awaited before the run starts: a starting run
        # does not hold up the event loop (the reply to the submit that queued it may be on
        # its way out), and nothing may come between the e-stop check above and the start.
        indexed = asyncio.ensure_future(asyncio.to_thread(
            self.store.index.upsert_run, ticket.run_id, status="running", started=utc_iso()))
        try:
            state = await ex.execute(skip=ticket.skip)
        finally:
            await asyncio.shield(indexed)  # before the record is closed: "running" first
        errors = list(ex.errors)
        if state == RunState.ABORTED and not errors:
            errors.append({"type": "Aborted", "message": ex.stop_reason or "aborted"})
        if ex.safe_state_errors:
            errors.append(runprov.safe_state_error(ex.safe_state_errors))
        await self._finish(ticket, state, errors)

    async def _safe_state_of_run(self, run_id: str) -> dict[str, str]:
        """Safe state for the devices this run holds and no other run holds (the others'
        runs go on); the errors by device."""
        names = self.board.devices_only_held_by(run_id)
        devices = self.instruments.devices
        errors: dict[str, str] = {}

        async def one(name: str) -> None:
            if name in devices:
                error = await safe_state_of(devices[name])
                if error is not None:
                    errors[name] = error

        await asyncio.gather(*(one(n) for n in names))
        return errors

    async def _crashed(self, ticket: RunTicket, exc: Exception) -> None:
        """A run whose execution raised (a bug): safe state, and it ends failed."""
        with contextlib.suppress(Exception):
            await self.instruments.safe_state_all()
        with contextlib.suppress(Exception):
            await self.board.finish(ticket.run_id)
        with contextlib.suppress(Exception):
            if ticket.machine.can("fail"):
                await ticket.machine.request("fail", error=f"internal error: {exc}")
        with contextlib.suppress(Exception):
            await self._finish(ticket, RunState.FAILED,
                               [{"type": type(exc).__name__, "message": str(exc)}])

    async def _finish(self, ticket: RunTicket, state: RunState,
                      errors: list[dict[str, Any]]) -> None:
        """Close the record (labctl.bench.provenance.close_record) and tell every waiter.
        What the run changed (stock, samples, the simulated world) is taken on the loop;
        the writing (journal's last line, metadata.json, result.json, the world, each
        fsync'd, and the index) in a thread, so e-stop, status and the other runs' device
        traffic do not wait for the disk. Until it is written, the run counts as closing:
        `wait` and `closed` wait for it. Cancelled meanwhile (the bench closing), it still
        completes, and the waiters are still told."""
        ex = ticket.executor
        self._sync_stock(ticket.run_id)
        self._sync_samples(ticket, final=True)
        world = self._world_saver.snapshot()
        ticket.keeper = None
        sim_world.trim_ledger(self, [t.keeper for t in self.runs.running])
        figures = list(ex.figures) if ex else []

        def close() -> tuple[RunState, dict[str, Any]]:
            self._world_saver.write(world)
            return runprov.close_record(
                ticket.record, bench_id=self.bench_id, state=state, plan=ticket.plan,
                context=ticket.context, parameters=ticket.parameters,
                instigator=ticket.instigator, errors=errors, figures=figures,
                index=self.store.index)

        closing = asyncio.ensure_future(asyncio.to_thread(close))
        self._closing.add(closing)
        closing.add_done_callback(functools.partial(self._closed, ticket))
        await asyncio.shield(closing)

    def _closed(self, ticket: RunTicket,
                closing: asyncio.Future[tuple[RunState, dict[str, Any]]]) -> None:
        self._closing.discard(closing)
        if closing.cancelled():
            return
        exc = closing.exception()
        if exc is not None:  # close_record records its own failures; this is a bug
            log.error("run %s: its record could not be closed: %s", ticket.run_id, exc)
            if ticket.done is not None and not ticket.done.done():
                ticket.done.set_exception(exc)
            return
        state, result = closing.result()
        self._publish({"event": "run_finished", "run_id": ticket.run_id, "status": str(state),
                       "result": result})
        if ticket.done is not None and not ticket.done.done():
            ticket.done.set_result(result)
        self.runs.forget_old()

    async def closed(self, run_id: str) -> None:
        """Once a run that has ended has its record closed (result.json written); at once
        for a run still going, queued, or unknown."""
        t = self.tickets.get(run_id)
        if t is None or t.done is None or t.done.done() or not t.machine.final:
            return
        with contextlib.suppress(Exception):
            await asyncio.shield(t.done)

    # -- control -------------------------------------------------------------------------
    def _running(self, trigger: str, run_id: str | None = None) -> list[Executor]:
        """The executors of the running runs (`run_id`: that one only)."""
        out = [t.executor for t in self.runs.running
               if t.executor is not None and not t.machine.final
               and (run_id is None or t.run_id == run_id)]
        if not out:
            raise NoRunInProgress(trigger if run_id is None else f"{trigger} {run_id}")
        return out

    async def _each(self, trigger: str, run_id: str | None, act: Any) -> RunState:
        """Do `act(executor)` on one running run or on all of them; the first's state.
        A run that cannot (paused already...) is skipped when acting on all."""
        exs = self._running(trigger, run_id)
        if len(exs) == 1:
            return await act(exs[0])  # type: ignore[no-any-return]
        states = await asyncio.gather(*(act(e) for e in exs), return_exceptions=True)
        for st in states:
            if not isinstance(st, BaseException):
                return st  # type: ignore[no-any-return]
        raise states[0]  # type: ignore[misc]

    async def pause(self, run_id: str | None = None) -> RunState:
        """Pause one running run, or every one (None)."""
        return await self._each("pause", run_id, lambda e: e.pause())

    async def resume(self, run_id: str | None = None) -> RunState:
        """Resume a paused run (None: every paused one); after an e-stop, release the held
        queue."""
        live = [t for t in self.runs.running if not t.machine.final]
        if self.held and not live:
            self.runs.release()
            self._publish({"event": "queue_released"})
            return RunState.IDLE
        return await self._each("resume", run_id, lambda e: e.resume())

    async def abort(self, run_id: str | None = None) -> RunState:
        """Abort one running run (its devices safe), or every one (None)."""
        return await self._each("abort", run_id,
                                lambda e: e.abort(reason="abort requested by the operator"))

    async def estop(self) -> RunState:
        """Every device safe at once; the current run ends aborted; the queue is held.
        With no run going, a device that failed its safe state is published
        (`safe_state_done` with its error) and kept in `estop_safe_state_errors`."""
        self.runs.hold()
        live = [t.executor for t in self.runs.running
                if t.executor is not None and not t.machine.final]
        if len(live) == 1 and self.runs.max_concurrent == 1:
            return await live[0].estop()
        if live:  # every device at once, while every run is stopped
            every = asyncio.ensure_future(self.instruments.safe_state_all())
            states = await asyncio.gather(*(e.estop(bench_safe_state=every) for e in live),
                                          return_exceptions=True)
            self.estop_safe_state_errors = await every
            return next((s for s in states if isinstance(s, RunState)), RunState.ABORTED)
        self._publish({"event": "estop", "bench_id": self.bench_id})
        self.estop_safe_state_errors = await self.instruments.safe_state_all()
        self._publish({"event": "safe_state_done", "bench_id": self.bench_id,
                       "reason": "estop", "errors": self.estop_safe_state_errors})
        return RunState.IDLE

    def set_priority(self, run_id: str, priority: int) -> int | None:
        """A queued run's new priority; its new queue position."""
        if self.runs.reprioritise(run_id, priority) is None:
            raise NothingToResume(f"run {run_id} is not queued")
        pos = self.queue_position(run_id)
        self._publish({"event": "queued", "run_id": run_id, "position": pos,
                       "priority": int(priority)})
        return pos

    async def cancel(self, run_id: str) -> None:
        """Withdraw a queued run (the running one is stopped with abort)."""
        t = self.runs.withdraw(run_id)
        if t is not None:
            await t.synced()  # its folder on disk for good before its journal grows
            await t.machine.request("abort", reason="cancelled before it started")
            await t.machine.request("stopped", reason="cancelled")
            await self._finish(t, RunState.ABORTED, [
                {"type": "Cancelled", "message": "cancelled before it started"}])
            self.store.index.upsert_run(run_id, status="cancelled")
            return
        for t in self.runs.running:
            if t.run_id == run_id:
                raise IllegalTransition("cancel", t.machine.state, ["abort"])
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
        running: list[dict[str, Any]] = []
        for t in list(self.runs.running):
            one = {"run_id": t.run_id, "recipe": runprov.recipe_info(t.plan),
                   "state": str(t.machine.state), "instigator": t.instigator,
                   "priority": t.priority,
                   "holds": [c.to_dict() for c in self.board.holds(t.run_id)]}
            if t.run_id in self.board.waiting:  # started, its next step waits its turn
                one["waiting"] = {"step": self.board.waiting[t.run_id],
                                  "for": self.board.blockers(t.run_id)}
            if t.executor is not None:
                one["progress"] = t.executor.progress()
            running.append(one)
        run = running[0] if running else None
        state = str(run["state"]) if run is not None else ("held" if self.held else "idle")
        return {
            "bench_id": self.bench_id,
            "state": state,
            "simulated": bool(self.cfg.bench.simulate),
            "run": run,
            "running": running,
            "concurrency": self.runs.max_concurrent,
            "queue": [{"run_id": t.run_id, "recipe": runprov.recipe_info(t.plan)["name"],
                       "position": self.queue_position(t.run_id), "priority": t.priority}
                      for t in self.queue],
            "devices": dict(self.device_status),
            "time": utc_iso(),
        }

    async def poll_devices(self) -> dict[str, dict[str, Any]]:
        """Ask every device for its status (between commands of a run: links are locked
        per exchange)."""
        async def one(name: str, dev: Device) -> None:
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

    def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """Every event of this bench from now on (journal lines of runs, queue changes)."""
        return self._events.subscribe()

    def _publish(self, ev: dict[str, Any]) -> None:
        t = self.tickets.get(str(ev.get("run_id")))
        if t is not None:
            self.stock.observe(ev, t.record.events)
            if ev.get("event") == "step_finished" and getattr(
                    t.plan.step(str(ev.get("step"))), "moves_material", False):
                self._sync_samples(t)
        self._events.publish(ev)

    def _sync_samples(self, ticket: RunTicket, *, final: bool = False) -> None:
        """Samples the run made or used, from its journal (labctl.bench.samples)."""
        try:
            made = self.samples.sync(ticket.run_id, ticket.record.events(), ticket.plan,
                                     final=final)
            if final:
                ticket.context.setdefault("samples", {"inputs": {}})["made"] = made
                self.samples.release(ticket.run_id)
        except Exception:  # the journal keeps what the run did for the next sync
            log.exception("run %s: sample bookkeeping failed", ticket.run_id)

    def _sync_stock(self, run_id: str) -> None:
        """Apply the debits a run's journal justifies (each once; labctl.bench.stock)."""
        try:
            self.stock.sync(run_id, self.store.open(run_id).events())
        except Exception:  # the journal keeps them for the next reconciliation
            log.exception("run %s: inventory reconciliation failed", run_id)

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.store.list(limit=limit)

    def seen_command(self, command_id: str) -> dict[str, Any] | None:
        return self.commands.seen(command_id)

    def remember_command(self, command_id: str, reply: dict[str, Any]) -> None:
        self.commands.remember(command_id, reply)

    # -- resuming an interrupted run (labctl.bench.resume) ---------------------------------
    def check_resume(self, run_id: str, *, accept_in_doubt: Collection[str] = (),
                     redo: Collection[str] = ()) -> resuming.ResumeCheck:
        """Everything resume needs to know, touching no device and writing nothing.
        Raises NothingToResume, InDoubtError or RecipeError."""
        return resuming.check_resume(
            self.store, run_id, self.plan, active=self.runs.active(),
            simulate=bool(self.cfg.bench.simulate), accept_in_doubt=accept_in_doubt,
            redo=redo)

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
        check = self.check_resume(run_id, accept_in_doubt=accept_in_doubt, redo=redo)
        who = operator or "unknown"
        rec, plan, doc = check.record, check.plan, check.document
        world = None
        if self.instruments.simulation is not None:  # simulated in this process
            saved = self._saved_world if self._world_from == run_id else None
            world = resuming.world_on_resume(rec, check.in_doubt, saved)
        skip = resuming.journal_decisions(check, accept_in_doubt=accept_in_doubt, redo=redo,
                                          operator=who, world=world)
        self._sync_stock(run_id)  # what the killed session took, and accepted steps
        meta = rec.read_json("metadata.json") or {}
        submitted = doc.get("parameters_submitted") or {}
        fresh = self._context(run_id, plan, submitted, meta.get("instigator") or {},
                              doc.get("source"))
        context = resuming.resumed_context(meta, fresh, reason=reason, operator=who, skip=skip,
                                           time_scale=self.instruments.clock.time_scale,
                                           world=world)
        ticket = self._ticket(rec, plan, submitted, context.get("instigator") or {}, None,
                              context)
        ticket.skip = skip
        ticket.resumed = True
        ticket.prior_results = resuming.prior_results(check)
        rec.journal.append("resumed", run_id=run_id, operator=who, skip=sorted(skip),
                           in_doubt=check.in_doubt, reason=reason, sim_world=world)
        await ticket.machine.request("validate")
        await ticket.machine.request("validated")
        self.store.index.upsert_run(run_id, status="queued")
        self._enqueue(ticket)
        return run_id


def _str(v: object) -> str | None:
    return None if v is None else str(v)


def _preload_heavy_modules() -> None:
    """Import what runs will need (numpy, scipy, the analyses, data files) before any
    device is connected: an import in the middle of a run blocks the event loop for a
    second, which at a high simulated time scale is long enough to trip a hotplate's
    watchdog."""
    import labctl.actions
    import labctl.analysis.registry
    import labctl.bdf  # noqa: F401


async def _finish_even_if_cancelled(work: asyncio.Future[None]) -> bool:
    """Wait for `work` to end even when the caller is cancelled meanwhile (each
    cancellation is absorbed until it has); whether one came, for the caller to raise once
    it has put what `work` did in order. What `work` raised is raised."""
    cancelled = False
    while True:
        try:
            await asyncio.shield(work)
            return cancelled
        except asyncio.CancelledError:
            if not work.done():
                cancelled = True
                continue
            if work.cancelled():
                raise
            work.result()  # raises what the work raised
            return True

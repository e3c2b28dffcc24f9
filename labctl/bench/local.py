"""The bench service protocol (labctl.protocol.BenchService) over an in-process `Bench`,
and what the MQTT agent needs besides (results, run owners, answered commands).

This is where the bench's own exceptions become a labctl.problems.BenchError, once, for
every front end: an invalid recipe (RecipeError) is `invalid_recipe` with every issue, a
command the run's state does not allow (IllegalTransition) is `refused`, an unknown or
unresumable run (NothingToResume) is `not_found`.

A recipe named by a string is a bare name in the bench's recipe folder, never a path: a
recipe arriving over MQTT is data, or such a name.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from labctl.bench import sim_world
from labctl.bench.dedup import CommandReply
from labctl.bench.errors import NothingToResume
from labctl.bench.service import Bench
from labctl.bench.stock import check_plans
from labctl.problems import BenchError, Issue
from labctl.protocol import Control, RecipeInput, RequestInput, Submitted
from labctl.recipe.issues import RecipeError
from labctl.recipe.loading import RecipeSource
from labctl.recipe.plan import Plan
from labctl.run_machine import IllegalTransition
from labctl.store import utc_iso

#: in-process event keys that are not the EventPayload's `data`
EVENT_ENVELOPE = ("t", "ts", "time", "type", "event", "run_id", "step", "step_id", "bench_id")


def resolve_recipe_ref(recipes_dir: Path, name: str) -> Path:
    """`name` or `name.json` inside `recipes_dir`; BenchError for anything else
    (separators, `..`, symlinks leading out of the folder, unknown names)."""
    if not name or "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise BenchError("recipe_not_found", f"recipe_ref {name!r} must be a bare recipe "
                         "name (no paths)", path="recipe_ref")
    base = recipes_dir.resolve()
    for candidate in (base / name, base / f"{name}.json"):
        real = candidate.resolve()
        if real.is_file() and real.parent == base:
            return real
    known = sorted(p.stem for p in base.glob("*.json")) if base.is_dir() else []
    raise BenchError("recipe_not_found", f"no recipe {name!r} in the bench's recipe folder"
                     f" (known: {', '.join(known) or 'none'})", path="recipe_ref")


def refusal(exc: Exception) -> BenchError | None:
    """The BenchError a bench exception stands for (None: not a refusal, a bug)."""
    if isinstance(exc, BenchError):
        return exc
    if isinstance(exc, RecipeError):
        return BenchError.invalid(exc.issues)
    if isinstance(exc, IllegalTransition):
        return BenchError("refused", str(exc))
    if isinstance(exc, NothingToResume):
        return BenchError("not_found", str(exc))
    return None


def owner_of(instigator: object) -> str | None:
    """The broker username that submitted a run over MQTT (None: started on the bench)."""
    if isinstance(instigator, dict) and instigator.get("via") == "mqtt":
        owner = instigator.get("owner") or instigator.get("id")
        return str(owner) if owner else None
    return None


def _index_owner(row: Mapping[str, Any]) -> str | None:
    who = str(row.get("instigator") or "")
    return who[len("ai:"):] if who.startswith("ai:") else None


def event_document(bench_id: str, seq: int, event: Mapping[str, Any]) -> dict[str, Any]:
    """An in-process bench event as an EventPayload document (labctl.mqtt.payloads)."""
    return {
        "bench_id": bench_id,
        "seq": seq,
        "time": str(event.get("t") or event.get("time") or utc_iso()),
        "type": str(event.get("type") or event.get("event") or "event"),
        "run_id": event.get("run_id"),
        "step": event.get("step") or event.get("step_id"),
        "data": {k: v for k, v in event.items() if k not in EVENT_ENVELOPE},
    }


class LocalService:
    """BenchService over a `Bench` in this process (its recipe folder for named recipes)."""

    def __init__(self, bench: Bench, recipes_dir: str | Path):
        self.bench = bench
        self.recipes_dir = Path(recipes_dir)
        #: one submit at a time from planning to queue: a submit's free vials are chosen
        #: while it plans, so two planned side by side chose the same vial and the second
        #: was refused as claimed although others were free
        self._admitting = asyncio.Lock()

    # -- the protocol ---------------------------------------------------------------------
    def _source(self, recipe: RecipeInput) -> tuple[RecipeSource, Path, str | None]:
        """What to plan, where its includes resolve, and the source to record."""
        if isinstance(recipe, Path):
            return recipe, recipe.parent, str(recipe)
        if isinstance(recipe, str):
            return resolve_recipe_ref(self.recipes_dir, recipe), self.recipes_dir, None
        # includes of an inline recipe resolve inside the recipe folder, nowhere else
        return dict(recipe), self.recipes_dir, None

    def _plan(self, recipe: RecipeInput, parameters: Mapping[str, Any] | None, *,
              check_stock: bool = True) -> Plan:
        """`check_stock`: also refuse a plan the persisted stock cannot serve. A submit
        leaves it to `Bench.accept`, which checks it on the loop against the runs active by
        then (the same refusal, BenchError invalid_recipe); checking here as well read the
        stock and the live samples from SQLite twice per submit."""
        source, base_dir, _ = self._source(recipe)
        try:
            # sample ids to their vessels, omitted vials to free ones (labctl.bench.samples)
            bound, _inputs, _vessels = self.bench.samples.bind(
                source, dict(parameters or {}), self.bench.runs.active(), base_dir)
            # from the persisted inventory, less what queued runs will take, and the
            # vials holding samples as they are
            plan = self.bench.plan(source, bound, base_dir=base_dir,
                                   stock=self.bench.stock_view())
            if check_stock:
                check_plans(self.bench.stock, [plan], self.bench.runs.active(),
                            self.bench.samples.vial_levels())
            return plan
        except RecipeError as exc:
            raise BenchError.invalid(exc.issues) from None

    async def submit(self, recipe: RecipeInput, parameters: Mapping[str, Any] | None = None,
                     /, *, request: RequestInput = None, priority: int = 0,
                     instigator: str | dict[str, Any] | None = None,
                     command: CommandReply | None = None) -> Submitted:
        # validate before anything is created; in a thread, so that the event loop (e-stop,
        # status, the run in flight) does not wait for a large recipe's validation
        async with self._admitting:
            plan = await asyncio.to_thread(functools.partial(self._plan, recipe, parameters,
                                                             check_stock=False))
            _, _, source = self._source(recipe)
            req = {"id": request} if isinstance(request, str) else (
                dict(request) if request is not None else None)
            submitted: Submitted = await self._call(lambda: self.bench.accept(
                plan, dict(parameters or {}), instigator=instigator, request=req,
                source=source, priority=priority, command=command))
        return submitted

    async def plan(self, recipe: RecipeInput, parameters: Mapping[str, Any] | None = None,
                   /) -> list[Issue]:
        try:
            await asyncio.to_thread(self._plan, recipe, parameters)
        except BenchError as exc:
            if exc.code != "invalid_recipe":
                raise
            return exc.issues
        return []

    async def control(self, command: Control, run_id: str | None = None, /) -> None:
        bench = self.bench
        if command == "cancel":
            if run_id is None:
                raise BenchError("bad_payload", "cancel needs a run id", path="run_id")
            await self._call(lambda: bench.cancel(run_id))
            return
        if command == "estop":
            await self._call(bench.estop)
            return
        act: dict[str, Callable[[str | None], Awaitable[object]]] = {
            "pause": bench.pause, "resume": bench.resume, "abort": bench.abort}
        await self._call(lambda: act[command](run_id))

    async def _call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await fn()
        except Exception as exc:
            err = refusal(exc)
            if err is None:
                raise
            raise err from None

    def snapshot(self) -> dict[str, Any]:
        """status() without waiting: StatusPayload fields (without bench_id and time)."""
        st = self.bench.status()
        run = st.get("run") or {}
        running = []
        for r in st.get("running") or []:
            prog = r.get("progress") or {}
            running.append({
                "run_id": r.get("run_id"), "recipe": (r.get("recipe") or {}).get("name"),
                "state": r.get("state"), "priority": r.get("priority"),
                "steps": [s.get("id") for s in prog.get("steps") or []],
                "progress": prog.get("fraction"), "eta_s": prog.get("eta_s"),
                "owner": owner_of(r.get("instigator"))})
        progress = run.get("progress") or {}
        steps = progress.get("steps") or []
        return {
            "state": st.get("state", "unknown"),
            "run_id": run.get("run_id"),
            "step": steps[0].get("id") if steps else None,
            "steps": [s.get("id") for s in steps],
            "progress": progress.get("fraction"),
            "eta_s": progress.get("eta_s"),
            "queue": [q["run_id"] for q in st.get("queue") or []],
            "running": running,
            "devices": st.get("devices") or {},
            "simulated": st.get("simulated"),
            "recipe": (run.get("recipe") or {}).get("name"),
            "owner": owner_of(run.get("instigator")) if run else None,
        }

    async def status(self) -> dict[str, Any]:
        return {"bench_id": self.bench.bench_id, "time": utc_iso(), **self.snapshot()}

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        seq = 0
        async for ev in self.bench.subscribe():
            seq += 1
            yield event_document(self.bench.bench_id, seq, ev)

    async def runs(self, limit: int = 50, /) -> list[dict[str, Any]]:
        return self.list_runs(limit)

    # -- what the MQTT agent needs besides ------------------------------------------------
    async def inventory(self, action: str, *, vessel: str | None = None,
                        material: str | None = None, amount: str | None = None,
                        lot: str | None = None, who: str = "") -> dict[str, Any]:
        """Levels of the persisted inventory, after a refill or set (who may: the adapter's
        to decide — the MQTT agent lets operators only). BenchError on bad input."""
        from labctl.store.inventory import InventoryError

        stock = self.bench.stock
        try:
            if action in ("refill", "set"):
                if not vessel or not amount or (action == "set" and not material):
                    need = "vessel, material and amount" if action == "set" else (
                        "vessel and amount")
                    raise BenchError("bad_payload", f"inventory {action} needs {need}",
                                     path="vessel" if not vessel else "amount")
                before = sim_world.levels_of(self.bench, vessel)
                if action == "refill":
                    await asyncio.to_thread(stock.refill, vessel, amount, lot=lot, who=who)
                else:
                    await asyncio.to_thread(stock.set, vessel, str(material), amount,
                                            lot=lot, who=who)
                sim_world.follow_refill(self.bench, vessel, before)
            elif action != "show":
                raise BenchError("bad_payload", f"unknown inventory action {action!r}",
                                 path="action")
        except InventoryError as exc:
            raise BenchError("refused", str(exc), path="vessel") from None
        return stock.show()

    async def samples(self, action: str, sample_id: str | None = None
                      ) -> list[dict[str, Any]]:
        from labctl.store.samples import SampleError

        store = self.bench.samples.store
        if action == "list":
            return store.list_samples()
        if action != "show" or not sample_id:
            raise BenchError("bad_payload", "samples show needs sample_id", path="sample_id")
        try:
            s = store.get(sample_id)
        except SampleError as exc:
            raise BenchError("not_found", str(exc), path="sample_id") from None
        s["chain"] = store.chain(s["id"])
        return [s]

    def list_runs(self, limit: int) -> list[dict[str, Any]]:
        """Newest first; each row names its `owner` (the MQTT sender that submitted it,
        None for runs started on the bench itself)."""
        rows = [dict(r) for r in self.bench.list_runs(limit)]
        for row in rows:
            row["owner"] = _index_owner(row)
        return rows

    async def poll_devices(self) -> None:
        """Refresh the device readings that `status()` reports."""
        await self.bench.poll_devices()

    @staticmethod
    def is_final(event: Mapping[str, Any]) -> str | None:
        """The run id when `event` (an EventPayload document) says a run has ended."""
        if event.get("type") == "run_finished":
            run_id = event.get("run_id")
            return str(run_id) if run_id else None
        return None

    def result(self, run_id: str) -> dict[str, Any] | None:
        """ResultPayload fields (without bench_id) of an ended run."""
        doc = self.bench.result(run_id)
        if doc is None:
            return None
        instigator = doc.get("instigator") or {}
        out = {k: v for k, v in doc.items() if k not in ("schema", "bench_id", "record")}
        out["request"] = instigator.get("request")
        out["provenance"] = {
            "record": doc.get("record"),
            "recipe": doc.get("recipe"),
            "parameters": doc.get("parameters"),
            "instigator": instigator,
            "started": doc.get("started"),
            "ended": doc.get("ended"),
            "in_doubt": doc.get("in_doubt"),
            "metadata": "metadata.json in the record folder",
        }
        return out

    def run_owner(self, run_id: str | None) -> tuple[str, str | None] | None:
        """(run id, owner) of a queued or running run (`None`: the one running now); None
        when there is no such run."""
        bench = self.bench
        if run_id is None:
            cur = bench.current
            if cur is None or cur.machine.final:
                return None
            return cur.run_id, owner_of(cur.instigator)
        ticket = bench.tickets.get(run_id)
        if ticket is not None:
            return run_id, owner_of(ticket.instigator)
        row = bench.store.index.get_run(run_id)
        if row is None:
            return None
        return run_id, _index_owner(row)

    def seen_command(self, command_id: str) -> dict[str, Any] | None:
        return self.bench.commands.seen(command_id)

    def remember_command(self, command_id: str, reply: dict[str, Any]) -> None:
        self.bench.commands.remember(command_id, reply)

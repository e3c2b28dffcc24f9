"""The MQTT agent's view of labctl.bench.Bench (the BenchPort adapter), and the recipe
folder rule: a recipe arriving over MQTT is data, or the bare name of a recipe file inside
the bench's recipe folder; never a path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from labctl.mqtt.payloads import Issue
from labctl.mqtt.port import CommandRefused, RecipeSource, Submitted


def resolve_recipe_ref(recipes_dir: Path, name: str) -> Path:
    """`name` or `name.json` inside `recipes_dir`; CommandRefused for anything else
    (separators, `..`, symlinks leading out of the folder, unknown names)."""
    if not name or "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise CommandRefused("recipe_not_found", f"recipe_ref {name!r} must be a bare recipe "
                             "name (no paths)", path="recipe_ref")
    base = recipes_dir.resolve()
    for candidate in (base / name, base / f"{name}.json"):
        real = candidate.resolve()
        if real.is_file() and real.parent == base:
            return real
    known = sorted(p.stem for p in base.glob("*.json")) if base.is_dir() else []
    raise CommandRefused("recipe_not_found", f"no recipe {name!r} in the bench's recipe folder"
                         f" (known: {', '.join(known) or 'none'})", path="recipe_ref")


def _owner_of(instigator: Any) -> str | None:
    """The broker username that submitted a run over MQTT (None: started on the bench)."""
    if isinstance(instigator, dict) and instigator.get("via") == "mqtt":
        owner = instigator.get("owner") or instigator.get("id")
        return str(owner) if owner else None
    return None


def _issues(exc: Exception) -> list[Issue]:
    found = getattr(exc, "issues", None) or []
    out = [Issue(path=str(getattr(i, "path", "") or ""), message=str(getattr(i, "message", i)))
           for i in found]
    return out or [Issue(path="", message=str(exc))]


class BenchServicePort:
    """BenchPort over an in-process `labctl.bench.Bench`."""

    def __init__(self, bench: Any, recipes_dir: str | Path):
        self.bench = bench
        self.recipes_dir = Path(recipes_dir)

    def _recipe(self, source: RecipeSource) -> Any:
        if source.recipe_ref is not None:
            return resolve_recipe_ref(self.recipes_dir, source.recipe_ref)
        return source.recipe

    def _plan(self, source: RecipeSource, parameters: dict[str, Any]) -> Any:
        from labctl.recipe.issues import RecipeError
        from labctl.recipe.validate import build_plan

        try:
            # includes of an inline recipe resolve inside the recipe folder, nowhere else
            return build_plan(self._recipe(source), parameters, self.bench.cfg,
                              base_dir=self.recipes_dir)
        except RecipeError as exc:
            issues = _issues(exc)
            raise CommandRefused("invalid_recipe", f"{len(issues)} problem(s): {issues[0].path}: "
                                 f"{issues[0].message}", path=issues[0].path or None,
                                 issues=issues) from None

    async def submit(self, source: RecipeSource, parameters: dict[str, Any], *,
                     instigator: dict[str, Any], request: dict[str, Any] | None,
                     command_id: str) -> Submitted:
        # validate before anything is created; in a thread, so that the event loop (e-stop,
        # status, the run in flight) does not wait for a large recipe's validation
        plan = await asyncio.to_thread(self._plan, source, parameters)
        run_id = await self.bench.submit(plan, parameters, instigator=instigator, request=request)
        pos = self.bench.queue_position(run_id)
        return Submitted(run_id=run_id, queue_position=0 if pos is None else pos)

    async def validate(self, source: RecipeSource, parameters: dict[str, Any]) -> list[Issue]:
        try:
            await asyncio.to_thread(self._plan, source, parameters)
        except CommandRefused as exc:
            if exc.code != "invalid_recipe":
                raise
            return exc.issues or []
        return []

    async def _control(self, fn: Any, *args: Any) -> None:
        from labctl.bench import NothingToResume
        from labctl.run_machine import IllegalTransition

        try:
            await fn(*args)
        except IllegalTransition as exc:
            raise CommandRefused("refused", str(exc)) from None
        except NothingToResume as exc:
            raise CommandRefused("not_found", str(exc)) from None

    async def pause(self) -> None:
        await self._control(self.bench.pause)

    async def resume(self) -> None:
        await self._control(self.bench.resume)

    async def abort(self) -> None:
        await self._control(self.bench.abort)

    async def estop(self) -> None:
        await self._control(self.bench.estop)

    async def cancel(self, run_id: str) -> None:
        await self._control(self.bench.cancel, run_id)

    def status(self) -> dict[str, Any]:
        st = dict(self.bench.status())
        run = st.get("run") or {}
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
            "devices": st.get("devices") or {},
            "simulated": st.get("simulated"),
            "recipe": (run.get("recipe") or {}).get("name"),
            "owner": _owner_of(run.get("instigator")) if run else None,
        }

    async def poll_devices(self) -> None:
        await self.bench.poll_devices()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        async for ev in self.bench.subscribe():
            yield ev

    def is_final(self, event: dict[str, Any]) -> str | None:
        if (event.get("event") or event.get("type")) == "run_finished":
            run_id = event.get("run_id")
            return str(run_id) if run_id else None
        return None

    def result(self, run_id: str) -> dict[str, Any] | None:
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

    def list_runs(self, limit: int) -> list[dict[str, Any]]:
        rows = [dict(r) for r in self.bench.list_runs(limit)]
        for row in rows:
            who = str(row.get("instigator") or "")
            row["owner"] = who[len("ai:"):] if who.startswith("ai:") else None
        return rows

    def run_owner(self, run_id: str | None) -> tuple[str, str | None] | None:
        bench = self.bench
        if run_id is None:
            cur = bench.current
            if cur is None or cur.machine.final:
                return None
            return cur.run_id, _owner_of(cur.instigator)
        ticket = bench.tickets.get(run_id)
        if ticket is not None:
            return run_id, _owner_of(ticket.instigator)
        row = bench.store.index.get_run(run_id)
        if row is None:
            return None
        who = str(row.get("instigator") or "")
        return run_id, (who[len("ai:"):] if who.startswith("ai:") else None)

    def seen_command(self, command_id: str) -> dict[str, Any] | None:
        return self.bench.seen_command(command_id)  # type: ignore[no-any-return]

    def remember_command(self, command_id: str, reply: dict[str, Any]) -> None:
        self.bench.remember_command(command_id, reply)


@contextlib.asynccontextmanager
async def open_bench_port(cfg: Any, *, data_dir: str | Path, time_scale: float | None = None,
                          bench_id: str | None = None) -> AsyncIterator[BenchServicePort]:
    """Start the bench (instruments, simulators on a simulated bench), yield its port,
    close it (safe state) on the way out."""
    from labctl.bench import Bench

    recipes_dir = Path(cfg.bench.recipes_dir)
    if not recipes_dir.is_absolute() and cfg.path:
        # relative to the working directory, like every other path of the config
        recipes_dir = Path.cwd() / recipes_dir
    # the agent acknowledged its queued submits: after a crash they run (labctl.bench)
    bench = Bench(cfg, data_dir=data_dir, time_scale=time_scale, requeue_unstarted=True)
    if bench_id:
        bench.bench_id = bench_id
    await bench.start()
    try:
        yield BenchServicePort(bench, recipes_dir)
    finally:
        await bench.close()

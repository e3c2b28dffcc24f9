"""The tenant loop: a labctl Bench answering FINALES2 requests.

For each pending request of a quantity+method one of its recipes declares: work out the
recipe parameters (labctl.finales.formulation), plan the run and check the stock; decide
whether this tenant should take it (below); check the request is still pending, journal,
reserve, run it on the Bench, check again, journal, post the result.

FINALES2 does not stop two tenants reserving one request, nor a second result, so:
- Every tenant able to answer a request orders the able tenants (FINALES's `GET /tenants/`:
  active, declaring the quantity+method, limitations admitting the request) the same way,
  by a hash of request id and tenant uuid. The first reserves at once, the k-th only when
  the request is still pending k claim-grace periods after it first saw it. A request a
  tenant cannot make is left to the others that could; when none could, the tenants
  declaring the quantity+method order themselves the same way and the first posts a
  failed result saying why.
- Before posting, the request's first result is read: when one exists, nothing is posted
  (ours from before a crash is taken as posted; another's makes ours superseded).
- Every step is journaled (fsync'd, labctl.finales.journal) before it is done, so a
  restart resumes each request where it stood: a reservation is followed up, a run that
  never started is submitted again, a run a crash interrupted gets a failed result, a
  result being posted is posted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from labctl.finales.capability import Capability, admits
from labctl.finales.client import FinalesClient, FinalesError
from labctl.finales.formulation import Refusal, parse_request, to_recipe_parameters
from labctl.finales.journal import Entry, TenantJournal
from labctl.finales.results import failed_data, measured_data, result_body
from labctl.finales.stock import StockLedger
from labctl.recipe import RecipeError
from labctl.store import utc_iso, write_json_atomic

log = logging.getLogger("labctl.finales")

#: the record a run gets of the request it answered and the result that was posted
LINK_FILE = "finales.json"
TENANTS_REFRESH_S = 15.0


class Tenant:
    def __init__(self, bench: Any, client: FinalesClient, caps: list[Capability], *,
                 tenant_uuid: str, poll_s: float = 1.0, claim_grace_s: float = 10.0,
                 max_active: int = 1):
        self.bench = bench
        self.client = client
        self.caps = {c.key: c for c in caps}
        self.tenant_uuid = tenant_uuid
        self.poll_s = poll_s
        self.claim_grace_s = claim_grace_s
        self.max_active = max(1, max_active)
        self.journal = TenantJournal(Path(bench.store.data_dir) / "finales"
                                     / f"{tenant_uuid}.jsonl")
        self.stock = StockLedger(bench.cfg)
        self.active: dict[str, asyncio.Task[None]] = {}
        self.first_seen: dict[str, float] = {}
        self.left_to_others: dict[str, str] = {}
        self._prepared: dict[str, tuple[Any, dict[str, Any]] | Refusal] = {}
        self._tenants: list[dict[str, Any]] = []
        self._tenants_at = -1e9

    # -- life ----------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Event) -> None:
        """Resume what the journal left open, then poll until `stop` is set."""
        await self.recover()
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                # a poll may wait out a dead server: a stop must not wait for it
                poll = asyncio.create_task(self.poll_once())
                await asyncio.wait({poll, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not poll.done():
                    poll.cancel()
                    with contextlib.suppress(BaseException):
                        await poll
                    break
                if not poll.cancelled() and poll.exception() is not None:
                    exc = poll.exception()
                    if not isinstance(exc, (FinalesError, httpx.HTTPError)):
                        raise exc  # type: ignore[misc]
                    log.warning("FINALES2 poll: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stopping), self.poll_s)
        finally:
            stopping.cancel()
            await self.close()

    async def close(self) -> None:
        for t in list(self.active.values()):
            t.cancel()
        for t in list(self.active.values()):
            with contextlib.suppress(BaseException):
                await t
        self.journal.close()

    async def idle(self) -> None:
        """Wait until no request is being worked on."""
        while self.active:
            await asyncio.gather(*self.active.values(), return_exceptions=True)

    async def recover(self) -> None:
        """Follow up every request the journal shows unfinished (see the module docstring)."""
        for e in self.journal.open_entries():
            cap = self.caps.get((e.quantity or "", e.method or ""))
            if cap is None:
                log.error("request %s: no recipe answers %s/%s any more; left %s", e.request_id,
                          e.quantity, e.method, e.state)
                continue
            self._spawn(e.request_id, self._resume(e, cap))

    # -- polling -------------------------------------------------------------------------
    async def poll_once(self) -> None:
        if len(self.active) >= self.max_active:
            return
        seen: set[str] = set()
        for cap in self.caps.values():
            pending = await self.client.pending_requests(cap.finales.quantity,
                                                         cap.finales.method)
            seen.update(str(r["uuid"]) for r in pending)
            for info in sorted(pending, key=lambda r: str(r.get("ctime"))):
                rid = str(info["uuid"])
                known = self.journal.entries.get(rid)
                if rid in self.active or (known is not None and known.state != "released"):
                    continue
                if len(self.active) >= self.max_active:
                    return
                await self._consider(info, cap)
        for memo in (self._prepared, self.first_seen, self.left_to_others):
            for rid in [r for r in memo if r not in seen and r not in self.active]:
                del memo[rid]  # no longer pending: forget what was worked out for it

    async def _consider(self, info: dict[str, Any], cap: Capability) -> None:
        rid = str(info["uuid"])
        method = cap.finales.method
        params = (info.get("request") or {}).get("parameters", {}).get(method)
        prepared = self._prepare(rid, cap, params)
        if not isinstance(prepared, Refusal):
            try:
                self.stock.check(prepared[0])
            except Refusal as r:
                prepared = r
        refusal = prepared if isinstance(prepared, Refusal) else None
        pool = await self._pool(cap, params, able=refusal is None)
        if refusal is not None and pool is None:
            if self.left_to_others.get(rid) != refusal.reason:
                log.info("request %s: left to other tenants (%s)", rid, refusal.reason)
            self.left_to_others[rid] = refusal.reason
            return
        assert pool is not None
        rank = sorted(pool, key=lambda u: hashlib.sha256(f"{rid}:{u}".encode()).hexdigest()
                      ).index(self.tenant_uuid)
        first = self.first_seen.setdefault(rid, time.monotonic())
        if time.monotonic() - first < rank * self.claim_grace_s:
            return
        if not await self._reserve(rid, cap):
            return
        self._spawn(rid, self._answer(rid, info, cap, prepared))

    def _prepare(self, rid: str, cap: Capability,
                 params: Any) -> tuple[Any, dict[str, Any]] | Refusal:
        """(plan, recipe parameters) or the Refusal; cached per request (requests do not
        change)."""
        if rid in self._prepared:
            return self._prepared[rid]
        out: tuple[Any, dict[str, Any]] | Refusal
        try:
            components, temp = parse_request(params if isinstance(params, dict) else {})
            rparams = to_recipe_parameters(cap.recipe, cap.finales, self.bench.cfg,
                                           components, temp)
            try:
                plan = self.bench.plan(cap.path, rparams)
            except RecipeError as exc:
                raise Refusal(_plan_code(exc), "; ".join(str(i) for i in exc.issues)) from exc
            out = (plan, rparams)
        except Refusal as r:
            out = r
        self._prepared[rid] = out
        return out

    async def _pool(self, cap: Capability, params: Any, *, able: bool) -> set[str] | None:
        """The tenant uuids that order themselves for this request (ours included); None
        when we cannot make it but another active tenant could."""
        now = time.monotonic()
        if now - self._tenants_at > TENANTS_REFRESH_S:
            try:
                self._tenants = await self.client.tenants()
                self._tenants_at = now
            except (FinalesError, httpx.HTTPError) as exc:
                log.warning("FINALES2 tenants: %s", exc)
        declaring: set[str] = set()
        admitting: set[str] = set()
        for t in self._tenants:
            if not t.get("is_active", True):
                continue
            for lim in t.get("limitations") or []:
                if (lim.get("quantity"), lim.get("method")) != cap.key:
                    continue
                declaring.add(str(t["tenant_uuid"]))
                if isinstance(params, dict) and admits(lim.get("limitations") or {}, params):
                    admitting.add(str(t["tenant_uuid"]))
        if able:
            return admitting | {self.tenant_uuid}
        if admitting - {self.tenant_uuid}:
            return None
        return declaring | {self.tenant_uuid}

    async def _reserve(self, rid: str, cap: Capability) -> bool:
        fresh = await self.client.get_request(rid)
        if fresh is None or fresh.get("status") != "pending":
            return False
        self.journal.record(rid, "reserving", quantity=cap.finales.quantity,
                            method=cap.finales.method)
        msg = (f"Reserved for {self.client.username} (labctl bench {self.bench.bench_id}, "
               f"tenant {self.tenant_uuid})")
        try:
            await self.client.set_request_status(rid, "reserved", msg)
        except FinalesError as exc:
            self.journal.record(rid, "released", note=f"reserve refused: {exc}")
            return False
        except httpx.HTTPError:  # the answer was lost: see what the server holds
            now = await self.client.get_request(rid)
            if now is None or now.get("status") != "reserved":
                self.journal.record(rid, "released", note="reserve unanswered, not reserved")
                return False
        self.journal.record(rid, "reserved")
        return True

    def _spawn(self, rid: str, coro: Any) -> None:
        task = asyncio.create_task(coro, name=f"finales-{rid}")
        self.active[rid] = task

        def done(t: asyncio.Task[None]) -> None:
            self.active.pop(rid, None)
            if not t.cancelled() and t.exception() is not None:
                log.error("request %s: %s", rid, t.exception())

        task.add_done_callback(done)

    # -- answering -----------------------------------------------------------------------
    async def _answer(self, rid: str, info: dict[str, Any], cap: Capability,
                      prepared: tuple[Any, dict[str, Any]] | Refusal) -> None:
        method = cap.finales.method
        params = info["request"]["parameters"][method]
        if isinstance(prepared, Refusal):
            data = failed_data(cap.finales.quantity, params.get("formulation"),
                               prepared.reason, prepared.code, f"refused:{rid}")
            await self._post(rid, cap, data, None)
            return
        plan, rparams = prepared
        run_id = await self.bench.submit(
            plan, rparams,
            instigator={"kind": "finales", "id": self.client.username,
                        "server": self.client.server, "tenant_uuid": self.tenant_uuid},
            request={"id": rid, "quantity": cap.finales.quantity, "method": method,
                     "parameters": params, "server": self.client.server},
            source=str(cap.path))
        self.stock.take(plan, run_id)
        self.journal.record(rid, "submitted", run_id=run_id)
        await self._finish_run(rid, cap, run_id)

    async def _finish_run(self, rid: str, cap: Capability, run_id: str) -> None:
        result = await self.bench.wait(run_id)
        await self._post(rid, cap, self._data_for_run(cap, result), run_id)

    def _data_for_run(self, cap: Capability, result: dict[str, Any]) -> dict[str, Any]:
        run_id = str(result.get("run_id"))
        quantity = cap.finales.quantity
        meta = self.bench.store.open(run_id).read_json("metadata.json") or {}
        if result.get("status") == "completed":
            return measured_data(quantity, cap.finales, self.bench.cfg, result, meta)
        errors = "; ".join(str(e.get("message") or e) for e in result.get("errors") or [])
        formulation = ((meta.get("instigator") or {}).get("request") or {}).get(
            "parameters", {}).get("formulation")
        return failed_data(quantity, formulation,
                           f"run {run_id} {result.get('status')}: {errors or 'no detail'}",
                           f"run_{result.get('status')}", run_id)

    async def _post(self, rid: str, cap: Capability, data: dict[str, Any],
                    run_id: str | None) -> None:
        """Post once: journal the result first; post only when FINALES holds no result for
        the request and it was not retracted."""
        self.journal.record(rid, "posting", data=data, run_id=run_id)
        delay = 0.5
        while True:
            try:
                if await self._posted_already(rid, run_id):
                    return
                req = await self.client.get_request(rid)
                if req is None or req.get("status") == "retracted":
                    self.journal.record(rid, "retracted", run_id=run_id)
                    return
                body = result_body(req, cap.finales.method, self.tenant_uuid, data)
                result_id = await self.client.post_result(body)
                self.journal.record(rid, "posted", result_id=result_id, run_id=run_id)
                self._link(run_id, rid, result_id, "posted")
                log.info("request %s: result %s posted", rid, result_id)
                return
            except FinalesError as exc:
                if 400 <= exc.status < 500:  # FINALES refuses it: it will not take it later
                    self.journal.record(rid, "post_refused", run_id=run_id, note=str(exc))
                    self._link(run_id, rid, None, f"refused by FINALES2: {exc}")
                    log.error("request %s: FINALES2 refused the result: %s", rid, exc)
                    return
                log.warning("request %s: posting: %s; again in %.1f s", rid, exc, delay)
            except httpx.HTTPError as exc:  # lost answer: the next round checks first
                log.warning("request %s: posting: %s; again in %.1f s", rid, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _posted_already(self, rid: str, run_id: str | None) -> bool:
        first = await self.client.result_for(rid)
        if not first:
            return False
        result_id = str(first.get("uuid"))
        if (first.get("result") or {}).get("tenant_uuid") == self.tenant_uuid:
            self.journal.record(rid, "posted", result_id=result_id, run_id=run_id,
                                note="found on FINALES2 (posted before a restart)")
            self._link(run_id, rid, result_id, "posted")
        else:
            self.journal.record(rid, "superseded", result_id=result_id, run_id=run_id,
                                note="another tenant's result is there")
            self._link(run_id, rid, None, f"not posted: result {result_id} of another tenant")
        return True

    def _link(self, run_id: str | None, rid: str, result_id: str | None, status: str) -> None:
        """Write `finales.json` into the run's folder (`labctl runs show` prints it)."""
        if run_id is None:
            return
        try:
            folder = self.bench.store.open(run_id).folder
        except FileNotFoundError:
            return
        write_json_atomic(folder / LINK_FILE, {
            "server": self.client.server, "tenant_uuid": self.tenant_uuid,
            "request_id": rid, "result_id": result_id, "status": status, "time": utc_iso()})

    # -- after a restart -----------------------------------------------------------------
    async def _resume(self, e: Entry, cap: Capability) -> None:
        rid = e.request_id
        if e.state == "posting" and e.data is not None:
            await self._post(rid, cap, e.data, e.run_id)
            return
        if e.state == "submitted" and e.run_id:
            result = self.bench.result(e.run_id)
            if result is not None:  # ended, or closed "interrupted" by the bench's start
                await self._post(rid, cap, self._data_for_run(cap, result), e.run_id)
                return
            # queued, never started: nothing moved; run it now
        info = await self.client.get_request(rid)
        if info is None:
            self.journal.record(rid, "retracted", note="FINALES2 no longer knows it")
            return
        status = info.get("status")
        if status == "resolved":
            await self._posted_already(rid, e.run_id)
            return
        if status == "retracted":
            self.journal.record(rid, "retracted")
            return
        if e.state == "reserving" and status != "reserved":
            self.journal.record(rid, "released", note=f"not reserved after restart ({status})")
            return
        if e.state == "reserving":
            self.journal.record(rid, "reserved", note="reservation found after restart")
        params = info["request"]["parameters"][cap.finales.method]
        await self._answer(rid, info, cap, self._prepare(rid, cap, params))


def _plan_code(exc: RecipeError) -> str:
    """Why the plan refused: a parameter outside its bounds, a vessel short of a material
    (the plan's bookkeeping), or anything else the bench cannot do."""
    if all(i.path.startswith("parameters.") for i in exc.issues):
        return "out_of_limits"
    if any(" holds " in i.message and "cannot take" in i.message for i in exc.issues):
        return "not_enough_stock"
    return "cannot_run"

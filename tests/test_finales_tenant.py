"""A labctl bench as a FINALES2 tenant, end to end: a real FINALES2 server (uvicorn on a
free loopback port, its own database), `labctl finales serve` on the simulated bench in its
own process, an optimiser that talks to FINALES2 only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import tomli_w

from tests.finales_server import (
    DMC,
    EC,
    EMC,
    EXAMPLE_1M,
    LIPF6,
    FinalesServer,
    Optimiser,
    capability_file,
    formulation,
)

try:
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
LABCTL = [sys.executable, "-m", "labctl"]
USERS = {"optimiser": "opt-secret", "bench_a": "a-secret", "bench_b": "b-secret"}
RESULT_SCHEMA = json.loads(capability_file("conductivity", "two_electrode").read_text()
                           )["json_schema_result_output"]


def tenant_description(name: str, config: Path | None = None) -> dict[str, Any]:
    """`labctl finales tenant`, as the bench's operator would hand it to the admin."""
    cmd = [*LABCTL, "finales", "tenant", "--name", name]
    if config:
        cmd += ["--config", str(config)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return dict(json.loads(out.stdout))


class TenantProc:
    """`labctl finales serve` in its own process."""

    def __init__(self, tmp: Path, server: FinalesServer, user: str, uuid: str, *,
                 config: Path | None = None, grace: float = 2.0, name: str = "a",
                 time_scale: float = 1000.0):
        self.data_dir = tmp / f"runs-{name}"
        self.pwfile = tmp / f"{user}.pw"
        self.pwfile.write_text(USERS[user] + "\n")
        self.uuid = uuid
        self.log = tmp / f"tenant-{name}.log"
        self.args = [*LABCTL, "-v", "finales", "serve", "--server", server.url,
                     "--username", user, "--password-file", str(self.pwfile),
                     "--tenant-uuid", uuid, "--data-dir", str(self.data_dir),
                     "--time-scale", str(time_scale), "--poll", "0.2",
                     "--claim-grace", str(grace)]
        if config:
            self.args += ["--config", str(config)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def journal(self) -> list[dict[str, Any]]:
        path = self.data_dir / "finales" / f"{self.uuid}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_state(self, request_id: str, state: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(e["request_id"] == request_id and e["state"] == state
                   for e in self.journal()):
                return
            assert self.proc is None or self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.05)
        raise TimeoutError(f"{request_id} never {state}: {self.log.read_text()[-3000:]}")

    def reserved(self) -> set[str]:
        return {e["request_id"] for e in self.journal() if e["state"] == "reserving"}


@pytest.fixture
def finales(tmp_path: Path) -> Iterator[tuple[FinalesServer, Optimiser]]:
    server = FinalesServer(tmp_path / "finales")
    server.setup(USERS, [("conductivity", "two_electrode")])
    server.start()
    opt = Optimiser(server.url, "optimiser", USERS["optimiser"])
    try:
        yield server, opt
    finally:
        opt.close()
        server.stop()


@pytest.fixture
def tenants_to_stop() -> Iterator[list[TenantProc]]:
    procs: list[TenantProc] = []
    yield procs
    for p in procs:
        p.stop(signal.SIGKILL)


def results_for(opt: Optimiser, request_id: str) -> list[dict[str, Any]]:
    return [r for r in opt.results() if r["result"]["request_uuid"] == request_id]


def test_tenant_reserves_runs_and_posts_a_schema_valid_result(
        finales: tuple[FinalesServer, Optimiser], tmp_path: Path,
        tenants_to_stop: list[TenantProc]) -> None:
    server, opt = finales
    (uuid,) = server.add_tenants([tenant_description("bench-a")], opt)
    tenant = TenantProc(tmp_path, server, "bench_a", uuid)
    tenants_to_stop.append(tenant)
    tenant.start()
    rid = opt.request(EXAMPLE_1M, uuid)
    result = opt.wait_result(rid)

    data = result["result"]["data"]
    jsonschema.validate(data, RESULT_SCHEMA)  # the schema FINALES2_schemas registers
    cond = data["conductivity"]
    assert cond["meta"]["success"] is True and 0 <= cond["meta"]["rating"] <= 5
    assert cond["values"][0] > 0.1  # S/m: ~1 S/m near 1 mol/kg, 25 °C
    assert cond["temperature"] == pytest.approx(298.15, abs=0.5)  # as measured
    made = {c["chemical"]["InChIKey"]: c["fraction"] for c in data["run_info"]["formulation"]}
    asked = {c["chemical"]["InChIKey"]: c["fraction"]
             for c in EXAMPLE_1M["formulation"]}
    assert made.keys() == asked.keys()
    for key, frac in asked.items():  # what was made, within the dispenser's 2 %
        assert made[key] == pytest.approx(frac, rel=0.03)
    assert result["result"]["method"] == ["two_electrode"]
    assert result["result"]["tenant_uuid"] == uuid

    # reserved before the work, resolved by the result; nothing else
    statuses = [s for s, _ in server.status_log(rid)]
    assert statuses == ["pending", "reserved", "resolved"]
    assert "bench_a" in server.status_log(rid)[1][1]
    assert len(results_for(opt, rid)) == 1

    # the run record names the request (instigator) and the result
    tenant.wait_state(rid, "posted")
    run_id = next(e["run_id"] for e in tenant.journal() if e["state"] == "posted")
    shown = subprocess.run([*LABCTL, "runs", "show", run_id, "--data-dir",
                            str(tenant.data_dir)], capture_output=True, text=True, cwd=ROOT,
                           check=True).stdout
    assert f"request {rid}" in shown and f"result {result['uuid']}" in shown
    info = json.loads(subprocess.run(
        [*LABCTL, "runs", "show", run_id, "--data-dir", str(tenant.data_dir), "--json"],
        capture_output=True, text=True, cwd=ROOT, check=True).stdout)
    assert info["metadata"]["instigator"]["kind"] == "finales"
    assert info["metadata"]["instigator"]["request_id"] == rid
    assert info["finales"]["result_id"] == result["uuid"]
    assert info["index"]["request_id"] == rid


def _small_dmc_config(tmp_path: Path) -> Path:
    cfg = tomllib.loads((ROOT / "config" / "sim.toml").read_text())
    cfg["vessels"]["res_dmc"]["contents"] = {"DMC": "1 mL"}
    path = tmp_path / "small_dmc.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def test_refusals_get_a_failed_result_saying_why_and_nothing_moves(
        finales: tuple[FinalesServer, Optimiser], tmp_path: Path,
        tenants_to_stop: list[TenantProc]) -> None:
    server, opt = finales
    config = _small_dmc_config(tmp_path)
    (uuid,) = server.add_tenants([tenant_description("bench-a", config)], opt)
    tenant = TenantProc(tmp_path, server, "bench_a", uuid, config=config)
    tenants_to_stop.append(tenant)
    tenant.start()
    cases = {
        "unknown_chemical": (formulation((LIPF6, 0.08), (EC, 0.46), (EMC, 0.46)),
                             EMC["InChIKey"]),
        "out_of_limits": (formulation((LIPF6, 0.08178), (EC, 0.46432), (DMC, 0.45391),
                                      temperature=400.0), "temperature"),
        "salt_out_of_limits": (formulation((LIPF6, 0.4), (EC, 0.3), (DMC, 0.3)),
                               "salt_molality"),
        "not_enough_stock": (EXAMPLE_1M, "res_dmc"),
    }
    ids = {name: opt.request(params, uuid) for name, (params, _) in cases.items()}
    for name, rid in ids.items():
        res = opt.wait_result(rid)
        jsonschema.validate(res["result"]["data"], RESULT_SCHEMA)
        meta = res["result"]["data"]["conductivity"]["meta"]
        assert meta["success"] is False and meta["rating"] == 0, name
        assert cases[name][1] in meta["reason"], (name, meta["reason"])
        assert res["result"]["data"]["conductivity"]["values"] == []
        assert [s for s, _ in server.status_log(rid)] == ["pending", "reserved", "resolved"]
    assert "is not a material of bench" in opt.get(
        f"/results_requested/{ids['unknown_chemical']}")["result"]["data"][
        "conductivity"]["meta"]["reason"]
    # nothing was run for a refusal: no run record, nothing dosed
    listed = json.loads(subprocess.run(
        [*LABCTL, "runs", "list", "--data-dir", str(tenant.data_dir), "--json"],
        capture_output=True, text=True, cwd=ROOT, check=True).stdout)
    assert listed == []
    assert tenant.proc is not None and tenant.proc.poll() is None  # still serving


def test_two_tenants_never_both_reserve_a_request(
        finales: tuple[FinalesServer, Optimiser], tmp_path: Path,
        tenants_to_stop: list[TenantProc]) -> None:
    server, opt = finales
    uuids = server.add_tenants([tenant_description("bench-a"), tenant_description("bench-b")],
                               opt)
    a = TenantProc(tmp_path, server, "bench_a", uuids[0], name="a")
    b = TenantProc(tmp_path, server, "bench_b", uuids[1], name="b")
    tenants_to_stop.extend([a, b])
    a.start()
    b.start()
    fractions = [(0.02602, 0.49251, 0.48147), (0.08178, 0.46432, 0.45391),
                 (0.05, 0.475, 0.475), (0.1, 0.45, 0.45)]
    ids = [opt.request(formulation((LIPF6, s), (EC, e), (DMC, d)), uuids[0])
           for s, e, d in fractions]
    for rid in ids:
        opt.wait_result(rid, timeout_s=240)
    time.sleep(1.0)  # a late second result would land now
    for rid in ids:
        assert len(results_for(opt, rid)) == 1, rid
        log = server.status_log(rid)
        assert [s for s, _ in log].count("reserved") == 1, log
    assert not (a.reserved() & b.reserved())
    assert a.reserved() | b.reserved() == set(ids)


def test_restart_neither_loses_nor_doubles_an_answer(
        finales: tuple[FinalesServer, Optimiser], tmp_path: Path,
        tenants_to_stop: list[TenantProc]) -> None:
    server, opt = finales
    (uuid,) = server.add_tenants([tenant_description("bench-a")], opt)
    # slow enough (x100) that the kill below lands while the run goes
    tenant = TenantProc(tmp_path, server, "bench_a", uuid, time_scale=100.0)
    tenants_to_stop.append(tenant)

    # 1. killed (SIGKILL) while its run is going: after the restart the request gets one
    # failed result naming the interruption (material may have moved: never re-run)
    tenant.start()
    rid = opt.request(EXAMPLE_1M, uuid)
    tenant.wait_state(rid, "submitted")
    deadline = time.monotonic() + 60
    run_id = next(e["run_id"] for e in tenant.journal() if e["state"] == "submitted")
    events = tenant.data_dir / run_id / "events.jsonl"
    while '"step_started"' not in (events.read_text() if events.exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    tenant.stop(signal.SIGKILL)
    assert opt.get(f"/results_requested/{rid}") is None
    tenant.start()
    res = opt.wait_result(rid)
    meta = res["result"]["data"]["conductivity"]["meta"]
    assert meta["success"] is False and "interrupted" in meta["reason"]
    tenant.wait_state(rid, "posted")

    # 2. killed after posting, before journaling it (the journal as such a crash leaves
    # it): the restart finds its own result on FINALES2 and posts nothing
    rid2 = opt.request(EXAMPLE_1M, uuid)
    first = opt.wait_result(rid2)
    tenant.wait_state(rid2, "posted")
    tenant.stop(signal.SIGKILL)
    path = tenant.data_dir / "finales" / f"{uuid}.jsonl"
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["state"] == "posted"
    path.write_text("\n".join(lines[:-1]) + "\n")
    tenant.start()
    tenant.wait_state(rid2, "posted")
    time.sleep(1.0)
    assert len(results_for(opt, rid)) == 1
    assert [r["uuid"] for r in results_for(opt, rid2)] == [first["uuid"]]
    assert [e.get("result_id") for e in tenant.journal()
            if e["request_id"] == rid2 and e["state"] == "posted"][-1] == first["uuid"]


def test_tenant_keeps_serving_through_a_finales_restart_with_a_new_key(
        finales: tuple[FinalesServer, Optimiser], tmp_path: Path,
        tenants_to_stop: list[TenantProc]) -> None:
    server, opt = finales
    (uuid,) = server.add_tenants([tenant_description("bench-a")], opt)
    tenant = TenantProc(tmp_path, server, "bench_a", uuid)
    tenants_to_stop.append(tenant)
    tenant.start()
    rid = opt.request(EXAMPLE_1M, uuid)
    opt.wait_result(rid)
    # FINALES2 goes down, comes back with a new signing key: every token is void (401)
    server.stop()
    cfg = json.loads(server.config.read_text())
    cfg["secret_key"] = os.urandom(16).hex()
    server.config.write_text(json.dumps(cfg))
    time.sleep(1.0)  # the tenant polls a dead server meanwhile
    server.start()
    opt2 = Optimiser(server.url, "optimiser", USERS["optimiser"])
    try:
        rid2 = opt2.request(EXAMPLE_1M, uuid)
        res = opt2.wait_result(rid2)
        meta = res["result"]["data"]["conductivity"]["meta"]
        assert meta["success"] is True, meta
    finally:
        opt2.close()
    assert tenant.proc is not None and tenant.proc.poll() is None
    # stopped while FINALES2 is down: it does not wait for the server to come back
    server.stop()
    time.sleep(1.0)
    tenant.proc.send_signal(signal.SIGTERM)
    assert tenant.proc.wait(30) == 0

"""Claims computed from real plans of shipped recipes, and the grant rule of the board
(labctl.bench.resources): exclusive devices and vials, shared reservoirs, set-point keyed
blocks, spans granted at once, and a deadlock-prone pair that both complete."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from labctl.bench.resources import Claim, ResourceBoard, claims_of, conflict
from labctl.config import load_config, parse_config
from labctl.recipe.plan import Plan, PlannedStep
from labctl.recipe.validate import build_plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "config" / "sim.toml")


def plan_of(cfg, name: str) -> Plan:
    return build_plan(ROOT / "recipes" / f"{name}.json", {}, cfg)


def test_transfer_claims_pump_valve_vial_and_shared_reservoir(cfg):
    rc = claims_of(plan_of(cfg, "electrolyte_conductivity"), cfg)
    ec = {c.resource: c for c in rc.steps["ec"]}
    # the pump, the selector valve its output goes through, the vial the valve was routed to
    assert ec["device:pump_ec"].mode == "exclusive"
    assert ec["device:sel_valve"].mode == "exclusive"
    assert ec["vessel:cell_vial"].mode == "exclusive"
    assert ec["vessel:res_ec"].mode == "shared"


def test_routes_are_replayed_in_plan_order(cfg):
    rc = claims_of(plan_of(cfg, "rinse"), cfg)
    # draw: from @sel_valve, which `to_vial` routed to cell_vial
    assert "vessel:cell_vial" in {c.resource for c in rc.steps["draw"]}
    # out: into @sel_valve, which `to_waste` routed to waste (shared), not the vial
    out = {c.resource: c for c in rc.steps["out"]}
    assert out["vessel:waste"].mode == "shared"
    assert "vessel:cell_vial" not in out


def test_spans_and_last_uses(cfg):
    rc = claims_of(plan_of(cfg, "electrolyte_conductivity"), cfg)
    assert rc.first_span_step == "init.pump_ec"
    assert rc.last_use["device:pump_ec"] == "ec"
    assert rc.last_use["device:hotplate"] == "cool"
    assert rc.last_use["vessel:cell_vial"] == "rinse.draw"
    # the potentiostat is used once: a step-only claim
    assert "device:potentiostat" not in rc.spans
    assert [c.resource for c in rc.step_only("eis")] == ["device:potentiostat"]


def test_disjoint_recipes_do_not_conflict_but_shared_valve_does(cfg):
    cond = claims_of(plan_of(cfg, "electrolyte_conductivity"), cfg)
    coat = claims_of(plan_of(cfg, "coating_synthesis"), cfg)
    assert conflict(cond.spans.values(), coat.spans.values()) is not None  # sel_valve
    assert conflict([Claim("vessel:res_etoh", "shared")],
                    [Claim("vessel:res_etoh", "shared")]) is None


def _block_cfg():
    raw = {
        "bench": {"id": "t", "simulate": True},
        "vessels": {"a1": {"kind": "vial", "rack": "block", "position": 1},
                    "a2": {"kind": "vial", "rack": "block", "position": 2}},
        "devices": {"block": {"driver": "ika-hotplate", "endpoint": "loop://",
                              "params": {"vessels": ["a1", "a2"]}}},
    }
    return parse_config(raw)


def _leaf(sid: str, action: str, **args) -> PlannedStep:
    return PlannedStep(id=sid, path=sid, kind="action", device="block", action=action,
                       capability="stirrer", args=args)


def _plan(*steps: PlannedStep) -> Plan:
    return Plan(name="p", version="1", description="", recipe={}, parameters={}, sha256="",
                steps=list(steps), estimated_s=0, materials=[], material_effects=[])


def test_block_setpoint_shares_same_and_waits_on_different():
    cfg = _block_cfg()
    a = claims_of(_plan(_leaf("s", "stir", speed_rpm=600, temperature_c=40)), cfg)
    b = claims_of(_plan(_leaf("s", "stir", speed_rpm=600, temperature_c=40)), cfg)
    c = claims_of(_plan(_leaf("s", "stir", speed_rpm=600, temperature_c=60)), cfg)
    off = claims_of(_plan(_leaf("s", "off")), cfg)
    assert a.steps["s"][0].mode == "shared"
    assert conflict(a.steps["s"], b.steps["s"]) is None
    assert conflict(a.steps["s"], c.steps["s"]) is not None
    # `off` sets nothing another run relies on: it shares, and the stirrer action switches
    # the block off only when no other run holds it (the last run out switches it off)
    assert off.steps["s"][0].mode == "shared"
    assert conflict(a.steps["s"], off.steps["s"]) is None


async def _drive(board: ResourceBoard, run_id: str, rc, log: list[tuple[str, str]]) -> None:
    held: dict[str, str] = {}
    for sid in rc.order:
        for c in await board.enter(run_id, sid):
            held[c.resource] = c.mode
        log.append((run_id, sid))
        await asyncio.sleep(0)
        await board.exit(run_id, sid)
    await board.finish(run_id)


def _seq(*pairs: tuple[str, str]) -> Plan:
    """A plan of leaves on named devices (wait-free), in order."""
    return _plan(*[PlannedStep(id=sid, path=sid, kind="action", device=dev, action="x",
                               capability="pump") for sid, dev in pairs])


async def test_deadlock_prone_pair_completes():
    cfg = parse_config({"bench": {"id": "t"}})
    # A uses X then Y then X; B uses Y then X then Y: with per-step locks held across uses
    # this deadlocks (A holds X wants Y, B holds Y wants X)
    a = claims_of(_seq(("a1", "X"), ("a2", "Y"), ("a3", "X")), cfg)
    b = claims_of(_seq(("b1", "Y"), ("b2", "X"), ("b3", "Y")), cfg)
    board = ResourceBoard()
    board.register("A", a)
    board.register("B", b)
    log: list[tuple[str, str]] = []
    async with asyncio.timeout(5):
        await asyncio.gather(_drive(board, "A", a, log), _drive(board, "B", b, log))
    assert len(log) == 6
    # all of one run's span steps ran before the other's first (they share X and Y)
    runs = [r for r, _ in log]
    assert runs in (["A"] * 3 + ["B"] * 3, ["B"] * 3 + ["A"] * 3)


async def test_third_run_waits_until_its_device_is_released():
    cfg = parse_config({"bench": {"id": "t"}})
    a = claims_of(_seq(("a1", "P"), ("a2", "P")), cfg)
    b = claims_of(_seq(("b1", "Q"),), cfg)
    c = claims_of(_seq(("c1", "P"),), cfg)
    board = ResourceBoard()
    for rid, rc in (("A", a), ("B", b), ("C", c)):
        board.register(rid, rc)
    await board.enter("A", "a1")
    assert board.can_enter("B", "b1")  # disjoint: runs at once
    assert not board.can_enter("C", "c1")  # P is A's span until a2 is done
    waiter = asyncio.ensure_future(board.enter("C", "c1"))
    await board.exit("A", "a1")
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await board.enter("A", "a2")
    await board.exit("A", "a2")
    held = await asyncio.wait_for(waiter, 1)
    assert [c.resource for c in held] == ["device:P"]
    assert board.holders("device:P") == ["C"]


def test_grant_refused_when_holder_still_needs_a_new_span():
    cfg = parse_config({"bench": {"id": "t"}})
    # A holds span X and will later need Y; B wants spans Y..Y: granting B would let A
    # wait on B's span while B could wait on A's
    a = claims_of(_seq(("a1", "X"), ("a2", "Y"), ("a3", "X")), cfg)
    b = claims_of(_seq(("b1", "Y"), ("b2", "Z"), ("b3", "Y")), cfg)
    board = ResourceBoard()
    board.register("A", a)
    board.register("B", b)
    board.take("A", "a1")
    assert not board.can_enter("B", "b1")


def test_devices_safed_on_a_fault_are_only_the_runs_own(cfg):
    board = ResourceBoard()
    a = claims_of(plan_of(cfg, "electrolyte_conductivity"), cfg)
    board.register("A", a)
    board.take("A", "init.pump_ec")
    devs = board.devices_only_held_by("A")
    assert "pump_ec" in devs and "hotplate" in devs
    assert "block_heater" not in devs and "pump_teos" not in devs


def test_a_run_that_heats_then_stirs_a_block_shares_it_with_the_same_setpoints():
    cfg = _block_cfg()

    def run(t: float) -> object:
        return claims_of(_plan(_leaf("heat", "set", temperature_c=t),
                               _leaf("mix", "stir", speed_rpm=600, duration_s=600)), cfg)

    a, b, hot = run(25), run(25), run(40)
    span = a.spans["device:block"]
    assert (span.mode, span.key) == ("shared", "speed_rpm=600;temperature_c=25")
    assert conflict(a.spans.values(), b.spans.values()) is None
    assert conflict(a.spans.values(), hot.spans.values()) is not None
    # a run that changes the block's set-point itself owns the block
    both = claims_of(_plan(_leaf("h1", "set", temperature_c=25),
                           _leaf("h2", "set", temperature_c=40)), cfg)
    assert both.spans["device:block"].mode == "exclusive"

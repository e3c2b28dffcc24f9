"""Fuzzing what comes from outside: recipes and MQTT payloads.

Recipe validation against arbitrary JSON and mutated recipes is fuzzed by
tests/test_recipe_fuzz.py; what this file adds is the other side of the promise: a recipe
the validator accepts — here the electrolyte formulation an AI server varies, with every
parameter drawn anywhere inside its declared bounds — runs to completion on the simulated
bench, doses what it says, and leaves every instrument safe; so does the conductivity
recipe, which rinses the vial afterwards (its rinse once failed for some in-bound
parameters: solvent transfers rounded to whole plunger steps left the vial a step short).

MQTT: payloads drawn by hypothesis (random bytes, JSON of every shape, commands with wrong
or missing fields, valid commands with odd values) are published to a running `labctl serve`
through a real mosquitto. Whatever arrives, a payload naming a command id gets a reply to
that id (`ok` true, or false with an error code), and the agent keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from labctl.bench import Bench
from labctl.config import load_config
from labctl.mqtt.localbroker import MosquittoBroker
from labctl.mqtt.topics import Topics
from labctl.units import quantity

ROOT = Path(__file__).resolve().parent.parent
SIM_CONFIG = ROOT / "config" / "sim.toml"
RECIPE = ROOT / "recipes" / "formulate_electrolyte.json"
BENCH_ID = "fuzz-bench"
T = Topics(BENCH_ID)
WAIT = 60.0
pytestmark = pytest.mark.timeout(300)


# --------------------------------------------------------------------------- recipes
def within_bounds(decls: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Parameter values anywhere inside each declaration's [min, max], in its unit."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, d in decls.items():
        if d["type"] == "quantity":
            unit = d["unit"]
            lo = float(quantity(d["min"]).to(unit).magnitude)
            hi = float(quantity(d["max"]).to(unit).magnitude)
            fields[name] = st.floats(lo, hi).map(lambda v, u=unit: f"{v:.6g} {u}")
        elif d["type"] == "number":
            fields[name] = st.floats(float(d["min"]), float(d["max"]))
        elif d["type"] == "integer":
            fields[name] = st.integers(int(d["min"]), int(d["max"]))
    return st.fixed_dictionaries(fields)


#: slow examples (a run each): no shrinking, the failing parameters are shown as drawn
RUNS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                phases=(Phase.explicit, Phase.reuse, Phase.generate))


def run_recipe(path: Path, params: dict[str, Any],
               data_dir: Path) -> tuple[dict[str, Any], list[str], dict[str, float]]:
    """Plan (validation must accept in-bound parameters), run on a fresh simulated bench;
    the result, the instruments not safe afterwards, and what cell_vial holds (g)."""

    async def scenario() -> tuple[dict[str, Any], list[str], dict[str, float]]:
        bench = Bench(load_config(SIM_CONFIG), data_dir=data_dir, time_scale=1000)
        await bench.start()
        try:
            plan = bench.plan(path, params)  # a RecipeError here fails the test: in bounds
            run_id = await bench.submit(plan, params, instigator="operator:fuzz")
            result = await asyncio.wait_for(bench.wait(run_id), WAIT)
            sims = bench.instruments.simulation.simulators
            vial = dict(bench.instruments.simulation.world.composition("cell_vial"))
            return result, [n for n, s in sims.items() if not s.is_safe()], vial
        finally:
            await bench.close()

    return asyncio.run(scenario())


@RUNS
@given(params=within_bounds(json.loads(RECIPE.read_text())["parameters"]))
def test_any_accepted_formulation_runs_to_completion_on_the_simulated_bench(
        params: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Validation accepted it, so the bench runs it: completed, the vial holds the salt
    and both solvents in the proportion asked, every instrument safe afterwards."""
    result, unsafe, vial = run_recipe(RECIPE, params, tmp_path_factory.mktemp("runs"))
    assert result["status"] == "completed", (params, result["errors"])
    assert unsafe == [], unsafe
    assert vial["LiPF6"] > 0
    ec_ml, dmc_ml = vial["EC"] / 1.32, vial["DMC"] / 1.07  # densities of config/sim.toml
    assert ec_ml / (ec_ml + dmc_ml) == pytest.approx(float(params["ec_fraction"]), abs=0.01)


CONDUCTIVITY = ROOT / "recipes" / "electrolyte_conductivity.json"


@RUNS
@given(params=within_bounds(json.loads(CONDUCTIVITY.read_text())["parameters"]))
# found by this test: the rinse drew a step more than the rounded transfers had put in
@example(params={"ec_fraction": 0.7832095611129706, "salt_molality": "1.5 mol/kg",
                 "solvent_volume": "2.63296 mL", "temperature": "39 degC"})
def test_any_accepted_conductivity_run_completes(
        params: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Measure, analyse, rinse: completed with its conductivity, every instrument safe."""
    result, unsafe, _ = run_recipe(CONDUCTIVITY, params, tmp_path_factory.mktemp("runs"))
    assert result["status"] == "completed", (params, result["errors"])
    assert "ionic_conductivity" in {f["analysis"] for f in result["figures_of_merit"]}
    assert unsafe == [], unsafe


# --------------------------------------------------------------------------- MQTT payloads
@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A mosquitto on a free port and `labctl serve` (config/sim.toml, x1000) on it; the
    broker URL."""
    folder = tmp_path_factory.mktemp("mqtt")
    with MosquittoBroker(folder / "broker") as broker:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labctl", "serve", "--config", str(SIM_CONFIG),
             "--broker", broker.url, "--bench-id", BENCH_ID, "--data-dir",
             str(folder / "runs"), "--time-scale", "1000"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        try:
            asyncio.run(_until_online(broker.url))
            yield broker.url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


async def _until_online(url: str) -> None:
    async with _client(url) as c:
        await c.subscribe(T.online, qos=1)
        async with asyncio.timeout(WAIT):
            async for m in c.messages:
                if m.payload == b"online":
                    return


def _client(url: str) -> aiomqtt.Client:
    host, _, port = url.removeprefix("mqtt://").rpartition(":")
    return aiomqtt.Client(host, int(port), identifier=f"fuzz-{uuid.uuid4().hex[:8]}",
                          protocol=aiomqtt.ProtocolVersion.V5)


COMMANDS = ["submit", "validate", "pause", "resume", "abort", "cancel", "status", "list",
            "estop", "launch", "", "SUBMIT", "status ", None, 3]
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
json_values = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
recipe_like = st.one_of(
    json_values,
    st.fixed_dictionaries({"schema": st.just("labctl.recipe/1"), "name": st.text(max_size=10),
                           "steps": st.lists(st.dictionaries(
                               st.sampled_from(["id", "device", "action", "args", "wait"]),
                               json_values, max_size=4), max_size=3)}),
)
fields = st.dictionaries(
    st.sampled_from(["recipe", "recipe_ref", "parameters", "request", "run_id", "limit",
                     "extra", "id"]),
    st.one_of(json_values, recipe_like,
              st.sampled_from(["rinse", "../config/sim", "no_such", "/etc/passwd", ""])),
    max_size=4)


@st.composite
def commands(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A payload and the command id a reply must come back to (None: no reply owed)."""
    kind = draw(st.sampled_from(["bytes", "json", "command", "command", "command"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200)), None
    if kind == "json":
        return json.dumps(draw(json_values)).encode(), None
    cid = f"fz-{uuid.uuid4().hex[:12]}"
    body = {**draw(fields), "id": cid, "command": draw(st.sampled_from(COMMANDS))}
    if body["command"] == "estop":  # would hold the bench's queue for the later examples
        body["command"] = "status"
    payload = json.dumps(body).encode()
    if draw(st.booleans()) and draw(st.integers(0, 9)) == 0:
        payload = payload[: len(payload) // 2]  # cut short: not JSON any more, id unreadable
        return payload, None
    return payload, cid


async def _exchange(url: str, payloads: list[tuple[bytes, str | None]]) -> dict[str, Any]:
    """Publish the payloads, then a status command; collect the replies by command id."""
    owed = {cid for _, cid in payloads if cid}
    probe = f"probe-{uuid.uuid4().hex[:12]}"
    replies: dict[str, Any] = {}
    async with _client(url) as c:
        await c.subscribe(f"{T.prefix}/reply/#", qos=1)
        for payload, _ in payloads:
            await c.publish(T.cmd, payload, qos=1)
        await c.publish(T.cmd, json.dumps({"id": probe, "command": "status"}).encode(), qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT):
                async for m in c.messages:
                    body = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                    replies[str(body.get("id"))] = body
                    if probe in replies and owed <= set(replies):
                        break
    return {"replies": replies, "owed": owed, "probe": probe}


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(payloads=st.lists(commands(), min_size=1, max_size=5))
def test_agent_answers_every_fuzzed_payload_and_keeps_serving(
        agent: str, payloads: list[tuple[bytes, str | None]]) -> None:
    out = asyncio.run(_exchange(agent, payloads))
    replies = out["replies"]
    missing = out["owed"] - set(replies)
    assert not missing, f"no reply to {sorted(missing)} for {payloads}"
    for cid in out["owed"]:
        reply = replies[cid]
        assert isinstance(reply["ok"], bool)
        if not reply["ok"]:
            assert reply["error"]["code"] and reply["error"]["message"], reply
    probe = replies.get(out["probe"])
    assert probe is not None and probe["ok"] is True, "the agent stopped serving"
    assert probe["status"]["bench_id"] == BENCH_ID


def test_a_flood_of_garbage_leaves_the_agent_serving(agent: str) -> None:
    """500 payloads of junk at once, oversized ones among them, then a status command."""
    import random

    rng = random.Random(7)
    junk: list[tuple[bytes, str | None]] = [
        (bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))), None)
        for _ in range(495)]
    big = json.dumps({"id": "fz-big", "command": "submit",
                      "recipe": {"pad": "x" * (2 * 1024 * 1024)}}).encode()
    junk += [(big, "fz-big"), (b"{" * 100_000, None), (b"\x00" * 1_500_000, None),
             (json.dumps({"id": "fz-deep", "command": "validate",
                          "recipe": json.loads("[" * 500 + "]" * 500)}).encode(), "fz-deep"),
             (json.dumps({"id": "fz-ok", "command": "list"}).encode(), "fz-ok")]
    out = asyncio.run(_exchange(agent, junk))
    replies = out["replies"]
    assert replies["fz-big"]["ok"] is False
    assert replies["fz-big"]["error"]["code"] == "too_large"
    assert replies["fz-deep"]["ok"] is False
    assert replies["fz-ok"]["ok"] is True
    assert replies[out["probe"]]["ok"] is True

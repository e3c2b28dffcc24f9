"""The MQTT agent against a real mosquitto, serving config/sim.toml's bench: submit ->
result, duplicate command ids, pause/resume/abort, malformed payloads."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from mqtt_broker import MosquittoBroker
from mqtt_helpers import WAIT, WAIT_RECIPE, Raw, eventually, serve_bench

from labctl.client import BenchClient, CommandError
from labctl.mqtt.connection import response_properties
from labctl.mqtt.payloads import MAX_PAYLOAD_BYTES
from labctl.mqtt.topics import Topics

T = Topics("sim-bench-1")


@pytest.fixture
def broker(tmp_path: Path):
    with MosquittoBroker(tmp_path / "broker") as b:
        yield b


async def test_submit_then_result_with_request_id_status_and_online(broker, tmp_path) -> None:
    async with serve_bench(broker.url, tmp_path / "runs") as served, \
            Raw(broker.url, "observer") as obs, BenchClient(broker.url, "sim-bench-1") as c:
        await obs.subscribe(T.online)
        await obs.subscribe(T.status)
        assert (await obs.wait_for(T.online))[-1] == b"online"
        run = await c.submit(WAIT_RECIPE, {"duration": "30 s"},
                             request={"id": "req-1", "client": "pytest"})
        assert run.queue_position == 0
        result = await run.result(timeout=WAIT)
        assert result["status"] == "completed"
        assert result["run_id"] == run.run_id
        assert result["request_id"] == "req-1"
        assert result["bench_id"] == "sim-bench-1"
        assert result["provenance"]["instigator"]["request_id"] == "req-1"
        # the run record is the executor's: the same run, done
        assert served.bench.store.index.get_run(run.run_id)["status"] == "completed"
        # retained status was published and says what the bench does now
        await eventually(lambda: json.loads(obs.on(T.status)[-1])["state"] == "idle"
                         if obs.on(T.status) else False, what="idle status")
        runs = await c.list()
        assert [r["run_id"] for r in runs] == [run.run_id]
        # a late subscriber gets the retained result
        async with Raw(broker.url, "late") as late:
            await late.subscribe(T.result(run.run_id))
            got = json.loads((await late.wait_for(T.result(run.run_id)))[0])
            assert got["run_id"] == run.run_id and got["status"] == "completed"
    # a clean stop says offline (retained)
    async with Raw(broker.url, "after") as after:
        await after.subscribe(T.online)
        assert (await after.wait_for(T.online))[-1] == b"offline"


async def test_duplicate_command_id_same_reply_one_run(broker, tmp_path) -> None:
    async with serve_bench(broker.url, tmp_path / "runs") as served, \
            Raw(broker.url, "ai") as ai:
        await ai.subscribe(f"{T.prefix}/reply/#")
        cmd = {"id": "dup-1", "command": "submit", "recipe": WAIT_RECIPE,
               "parameters": {"duration": "1 s"}}
        payload = json.dumps(cmd).encode()
        await ai.publish(T.cmd, payload)
        first = json.loads((await ai.wait_for(T.reply("dup-1")))[0])
        assert first["ok"] is True and first["run_id"]
        for _ in range(3):
            await ai.publish(T.cmd, payload)
        replies = await ai.wait_for(T.reply("dup-1"), count=4)
        assert all(json.loads(r) == first for r in replies)
        assert served.agent.stats["duplicates"] == 3
        # the same id with another body is still the same command: same reply, no run
        await ai.publish(T.cmd, json.dumps({**cmd, "parameters": {"duration": "2 s"}}).encode())
        replies = await ai.wait_for(T.reply("dup-1"), count=5)
        assert json.loads(replies[-1]) == first
        assert len(served.bench.store.list()) == 1


async def test_pause_resume_abort_over_mqtt(broker, tmp_path) -> None:
    async with serve_bench(broker.url, tmp_path / "runs") as served, \
            BenchClient(broker.url, "sim-bench-1") as c:
        with pytest.raises(CommandError) as idle:
            await c.pause()
        assert idle.value.code == "refused"
        run = await c.submit(WAIT_RECIPE, {"duration": "2 h"})  # 7.2 s per wait at x1000
        await eventually(lambda: served.bench.status()["state"] == "running", what="running")
        await c.pause()
        await eventually(lambda: served.bench.status()["state"] == "paused", what="paused")
        assert (await c.status())["state"] == "paused"
        await c.resume()
        await eventually(lambda: served.bench.status()["state"] == "running", what="resumed")
        await c.abort()
        result = await run.result(timeout=WAIT)
        assert result["status"] == "aborted"
        journal = [e["event"] for e in served.bench.store.open(run.run_id).events()]
        assert "safe_state" in journal
        # queued run cancelled over MQTT never starts
        r1 = await c.submit(WAIT_RECIPE, {"duration": "2 h"})
        r2 = await c.submit(WAIT_RECIPE, {"duration": "1 s"})
        assert r2.queue_position == 1
        await c.cancel(r2.run_id)
        assert (await r2.result(timeout=WAIT))["status"] == "aborted"
        await c.estop()
        assert (await r1.result(timeout=WAIT))["status"] == "aborted"
        assert served.bench.status()["state"] == "held"
        await c.resume()  # releases the queue after the e-stop
        await eventually(lambda: served.bench.status()["state"] == "idle", what="released")


async def test_malformed_payloads_get_error_replies_and_agent_keeps_serving(
        broker, tmp_path) -> None:
    async with serve_bench(broker.url, tmp_path / "runs") as served, \
            Raw(broker.url, "fuzzer") as raw:
        await raw.subscribe(f"{T.prefix}/reply/#")

        async def reply_to(cid: str, payload: bytes) -> dict:
            await raw.publish(T.cmd, payload)
            return json.loads((await raw.wait_for(T.reply(cid)))[-1])

        # no id anywhere: logged, no reply
        before = served.agent.stats["malformed"]
        await raw.publish(T.cmd, b"\x00\x01 garbage")
        await raw.publish(T.cmd, b"[]")
        await eventually(lambda: served.agent.stats["malformed"] == before + 2, what="logged")
        cases = {
            "m1": (b'{"id": "m1", "command": "submit", ', "bad_json"),
            "m2": (b'{"id": "m2", "command": "launch"}', "unknown_command"),
            "m3": (b'{"id": "m3", "command": "list", "limit": "lots"}', "bad_payload"),
            "m4": (b'{"id": "m4", "command": "submit", "recipe_ref": "../config/sim"}',
                   "bad_payload"),
            "m5": (b'{"id": "m5", "command": "submit", "recipe_ref": "no_such_recipe"}',
                   "recipe_not_found"),
            "m6": (json.dumps({"id": "m6", "command": "submit", "recipe": {**WAIT_RECIPE,
                   "steps": [{"id": "x", "device": "nope", "action": "fly"}]}}).encode(),
                   "invalid_recipe"),
            "m7": (json.dumps({"id": "m7", "command": "submit", "recipe": WAIT_RECIPE,
                               "parameters": {"duration": "5 kg"}}).encode(), "invalid_recipe"),
            "m8": (b'{"id": "m8", "command": "submit", "recipe": {"pad": "'
                   + b"x" * (MAX_PAYLOAD_BYTES + 1) + b'"}}', "too_large"),
        }
        for cid, (payload, code) in cases.items():
            reply = await reply_to(cid, payload)
            assert reply["ok"] is False, cid
            assert reply["error"]["code"] == code, (cid, reply)
        assert (await reply_to("m6b", json.dumps({"id": "m6b", "command": "validate",
                "recipe": {**WAIT_RECIPE, "steps": [{"id": "x", "device": "nope",
                                                      "action": "fly"}]}}).encode())
                )["error"]["path"].startswith("steps[0]")
        # MQTT 5 response topic (inside the sender's reply namespace) + correlation data win
        # over reply/<id>, even for errors
        inbox = f"{T.reply_namespace('anonymous')}x"
        await raw.publish(T.cmd, b'{"id": "m9", "command": "warp"}',
                          properties=response_properties(inbox, b"corr-9"))
        await raw.wait_for(inbox)
        _topic, body, props = [m for m in raw.messages if m[0] == inbox][-1]
        assert json.loads(body)["error"]["code"] == "unknown_command"
        assert props.CorrelationData == b"corr-9"
        # nothing ran, and the agent still serves
        assert served.bench.store.list() == []
        ok = await reply_to("fine", json.dumps({"id": "fine", "command": "status"}).encode())
        assert ok["ok"] is True and ok["status"]["bench_id"] == "sim-bench-1"


async def test_recipe_ref_names_a_recipe_of_the_bench_folder(broker, tmp_path) -> None:
    async with serve_bench(broker.url, tmp_path / "runs"), \
            BenchClient(broker.url, "sim-bench-1", client_id=f"c-{uuid.uuid4().hex[:6]}") as c:
        run = await c.submit("mqtt_wait", {"duration": "1 s"})
        assert (await run.result(timeout=WAIT))["status"] == "completed"
        assert (await c.validate("mqtt_wait", {"duration": "1 s"}))["ok"] is True


async def test_retained_status_carries_fresh_device_readings(broker, tmp_path) -> None:
    """Remote operators see the bench: the agent polls the devices into its status."""
    async with serve_bench(broker.url, tmp_path / "runs"), Raw(broker.url, "operator") as op:
        await op.subscribe(T.status)

        def devices_reported() -> bool:
            if not op.on(T.status):
                return False
            devices = json.loads(op.on(T.status)[-1]).get("devices") or {}
            pump = devices.get("pump_ec") or {}
            return pump.get("state") == "idle" and "plunger_volume_l" in pump.get("readings", {})

        await eventually(devices_reported, what="device readings in the retained status")
        devices = json.loads(op.on(T.status)[-1])["devices"]
        assert set(devices) >= {"pump_ec", "sel_valve", "hotplate", "potentiostat"}

"""Hostile and buggy MQTT clients against a real mosquitto (issue 12): reply topics the bench
may not (or must not) publish to, clients faking another client's results or controlling
another client's runs, a client taking the agent's client id, control commands stuck behind
submits. Brokers run with the shipped config/mosquitto settings where the test says so."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mqtt_broker import MosquittoBroker
from mqtt_helpers import WAIT, WAIT_RECIPE, Raw, eventually, serve_bench

from labctl.client import BenchClient, CommandError
from labctl.mqtt.connection import BrokerSettings, MqttClient, response_properties
from labctl.mqtt.topics import Topics

BENCH = "bench-a"
T = Topics(BENCH)
USERS = {BENCH: "pw-bench", "ai-planner": "pw-planner", "ai-optimiser": "pw-optimiser",
         "operator-alice": "pw-alice"}


def creds(user: str) -> dict[str, str]:
    return {"username": user, "password": USERS[user]}


@pytest.fixture
def shipped_broker(tmp_path: Path):
    """mosquitto with the shipped mosquitto.conf settings, ACL and a mosquitto_passwd file."""
    with MosquittoBroker(tmp_path / "broker", users=USERS, shipped=True) as b:
        yield b


def _status(cid: str) -> bytes:
    return json.dumps({"id": cid, "command": "status"}).encode()


# ----------------------------------------------------------------- 1. refused publishes
async def test_reply_the_broker_refuses_is_acknowledged_once_and_the_agent_keeps_serving(
        tmp_path: Path) -> None:
    """A bench whose ACL does not let it publish a command's reply: the command is acted on
    and acknowledged once, the refusal logged; no reconnect, no redelivery after a restart,
    and an e-stop right behind it still acts."""
    acl = tmp_path / "acl"
    acl.write_text("\n".join([
        f"user {BENCH}", "topic read labctl/bench-a/#",
        *(f"topic write labctl/bench-a/{t}" for t in ("status", "events", "online", "agent",
                                                       "runs/+/result")),
        "user ai-planner", "topic write labctl/bench-a/cmd", "topic read labctl/#", ""]))
    with MosquittoBroker(tmp_path / "broker", users=USERS, acl=acl) as broker:
        data = tmp_path / "runs"
        async with serve_bench(broker.url, data, bench_id=BENCH, **creds(BENCH)) as served, \
                Raw(broker.url, "planner", **creds("ai-planner")) as ai:
            await ai.publish(T.cmd, _status("s1"))
            await ai.publish(T.cmd, json.dumps({"id": "e1", "command": "estop"}).encode())
            await eventually(lambda: served.agent.stats["replies_refused"] == 2,
                             what="both replies refused by the broker")
            assert served.bench.status()["state"] == "held"  # the e-stop acted
            await ai.publish(T.cmd, _status("s2"))
            await eventually(lambda: served.agent.stats["replies_refused"] == 3,
                             what="the agent still serves")
            assert served.agent.connections == 1
            assert served.agent.stats["duplicates"] == 0
        # a restart: nothing was left unacknowledged for the broker to redeliver
        async with serve_bench(broker.url, data, bench_id=BENCH, **creds(BENCH)) as served, \
                Raw(broker.url, "planner", **creds("ai-planner")) as ai:
            await ai.publish(T.cmd, _status("s3"))
            await eventually(lambda: served.agent.stats["replies_refused"] == 1,
                             what="fresh command handled")
            assert served.agent.stats["commands"] == 1
            assert served.agent.stats["duplicates"] == 0
            assert served.agent.connections == 1


@pytest.mark.parametrize("target", ["labctl/bench-a/cmd/ai-planner", "labctl/bench-a/cmd",
                                    "labctl/bench-a/reply/ai-optimiser/inbox",
                                    "labctl/bench-a/status", "labctl/bench-a/reply/+/x",
                                    "elsewhere/x"])
async def test_reply_topic_outside_the_senders_namespace_is_refused(
        shipped_broker, tmp_path: Path, target: str) -> None:
    url = shipped_broker.url
    async with serve_bench(url, tmp_path / "runs", bench_id=BENCH, **creds(BENCH)) as served, \
            Raw(url, "planner", **creds("ai-planner")) as ai:
        await ai.subscribe("labctl/bench-a/reply/ai-planner/#")
        await ai.publish(T.cmd_from("ai-planner"), _status("x1"),
                         properties=response_properties(target, b"corr-x1"))
        own = "labctl/bench-a/reply/ai-planner/x1"
        reply = json.loads((await ai.wait_for(own))[0])
        assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
        assert reply["error"]["path"] == "response_topic"
        # still serving, on the same connection
        await ai.publish(T.cmd_from("ai-planner"), _status("x2"))
        ok = json.loads((await ai.wait_for("labctl/bench-a/reply/ai-planner/x2"))[0])
        assert ok["ok"] is True
        assert served.agent.connections == 1
        assert served.agent.stats["forbidden_reply_topic"] == 1


# ------------------------------------------------------------ 2. owners, roles, fakes
async def test_a_client_cannot_fake_another_clients_result(shipped_broker, tmp_path) -> None:
    url = shipped_broker.url
    async with serve_bench(url, tmp_path / "runs", bench_id=BENCH, **creds(BENCH)), \
            BenchClient(url, BENCH, **creds("ai-optimiser")) as victim, \
            Raw(url, "planner", **creds("ai-planner")) as attacker:
        await attacker.subscribe("labctl/bench-a/reply/ai-planner/#")
        run = await victim.submit(WAIT_RECIPE, {"duration": "20 min"}, request="req-v")
        # the attacker asks the bench to publish a status reply onto the victim's result
        await attacker.publish(T.cmd_from("ai-planner"), _status("fake-1"),
                               properties=response_properties(T.result(run.run_id), b"x"))
        refusal = json.loads((await attacker.wait_for(
            "labctl/bench-a/reply/ai-planner/fake-1"))[0])
        assert refusal["error"]["code"] == "forbidden"
        result = await run.result(timeout=WAIT)
        assert result["status"] == "completed" and result["request_id"] == "req-v"
        assert victim.result_deliveries[run.run_id] == 1
        # and the broker does not let it read the victim's replies either
        assert attacker.on(victim.inbox) == []


async def test_only_the_owner_or_an_operator_controls_a_run(shipped_broker, tmp_path) -> None:
    url = shipped_broker.url
    async with serve_bench(url, tmp_path / "runs", bench_id=BENCH, operators=("operator-alice",),
                           **creds(BENCH)) as served, \
            BenchClient(url, BENCH, **creds("ai-optimiser")) as owner, \
            BenchClient(url, BENCH, **creds("ai-planner")) as other, \
            BenchClient(url, BENCH, **creds("operator-alice")) as operator:
        # the payload claims another client: the owner is still the broker username
        r1 = await owner.submit(WAIT_RECIPE, {"duration": "2 h"},
                                request={"id": "req-1", "client": "ai-planner"})
        r2 = await owner.submit(WAIT_RECIPE, {"duration": "1 s"})
        await eventually(lambda: served.bench.status()["state"] == "running", what="running")
        for attempt in (other.cancel(r2.run_id), other.abort(), other.pause()):
            with pytest.raises(CommandError) as refused:
                await attempt
            assert refused.value.code == "forbidden"
            assert "ai-optimiser" in refused.value.message
        assert served.bench.queue_position(r2.run_id) == 1  # untouched
        assert (await other.status())["owner"] == "ai-optimiser"
        rows = {r["run_id"]: r for r in await other.list()}
        assert rows[r1.run_id]["owner"] == rows[r2.run_id]["owner"] == "ai-optimiser"
        # the owner may; an operator may
        await owner.cancel(r2.run_id)
        await operator.pause()
        await eventually(lambda: served.bench.status()["state"] == "paused", what="paused")
        await operator.resume()
        await eventually(lambda: served.bench.status()["state"] == "running", what="resumed")
        # e-stop is open to every authorised client
        await other.estop()
        result = await r1.result(timeout=WAIT)
        assert result["status"] == "aborted"
        who = result["provenance"]["instigator"]
        assert who["owner"] == "ai-optimiser" and who["id"] == "ai-optimiser"
        assert who["request"]["client"] == "ai-planner"  # kept: what the payload claimed
        # releasing the held queue is the operator's (or the owner of every queued run's)
        await operator.resume()
        await eventually(lambda: served.bench.status()["state"] == "idle", what="released")


# --------------------------------------------------------------- 3. client id takeover
async def test_a_client_using_the_agents_client_id_cannot_take_its_place(
        shipped_broker, tmp_path: Path) -> None:
    url = shipped_broker.url
    async with serve_bench(url, tmp_path / "runs", bench_id=BENCH, **creds(BENCH)) as served, \
            BenchClient(url, BENCH, **creds("ai-optimiser")) as c:
        settings = BrokerSettings.from_url(url, **creds("ai-planner"))
        async with MqttClient(settings, served.agent.client_id, clean_start=False,
                              session_expiry_s=3600) as intruder:
            await intruder.subscribe("labctl/#", qos=1)
            status = await c.status()
            assert status["bench_id"] == BENCH
            got = []

            async def collect() -> None:
                async for m in intruder.messages:
                    got.append(str(m.topic))

            reader = asyncio.create_task(collect())
            run = await c.submit(WAIT_RECIPE, {"duration": "1 s"})
            assert (await run.result(timeout=WAIT))["status"] == "completed"
            reader.cancel()
        assert served.agent.connections == 1  # never kicked off
        assert not [t for t in got if "/cmd" in t or "/reply/" in t]


# ------------------------------------------------------- 4. control beside the submits
async def test_status_is_not_queued_behind_submits(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "broker") as broker:
        async with serve_bench(broker.url, tmp_path / "runs"), \
                Raw(broker.url, "ai") as ai:
            t = Topics("sim-bench-1")
            await ai.subscribe(f"{t.prefix}/reply/#")
            for i in range(20):
                await ai.publish(t.cmd, json.dumps({
                    "id": f"sub-{i}", "command": "submit", "recipe": WAIT_RECIPE,
                    "parameters": {"duration": "2 h"}}).encode())
            await ai.publish(t.cmd, _status("st"))
            await ai.wait_for(t.reply("sub-19"))
            await ai.wait_for(t.reply("st"))
            order = [topic for topic, _, _ in ai.messages if "/reply/" in topic]
            assert order.index(t.reply("st")) < order.index(t.reply("sub-19")), order
            assert all(json.loads(ai.on(t.reply(f"sub-{i}"))[0])["ok"] for i in range(20))

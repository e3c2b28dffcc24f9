"""Credentials and the shipped ACL (config/mosquitto/acl) on a real mosquitto: AI clients
command any bench on their own cmd/<username> topic and read their own replies and what
benches publish for all; a bench publishes only under its own prefix; nobody without
credentials gets in."""

from __future__ import annotations

from pathlib import Path

import aiomqtt
import pytest
from mqtt_broker import SHIPPED_ACL, MosquittoBroker
from mqtt_helpers import WAIT, WAIT_RECIPE, Raw, serve_bench

from labctl.client import BenchClient
from labctl.mqtt.connection import BrokerSettings, MqttClient, PublishRefused
from labctl.mqtt.topics import Topics

USERS = {"bench-a": "pw-a", "bench-b": "pw-b", "ai-planner": "pw-ai",
         "ai-optimiser": "pw-opt"}
A, B = Topics("bench-a"), Topics("bench-b")
NOT_AUTHORIZED = 0x87


@pytest.fixture
def secure_broker(tmp_path: Path):
    with MosquittoBroker(tmp_path / "broker", users=USERS, acl=SHIPPED_ACL) as b:
        yield b


async def test_ai_client_drives_a_bench_through_the_acl(secure_broker, tmp_path) -> None:
    async with serve_bench(secure_broker.url, tmp_path / "runs", bench_id="bench-a",
                           username="bench-a", password="pw-a"), \
            BenchClient(secure_broker.url, "bench-a", username="ai-planner",
                        password="pw-ai") as c:
        run = await c.submit(WAIT_RECIPE, {"duration": "1 s"}, request="req-acl")
        result = await run.result(timeout=WAIT)
        assert result["status"] == "completed" and result["request_id"] == "req-acl"
        assert (await c.status())["bench_id"] == "bench-a"


@pytest.mark.parametrize("user, topic", [
    ("bench-b", A.status),            # another bench's prefix
    ("bench-b", A.result("r1")),
    ("bench-b", A.cmd),               # benches do not command benches
    ("bench-b", A.cmd_from("bench-b")),
    ("ai-planner", A.cmd),            # not the bare cmd (no sender)
    ("ai-planner", A.cmd_from("ai-optimiser")),  # not as someone else
    ("ai-planner", A.reply("c1")),
    ("ai-planner", A.agent),
    ("ai-planner", A.status),         # AI clients publish commands only
    ("ai-planner", A.result("r1")),
    ("ai-planner", "elsewhere/x"),
])
async def test_unauthorised_publishes_are_refused_by_the_broker(
        secure_broker, user: str, topic: str) -> None:
    settings = BrokerSettings.from_url(secure_broker.url, username=user, password=USERS[user])
    # watchers that may read the bench's public topics (an AI client) and its commands
    # (the bench itself): between them, every forged publish would be seen
    async with Raw(secure_broker.url, "watcher", username="ai-optimiser",
                   password="pw-opt") as w, \
            Raw(secure_broker.url, "watcher-a", username="bench-a", password="pw-a") as wa:
        await w.subscribe("labctl/#")
        await wa.subscribe("labctl/#")
        await w.subscribe("elsewhere/#")
        async with MqttClient(settings, f"{user}-intruder") as intruder:
            with pytest.raises(PublishRefused) as info:
                await intruder.publish_checked(topic, b'{"forged": true}', qos=1, retain=True)
            assert info.value.reason_value == NOT_AUTHORIZED
            # an allowed publish after it, each watcher sees one: they would have seen it
            await intruder.publish_checked(B.status if user == "bench-b" else A.cmd_from(user),
                                           b'{"marker": 1}', qos=1)
            await intruder.publish_checked(B.events if user == "bench-b" else A.cmd_from(user),
                                           b'{"marker": 2}', qos=1)
        if user == "bench-b":
            await w.wait_for(B.events)
        else:
            await wa.wait_for(A.cmd_from(user), count=2)
        assert w.on(topic) == [] and wa.on(topic) == []


async def test_bench_may_publish_under_its_own_prefix_only(secure_broker) -> None:
    settings = BrokerSettings.from_url(secure_broker.url, username="bench-a", password="pw-a")
    async with MqttClient(settings, "bench-a-agent") as bench:
        for topic in (A.status, A.events, A.online, A.agent, A.reply("c1"),
                      f"{A.reply_namespace('ai-planner')}c1", A.result("r1")):
            await bench.publish_checked(topic, b"{}", qos=1)
        with pytest.raises(PublishRefused):
            await bench.publish_checked(B.online, b"online", qos=1)


@pytest.mark.parametrize("creds", [{}, {"username": "ai-planner", "password": "wrong"},
                                   {"username": "mallory", "password": "x"}])
async def test_no_credentials_no_connection(secure_broker, creds: dict) -> None:
    settings = BrokerSettings.from_url(secure_broker.url, **creds)
    with pytest.raises(aiomqtt.MqttError):
        async with MqttClient(settings, "anon"):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with BenchClient(secure_broker.url, "bench-a", timeout=10, **creds):
            pass


async def test_ai_clients_read_their_own_replies_only(secure_broker) -> None:
    """Replies go to labctl/<bench>/reply/<username>/...: nobody reads another's, nor the
    commands a bench receives."""
    a_settings = BrokerSettings.from_url(secure_broker.url, username="bench-a", password="pw-a")
    async with Raw(secure_broker.url, "spy", username="ai-planner", password="pw-ai") as spy, \
            Raw(secure_broker.url, "peer", username="ai-optimiser", password="pw-opt") as peer, \
            MqttClient(a_settings, "bench-a-agent") as bench:
        await spy.subscribe("labctl/#")
        await peer.subscribe("labctl/#")
        await peer.publish(A.cmd_from("ai-optimiser"), b'{"id": "p1", "command": "status"}')
        await bench.publish_checked(f"{A.reply_namespace('ai-optimiser')}p1", b"{}", qos=1)
        await bench.publish_checked(f"{A.reply_namespace('ai-planner')}own", b"{}", qos=1)
        await bench.publish_checked(A.status, b"{}", qos=1)
        await spy.wait_for(A.status)
        await spy.wait_for(f"{A.reply_namespace('ai-planner')}own")
        await peer.wait_for(f"{A.reply_namespace('ai-optimiser')}p1")
        assert [t for t, _, _ in spy.messages if "ai-optimiser" in t] == []
        assert [t for t, _, _ in spy.messages + peer.messages if "/cmd" in t] == []

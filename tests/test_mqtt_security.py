"""Credentials and the shipped ACL (config/mosquitto/acl) on a real mosquitto: AI clients
command any bench and read everything; a bench publishes only under its own prefix; nobody
without credentials gets in."""

from __future__ import annotations

from pathlib import Path

import aiomqtt
import pytest
from mqtt_broker import SHIPPED_ACL, MosquittoBroker
from mqtt_helpers import WAIT, WAIT_RECIPE, Raw, serve_bench

from labctl.client import BenchClient
from labctl.mqtt.connection import BrokerSettings, MqttClient, PublishRefused
from labctl.mqtt.topics import Topics

USERS = {"bench-a": "pw-a", "bench-b": "pw-b", "ai-planner": "pw-ai"}
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
    ("ai-planner", A.status),         # AI clients publish commands only
    ("ai-planner", A.result("r1")),
    ("ai-planner", "elsewhere/x"),
])
async def test_unauthorised_publishes_are_refused_by_the_broker(
        secure_broker, user: str, topic: str) -> None:
    settings = BrokerSettings.from_url(secure_broker.url, username=user, password=USERS[user])
    async with Raw(secure_broker.url, "watcher", username="ai-planner", password="pw-ai") as w:
        await w.subscribe("labctl/#")
        await w.subscribe("elsewhere/#")
        async with MqttClient(settings, f"{user}-intruder") as intruder:
            with pytest.raises(PublishRefused) as info:
                await intruder.publish_checked(topic, b'{"forged": true}', qos=1, retain=True)
            assert info.value.reason_value == NOT_AUTHORIZED
            # an allowed publish after it, so we know the watcher would have seen the forgery
            marker = B.status if user == "bench-b" else B.cmd
            await intruder.publish_checked(marker, b'{"marker": 1}', qos=1)
        await w.wait_for(marker)
        assert w.on(topic) == []


async def test_bench_may_publish_under_its_own_prefix_only(secure_broker) -> None:
    settings = BrokerSettings.from_url(secure_broker.url, username="bench-a", password="pw-a")
    async with MqttClient(settings, "bench-a-agent") as bench:
        for topic in (A.status, A.events, A.online, A.reply("c1"), A.result("r1")):
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

"""labctl's MQTT connection against a real mosquitto: a packet published on the event loop's
thread is on the socket when `publish` returns (aiomqtt alone sent it two loop turns later,
behind whatever else was ready: the reply to a submit waited for the run it had queued),
and the connection still works through what the socket does not take at once."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiomqtt
from mqtt_broker import MosquittoBroker

from labctl.mqtt.connection import BrokerSettings, MqttClient


async def test_a_publish_on_the_loop_is_written_before_the_loop_turns(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "broker") as broker:
        settings = BrokerSettings.from_url(broker.url)
        async with MqttClient(settings, "writer") as writer, \
                MqttClient(settings, "reader") as reader:
            await reader.subscribe("t/now", qos=1)
            info = writer._client.publish("t/now", b"x", qos=1)
            # no await since: the loop has not turned, and nothing is left to write
            assert info.rc == 0
            assert not writer._client.want_write()
            message = await asyncio.wait_for(anext(aiter(reader.messages)), 10)
            assert message.payload == b"x"


async def test_a_burst_larger_than_the_socket_buffer_arrives_whole_and_in_order(
        tmp_path: Path) -> None:
    """What the socket does not take at once waits for a writer and goes out after."""
    with MosquittoBroker(tmp_path / "broker") as broker:
        settings = BrokerSettings.from_url(broker.url)
        async with MqttClient(settings, "writer") as writer, \
                MqttClient(settings, "reader") as reader:
            await reader.subscribe("t/burst", qos=1)
            sock = writer._client.socket()
            assert sock is not None
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # a small send buffer
            payload = bytes(200_000)
            for i in range(40):  # 8 MB in one loop turn: more than the socket takes at once
                writer._client.publish("t/burst", i.to_bytes(2, "big") + payload, qos=1)
            assert writer._client.want_write()  # the rest waits for the socket
            got: list[int] = []
            messages = aiter(reader.messages)
            while len(got) < 40:
                message: aiomqtt.Message = await asyncio.wait_for(anext(messages), 30)
                assert isinstance(message.payload, bytes)
                got.append(int.from_bytes(message.payload[:2], "big"))
            assert got == list(range(40))

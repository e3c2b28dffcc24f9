"""One tuned MQTT 5 connection (aiomqtt) shared by the agent, the client SDK and the bench
script: broker URL parsing, credentials and TLS, persistent sessions, TCP_NODELAY, PUBACK
reason codes surfaced, and manual acknowledgement of incoming QoS 1 messages.

Why the extras: aiomqtt drops the PUBACK reason code (so an ACL refusal would look like
success), acknowledges incoming messages before the application has acted on them (a crash
then loses a command), and leaves Nagle's algorithm on (a QoS 1 round trip then waits for the
peer's delayed ACK, ~40-80 ms instead of ~1 ms), and writes every outgoing packet only two
loop turns after it was published (behind whatever became ready meanwhile: the reply to a
submit waited for the run it had queued to start).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


class PublishRefused(aiomqtt.MqttError):
    """The broker acknowledged a QoS 1 publish with a failure reason code (e.g. 0x87 Not
    authorized from an ACL)."""

    def __init__(self, topic: str, reason: ReasonCode):
        self.topic = topic
        self.reason = reason
        self.reason_value = int(reason.value)
        super().__init__(f"broker refused publish to {topic!r}: {reason} "
                         f"(reason code 0x{self.reason_value:02X})")


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect: `mqtt://host:port` or `mqtts://host:port` (TLS)."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    keepalive: int = 30

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> BrokerSettings:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        tls = parts.scheme in ("mqtts", "ssl") or bool(kw.get("tls_ca") or kw.get("tls_cert"))
        port = parts.port or (8883 if tls else 1883)
        if parts.username and kw.get("username") is None:
            kw["username"] = unquote(parts.username)
        if parts.password and kw.get("password") is None:
            kw["password"] = unquote(parts.password)
        return cls(host=parts.hostname or "127.0.0.1", port=port, tls=tls, **kw)

    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx


def read_password_file(path: str | Path) -> str:
    """The first line of a file (so the password stays out of the process list)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return lines[0].strip() if lines else ""


class MqttClient(aiomqtt.Client):
    """aiomqtt.Client on MQTT 5 with a persistent session and the fixes described above."""

    def __init__(
        self,
        settings: BrokerSettings,
        identifier: str,
        *,
        session_expiry_s: int = 0,
        clean_start: bool = False,
        will: aiomqtt.Will | None = None,
        manual_ack: bool = False,
        timeout: float = 10.0,
    ):
        props = Properties(PacketTypes.CONNECT)
        if session_expiry_s:
            props.SessionExpiryInterval = int(session_expiry_s)
        super().__init__(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password,
            identifier=identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=clean_start,
            properties=props,
            will=will,
            keepalive=settings.keepalive,
            tls_context=settings.tls_context(),
            socket_options=NODELAY,
            timeout=timeout,
        )
        self.pending_calls_threshold = 10_000  # events are pipelined on purpose
        self._refusals: dict[int, ReasonCode] = {}
        self._manual_ack = manual_ack
        if manual_ack:
            self._client.manual_ack_set(True)
        #: topics whose messages are kept here (last one each, with properties) instead of
        #: being queued for `messages`: read synchronously, in arrival order
        self.latched: dict[str, tuple[bytes, Properties | None] | None] = {}

    def latch(self, *topics: str) -> None:
        for topic in topics:
            self.latched.setdefault(topic, None)

    def _on_message(self, client: paho.Client, userdata: Any, message: Any) -> None:
        if message.topic in self.latched:
            self.latched[message.topic] = (bytes(message.payload),
                                           getattr(message, "properties", None))
            if self._manual_ack and message.qos > 0:
                self._client.ack(message.mid, message.qos)
            return
        super()._on_message(client, userdata, message)

    async def wait_disconnected(self, timeout: float) -> bool:
        """True when the connection ends within `timeout` (e.g. another client took over
        this client id), False when it is still up."""
        await asyncio.wait({self._disconnected}, timeout=timeout)
        return self._disconnected.done()

    # --- writing -------------------------------------------------------------------
    def _on_socket_register_write(self, client: paho.Client, userdata: Any,
                                  sock: Any) -> None:
        """paho has a packet to send. aiomqtt schedules a writer with call_soon_threadsafe,
        which sends it two loop turns later; on the loop's own thread, outside paho's
        callbacks, write it now (as paho does without an external loop) and watch the
        socket only for what did not fit."""
        loop = self._loop
        if not self._on_loop_thread() or not client._in_callback_mutex.acquire(False):
            super()._on_socket_register_write(client, userdata, sock)
            return
        client._in_callback_mutex.release()

        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # a broken connection: aiomqtt's way of saying so
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        write()
        # what is left waits for the socket; paho unregisters when it has written it all
        current = client.socket()
        if client.want_write() and current is not None and current is sock \
                and current.fileno() >= 0:
            loop.add_writer(current.fileno(), write)

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:  # paho's connect runs in an executor thread
            return False

    # --- PUBACK reason codes -------------------------------------------------------
    def _on_publish(self, client: paho.Client, userdata: Any, mid: int,
                    reason_code: ReasonCode, properties: Properties) -> None:
        if reason_code.is_failure:
            self._refusals[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_checked(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish and wait for the PUBACK; raise PublishRefused when the broker refused it,
        aiomqtt.MqttError when the connection failed first."""
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, f"could not publish to {topic}")
        if qos > 0 and not info.is_published():
            done = asyncio.Event()
            with self._pending_call(info.mid, done, self._pending_publishes):
                await self._wait_for(self._first(done.wait()), timeout=timeout)
        reason = self._refusals.pop(info.mid, None)
        if reason is not None:
            raise PublishRefused(topic, reason)

    async def _first(self, waiting: Any) -> None:
        """Wait for `waiting`, or fail as soon as the connection drops."""
        task = asyncio.ensure_future(waiting)
        try:
            await asyncio.wait({task, self._disconnected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not task.done() or task.cancelled():
            raise aiomqtt.MqttError("connection lost before the broker acknowledged")

    # --- manual acknowledgement ----------------------------------------------------
    def ack(self, message: aiomqtt.Message) -> None:
        """Acknowledge an incoming QoS>0 message once it has been acted on (manual_ack)."""
        if self._manual_ack and message.qos > 0:
            self._client.ack(message.mid, message.qos)


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel a task and wait until it has ended. Cancels again while it lives on: on
    Python < 3.12 asyncio.wait_for (which aiomqtt awaits PUBACKs with) can swallow a
    cancellation that races with the completion of what it waits for."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    with contextlib.suppress(BaseException):
        task.result()


def response_properties(response_topic: str, correlation: bytes) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    return props


def correlation_properties(correlation: bytes | None) -> Properties | None:
    if correlation is None:
        return None
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = correlation
    return props


def subscribe_options(qos: int = 1, *, retain_handling: int = 0) -> Any:
    """SubscribeOptions; retain_handling=1 sends retained messages only on a new
    subscription (so re-subscribing after a reconnect does not replay them)."""
    from paho.mqtt.subscribeoptions import SubscribeOptions

    return SubscribeOptions(qos=qos, retainHandling=retain_handling)

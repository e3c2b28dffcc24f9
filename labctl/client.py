"""Async client SDK for AI servers: drive a bench over MQTT in a few lines.

    async with BenchClient("mqtt://broker:1883", "sim-bench-1") as bench:
        run = await bench.submit("electrolyte_conductivity", {"salt_mass": "0.3 g"},
                                 request={"id": "req-42"})
        result = await run.result()

Commands go on `labctl/<bench>/cmd/<username>` (the bare `cmd` without a username), and ask
their replies under the client's own reply namespace `labctl/<bench>/reply/<username>/`: the
agent takes the sender from the topic level the broker's ACL ties to the username, and
refuses reply topics outside it. With the shipped broker configuration
(`use_username_as_clientid true`) a username has one connection at a time: one BenchClient
per username and bench, or one username per process.

Every command carries a unique id and an MQTT 5 response topic with correlation data. The
connection comes back by itself after a broker restart or a network drop; commands still
waiting for their reply are sent again with the same id, which the agent answers from its
record instead of acting twice. A command can be lost on the broker's side without this
client noticing (a broker that crashed lost the agent's session, and the resend reached it
before the agent subscribed again), so an unanswered command also goes again whenever the
agent announces itself online (it subscribes before it says so), and every so often with
backoff (`resend_after_s`, doubling up to RESEND_MAX_S) until answered or timed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from labctl.mqtt.connection import (
    BrokerSettings,
    MqttClient,
    PublishRefused,
    cancel_and_wait,
    subscribe_options,
)
from labctl.mqtt.payloads import (
    AbortCommand,
    CancelCommand,
    EstopCommand,
    InventoryCommand,
    ListCommand,
    PauseCommand,
    RequestInfo,
    ResumeCommand,
    SamplesCommand,
    StatusCommand,
    SubmitCommand,
    ValidateCommand,
)
from labctl.mqtt.topics import ANONYMOUS, Topics
from labctl.problems import BenchError, ErrorCode, Issue
from labctl.protocol import Control, RecipeInput, Submitted

log = logging.getLogger("labctl.client")

RESEND_MAX_S = 30.0
"""Longest pause between two sends of an unanswered command."""


class CommandError(BenchError):
    """The bench answered ok: false (or the broker refused the command): the BenchError
    the bench raised, with the reply it came in."""

    def __init__(self, code: str, message: str, *, path: str | None = None,
                 reply: dict[str, Any] | None = None):
        self.reply = reply or {}
        issues = [Issue(str(i.get("path") or ""), str(i.get("message") or ""))
                  for i in self.reply.get("issues") or [] if isinstance(i, dict)]
        super().__init__(cast(ErrorCode, code), message, path=path, issues=issues)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Run(Submitted):
    """A submitted run: its id, where it stood in the queue, and its result to come."""

    def __init__(self, client: BenchClient, run_id: str, queue_position: int | None,
                 command_id: str, reply: dict[str, Any]):
        super().__init__(run_id=run_id, queue_position=queue_position)
        self.client = client
        self.command_id = command_id
        self.reply = reply

    async def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The result payload (status, figures of merit, request id, provenance summary)."""
        fut = self.client._result_future(self.run_id)
        await self.client._ensure_subscribed(self.client.topics.result(self.run_id))
        return await asyncio.wait_for(asyncio.shield(fut), timeout)

    async def cancel(self) -> dict[str, Any]:
        return await self.client.cancel(self.run_id)

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, queue_position={self.queue_position})"


class BenchClient:
    """One AI client's connection to one bench, through the broker: the bench-service
    protocol (labctl.protocol.BenchService) over MQTT."""

    def __init__(
        self,
        broker_url: str,
        bench_id: str,
        *,
        client_id: str | None = None,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        timeout: float = 30.0,
        session_expiry_s: int = 600,
        backoff_max_s: float = 5.0,
        resend_after_s: float = 2.0,
    ):
        self.settings = BrokerSettings.from_url(broker_url, username=username, password=password,
                                                tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
        self.topics = Topics(bench_id)
        self.bench_id = bench_id
        self.client_id = client_id or f"labctl-client-{uuid.uuid4().hex[:12]}"
        self.timeout = timeout
        self.session_expiry_s = session_expiry_s
        self.backoff_max_s = backoff_max_s
        #: an unanswered command is sent again after this long, then twice as long...
        self.resend_after_s = resend_after_s
        #: sends beyond the first, for every command (tests and diagnostics)
        self.resends = 0
        #: who the agent will take us for: the broker username (enforced by the ACL)
        self.sender = self.settings.username or ANONYMOUS
        self.cmd_topic = self.topics.cmd_from(self.settings.username)
        self.inbox = self.topics.reply_inbox(self.sender, self.client_id)
        self._listeners: list[Any] = []
        self.connected = asyncio.Event()
        self.connections = 0
        self.result_deliveries: dict[str, int] = {}
        self._client: MqttClient | None = None
        self._subscriptions: set[str] = {self.inbox, self.topics.online}
        self.bench_online = asyncio.Event()
        self._background: set[asyncio.Future[None]] = set()
        self._pending: dict[str, tuple[asyncio.Future[dict[str, Any]], bytes]] = {}
        self._results: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._event_queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._closing = False

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> BenchClient:
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._task = asyncio.create_task(self._connection_loop(), name="bench-client")
        try:
            await asyncio.wait_for(asyncio.shield(self._first), self.timeout)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.cancel()

    async def _connection_loop(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                client = MqttClient(self.settings, self.client_id,
                                    session_expiry_s=self.session_expiry_s, clean_start=False)
                async with client:
                    self.connections += 1
                    self._client = client
                    for topic in sorted(self._subscriptions):
                        await client.subscribe(
                            topic, options=subscribe_options(1, retain_handling=1))
                    self.connected.set()
                    delay = 0.1
                    if self._first is not None and not self._first.done():
                        self._first.set_result(None)
                    resend = asyncio.create_task(self._resend_pending(client))
                    try:
                        async for message in client.messages:
                            self._dispatch(message)
                    finally:
                        resend.cancel()
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self._client = None
                if self._first is not None and not self._first.done():
                    self._first.set_exception(exc)  # the first connection must work
                    return
                log.warning("broker %s: %s; reconnecting in %.1f s",
                            self.settings.url(), exc, delay)
                await asyncio.sleep(delay)
                delay = min(self.backoff_max_s, delay * 2)
            finally:
                self.connected.clear()
                self._client = None

    async def _resend_pending(self, client: MqttClient) -> None:
        """After a reconnect, or the agent saying it is online: every command still
        unanswered goes again, same id."""
        for cid, (fut, payload) in list(self._pending.items()):
            if not fut.done():
                self.resends += 1
                try:
                    await client.publish_checked(self.cmd_topic, payload, qos=1,
                                                 properties=self._props(cid))
                except PublishRefused as exc:
                    if not fut.done():
                        fut.set_exception(CommandError("not_authorized", str(exc)))
                except aiomqtt.MqttError:
                    return

    async def _send_again(self, command_id: str, payload: bytes,
                          fut: asyncio.Future[dict[str, Any]]) -> None:
        """One more send of an unanswered command, if connected (else the reconnect
        sends it)."""
        client = self._client
        if client is None or not self.connected.is_set() or fut.done():
            return
        self.resends += 1
        try:
            await client.publish_checked(self.cmd_topic, payload, qos=1,
                                         properties=self._props(command_id))
        except PublishRefused as exc:
            if not fut.done():
                fut.set_exception(CommandError("not_authorized", str(exc)))
        except aiomqtt.MqttError:
            pass  # the reconnect sends it again

    # ------------------------------------------------------------------ incoming
    def _dispatch(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        for listener in list(self._listeners):
            try:
                listener(topic, message.payload)
            except Exception:  # a listener's bug must not stop the replies
                log.exception("listener failed on %s", topic)
        if topic == self.topics.online:
            if message.payload == b"online":
                if self._client is not None:
                    # the agent (re)connected and has subscribed again (it says "online"
                    # only after subscribing, on every connection): what it may have missed
                    # goes again, same ids
                    task = asyncio.ensure_future(self._resend_pending(self._client))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
                self.bench_online.set()
            else:
                self.bench_online.clear()
            return
        try:
            body = json.loads(bytes(message.payload)) if isinstance(
                message.payload, bytes | bytearray) else None
        except ValueError:
            log.warning("non-JSON message on %s ignored", topic)
            return
        if not isinstance(body, dict):
            return
        if topic == self.inbox or topic.startswith(self.topics.reply_namespace(self.sender)):
            cid = body.get("id")
            props = message.properties
            corr = getattr(props, "CorrelationData", None) if props else None
            if corr:
                with contextlib.suppress(UnicodeDecodeError):
                    cid = bytes(corr).decode()
            entry = self._pending.pop(str(cid), None) if cid is not None else None
            if entry and not entry[0].done():
                entry[0].set_result(body)
        elif topic == self.topics.events:
            for q in list(self._event_queues):
                q.put_nowait(body)
        else:
            run_id = self.topics.run_id_of_result(topic)
            if run_id is not None:
                self.result_deliveries[run_id] = self.result_deliveries.get(run_id, 0) + 1
                fut = self._result_future(run_id)
                if not fut.done():
                    fut.set_result(body)

    def _result_future(self, run_id: str) -> asyncio.Future[dict[str, Any]]:
        if run_id not in self._results:
            self._results[run_id] = asyncio.get_running_loop().create_future()
        return self._results[run_id]

    async def _ensure_subscribed(self, topic: str) -> None:
        if topic in self._subscriptions:
            return
        self._subscriptions.add(topic)
        client = self._client
        if client is not None:
            await self._subscribe_quietly(client, topic)

    def _subscribe_soon(self, topic: str) -> None:
        """Subscribe without waiting for the broker's SUBACK (a round trip the submit's
        caller used to wait for after the reply): results are retained, so one published
        before the subscription lands is delivered when it does."""
        if topic in self._subscriptions:
            return
        self._subscriptions.add(topic)
        client = self._client
        if client is None:
            return  # the (re)connect subscribes to every topic in _subscriptions
        task = asyncio.ensure_future(self._subscribe_quietly(client, topic))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _subscribe_quietly(client: MqttClient, topic: str) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # the reconnect subscribes again
            await client.subscribe(topic, options=subscribe_options(1, retain_handling=1))

    def add_listener(self, callback: Any) -> None:
        """`callback(topic, payload)` for every message this connection receives (the
        remote TUI watches status, online and events through it: one connection per user)."""
        self._listeners.append(callback)

    async def subscribe(self, topic: str) -> None:
        """Receive `topic` too (kept across reconnects), its retained message included even
        when this connection already had it (a listener added late sees it); see
        add_listener."""
        self._subscriptions.add(topic)
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):  # the reconnect subscribes again
                await client.subscribe(topic, options=subscribe_options(1, retain_handling=0))

    async def retained_result(self, run_id: str, wait_s: float = 2.0) -> dict[str, Any] | None:
        """The retained result of a run, if the broker has one within `wait_s`."""
        fut = self._result_future(run_id)
        await self._ensure_subscribed(self.topics.result(run_id))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), wait_s)
        except TimeoutError:
            return None

    async def wait_online(self, timeout: float | None = None) -> None:
        """Wait until the bench's agent says it is online (its retained `online` topic)."""
        await asyncio.wait_for(self.bench_online.wait(), timeout or self.timeout)

    # ------------------------------------------------------------------ commands
    def _props(self, command_id: str) -> Properties:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.inbox
        props.CorrelationData = command_id.encode()
        props.UserProperty = [("client_id", self.client_id)]
        return props

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    async def send(self, command: Any, *, timeout: float | None = None) -> dict[str, Any]:
        """Send one command model and wait for its reply (raises CommandError on ok: false).
        The same command object sent twice is the same command: the agent answers once."""
        return await self.send_raw(command.model_dump_json(exclude_none=True).encode(),
                                   command.id, timeout=timeout)

    async def send_raw(self, payload: bytes, command_id: str, *,
                       timeout: float | None = None, check: bool = True) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[command_id] = (fut, payload)
        try:
            client = self._client
            if client is not None and self.connected.is_set():
                try:
                    await client.publish_checked(self.cmd_topic, payload, qos=1,
                                                 properties=self._props(command_id))
                except PublishRefused as exc:
                    raise CommandError("not_authorized", str(exc)) from None
                except aiomqtt.MqttError:
                    pass  # resent after the reconnect
            reply = await self._await_reply(command_id, payload, fut, timeout or self.timeout)
        finally:
            self._pending.pop(command_id, None)
        if check and not reply.get("ok"):
            err = reply.get("error") or {}
            raise CommandError(str(err.get("code", "error")), str(err.get("message", "")),
                               path=err.get("path"), reply=reply)
        return reply

    async def _await_reply(self, command_id: str, payload: bytes,
                           fut: asyncio.Future[dict[str, Any]],
                           timeout: float) -> dict[str, Any]:
        """The reply, sending the command again (same id) each time `resend_after_s`,
        doubling, passes without one; TimeoutError after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        gap = max(self.resend_after_s, 0.01)
        while True:
            remaining = deadline - loop.time()
            try:
                return await asyncio.wait_for(asyncio.shield(fut), max(min(gap, remaining), 0))
            except TimeoutError:
                if fut.done() or loop.time() >= deadline:
                    if fut.done():
                        return fut.result()
                    raise
            await self._send_again(command_id, payload, fut)
            gap = min(gap * 2, RESEND_MAX_S)

    async def submit(
        self,
        recipe_or_ref: Mapping[str, Any] | str | Path,
        parameters: Mapping[str, Any] | None = None,
        *,
        request: Mapping[str, Any] | str | None = None,
        command_id: str | None = None,
        priority: int = 0,
    ) -> Run:
        """Queue a run (higher `priority` first). `recipe_or_ref`: an inline recipe
        (dict), a recipe file on this machine (Path, sent inline as data), or the name of a
        recipe in the bench's folder."""
        cmd = SubmitCommand(command="submit", id=command_id or self.new_id(),
                            parameters=dict(parameters or {}), request=_request(request),
                            priority=priority, **_source(recipe_or_ref))
        reply = await self.send(cmd)
        run = Run(self, reply["run_id"], reply.get("queue_position"), cmd.id, reply)
        self._result_future(run.run_id)
        self._subscribe_soon(self.topics.result(run.run_id))
        return run

    async def validate(self, recipe_or_ref: Mapping[str, Any] | str | Path,
                       parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        cmd = ValidateCommand(command="validate", id=self.new_id(),
                              parameters=dict(parameters or {}), **_source(recipe_or_ref))
        return await self.send(cmd)

    async def plan(self, recipe_or_ref: RecipeInput,
                   parameters: Mapping[str, Any] | None = None) -> list[Issue]:
        """Validate only: every issue the bench found (none: it would run)."""
        try:
            await self.validate(recipe_or_ref, parameters)
        except CommandError as exc:
            if exc.code != "invalid_recipe":
                raise
            return exc.issues
        return []

    async def control(self, command: Control, run_id: str | None = None) -> None:
        """pause, resume, abort `run_id` (None: every running run); estop the bench;
        cancel `run_id` (a queued run)."""
        if command == "cancel":
            if run_id is None:
                raise BenchError("bad_payload", "cancel needs a run id", path="run_id")
            await self.cancel(run_id)
            return
        if command == "estop":
            await self.estop()
            return
        await {"pause": self.pause, "resume": self.resume, "abort": self.abort}[command](run_id)

    async def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self.list(limit)

    async def status(self) -> dict[str, Any]:
        reply = await self.send(StatusCommand(command="status", id=self.new_id()))
        return dict(reply.get("status") or {})

    async def list(self, limit: int = 50) -> list[dict[str, Any]]:
        reply = await self.send(ListCommand(command="list", id=self.new_id(), limit=limit))
        return list(reply.get("runs") or [])

    async def inventory(self, action: str = "show", *, vessel: str | None = None,
                        material: str | None = None, amount: str | None = None,
                        lot: str | None = None) -> dict[str, Any]:
        """The bench's inventory levels (after a refill or set: operators only)."""
        reply = await self.send(InventoryCommand(
            command="inventory", id=self.new_id(), action=action,  # type: ignore[arg-type]
            vessel=vessel, material=material, amount=amount, lot=lot))
        return dict(reply.get("inventory") or {})

    async def samples(self, action: str = "list", sample_id: str | None = None
                      ) -> Sequence[dict[str, Any]]:
        """The bench's samples, or [one sample] with its chain of origin (show)."""
        reply = await self.send(SamplesCommand(command="samples", id=self.new_id(),
                                               action=action,  # type: ignore[arg-type]
                                               sample_id=sample_id))
        return tuple(reply.get("samples") or ())

    async def pause(self, run_id: str | None = None) -> dict[str, Any]:
        return await self.send(PauseCommand(command="pause", id=self.new_id(), run_id=run_id))

    async def resume(self, run_id: str | None = None) -> dict[str, Any]:
        return await self.send(ResumeCommand(command="resume", id=self.new_id(),
                                             run_id=run_id))

    async def abort(self, run_id: str | None = None) -> dict[str, Any]:
        return await self.send(AbortCommand(command="abort", id=self.new_id(), run_id=run_id))

    async def estop(self) -> dict[str, Any]:
        return await self.send(EstopCommand(command="estop", id=self.new_id()))

    async def cancel(self, run_id: str) -> dict[str, Any]:
        return await self.send(CancelCommand(command="cancel", id=self.new_id(), run_id=run_id))

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Run events as the bench publishes them, from now on."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._event_queues.add(queue)
        try:
            await self._ensure_subscribed(self.topics.events)
            while True:
                yield await queue.get()
        finally:
            self._event_queues.discard(queue)


def _source(recipe_or_ref: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(recipe_or_ref, Path):
        return {"recipe": json.loads(recipe_or_ref.read_text(encoding="utf-8"))}
    if isinstance(recipe_or_ref, str):
        return {"recipe_ref": recipe_or_ref}
    return {"recipe": dict(recipe_or_ref)}


def _request(request: Mapping[str, Any] | str | None) -> RequestInfo | None:
    if request is None:
        return None
    if isinstance(request, str):
        return RequestInfo(id=request)
    return RequestInfo(**dict(request))

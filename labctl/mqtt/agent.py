"""The MQTT agent: serves one bench to AI clients through a broker (`labctl serve`).

Exactly once, in effect: incoming commands are acknowledged to the broker (manual PUBACK)
only after they have been acted on and their reply remembered in the run index, so a crash
or a dropped link makes the broker redeliver them, and a command id seen before gets its
first reply again and starts nothing. Results go through a durable outbox and are removed
only after the broker's PUBACK. The connection is the only thing that comes and goes: the
bench (and the run in progress) lives outside it.

Every accepted submit ends with exactly one published result, even across a crash of this
process: at start-up the bench closes the run that was in progress as "interrupted" (its
in-doubt steps named, `labctl resume RUN_ID` for an operator; nothing is re-run by itself)
and queues again the runs that were queued and never started (see labctl.bench). Results of
runs that ended while no event reached the outbox (those, or a run that ended just before a
kill) are swept into the outbox on every connection; the outbox keeps one result per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from labctl.mqtt.connection import (
    BrokerSettings,
    MqttClient,
    PublishRefused,
    cancel_and_wait,
    correlation_properties,
    subscribe_options,
)
from labctl.mqtt.outbox import Outbox
from labctl.mqtt.payloads import (
    AbortCommand,
    AgentPayload,
    CancelCommand,
    ErrorInfo,
    EstopCommand,
    EventPayload,
    InventoryCommand,
    ListCommand,
    PauseCommand,
    PayloadError,
    Reply,
    ResultPayload,
    ResumeCommand,
    SamplesCommand,
    StatusCommand,
    StatusPayload,
    SubmitCommand,
    ValidateCommand,
    decode_command,
)
from labctl.mqtt.port import AgentPort, CommandReply
from labctl.mqtt.topics import Topics
from labctl.problems import BenchError, wire_code
from labctl.progress import STATE_CHANGE_EVENTS as STATE_CHANGES
from labctl.protocol import RecipeInput

log = logging.getLogger("labctl.mqtt.agent")

TAKEOVER_WAIT_S = 3.0
"""A starting agent that finds another agent's last will listens this long for that agent
taking its connection (same client id) back before it takes control."""


class ControllerConflict(Exception):
    """Another agent controls this bench through the same broker: this one must stop."""

    def __init__(self, other: dict[str, Any], why: str):
        self.other = other
        super().__init__(
            f"bench {other.get('bench_id')} is controlled by another labctl serve: host "
            f"{other.get('host')}, pid {other.get('pid')}, since {other.get('since')} "
            f"(instance {other.get('instance')}, client id {other.get('client_id')}), which "
            f"{why}. Only one agent may control a bench; this one stops without acting on "
            "any command. If that agent is gone, the broker ends its connection within "
            "1.5 x its keepalive (45 s by default): start again after that.")

EVENT_BUFFER = 10_000
"""Events kept while the broker is away (oldest dropped first; `seq` shows the gap)."""
EVENT_BATCH = 64
"""Events in flight at once (QoS 1, acknowledged together)."""
READ_ONLY = (StatusCommand, ListCommand, ValidateCommand)
"""Commands that change nothing: their replies are remembered in memory, not in the index."""
RECENT_READ_ONLY = 10_000
RECOVER_LIMIT = 1000
"""Newest runs looked at for a result that never reached the outbox."""
ENDED = frozenset({"completed", "failed", "aborted", "cancelled", "interrupted"})
POLL_GAP_S = 0.2
"""Least time between two device polls: a state change asks for a poll at once, and a run
changes state many times a second (each step's start and end, each transition); polling
every device each time kept the event loop busy just when a command's reply was due."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Agent:
    """`await Agent(port, BrokerSettings.from_url(url), bench_id="b1", data_dir=d).run()`."""

    def __init__(
        self,
        port: AgentPort,
        broker: BrokerSettings,
        *,
        bench_id: str,
        data_dir: str | Path,
        client_id: str | None = None,
        session_expiry_s: int = 7 * 24 * 3600,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 10.0,
        device_poll_s: float = 1.0,
        operators: Iterable[str] = (),
        takeover_wait_s: float = TAKEOVER_WAIT_S,
    ):
        self.port = port
        #: broker usernames with the operator role (may control any run); others are "ai"
        self.operators = frozenset(operators)
        #: how long a starting agent listens for another agent taking its connection back
        self.takeover_wait_s = takeover_wait_s
        self.instance = {"instance": uuid.uuid4().hex, "host": socket.gethostname(),
                         "pid": os.getpid(), "since": utc_now(), "bench_id": bench_id}
        #: how often device readings are refreshed into the retained status (0: never)
        self.device_poll_s = device_poll_s
        self.broker = broker
        self.topics = Topics(bench_id)
        self.bench_id = bench_id
        self.client_id = client_id or f"labctl-agent-{bench_id}"
        self.session_expiry_s = session_expiry_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.outbox = Outbox(Path(data_dir) / "mqtt-outbox.sqlite")
        self.connected = asyncio.Event()
        self.stats: Counter[str] = Counter()
        self.result_publications: Counter[str] = Counter()
        self.connections = 0
        self._events: deque[bytes] = deque(maxlen=EVENT_BUFFER)
        self._seq = 0
        self._wake = asyncio.Event()
        #: a run or step changed state: read the devices again now, not at the next poll
        self._poll_now = asyncio.Event()
        self._status_dirty = True
        self._last_status: str | None = None
        self._stopping = asyncio.Event()
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._host = socket.gethostname()
        self.instance["client_id"] = self.client_id
        #: commands being handled, by id: a duplicate arriving meanwhile waits for the reply
        self._inflight: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._established = False

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Serve until stop() (or cancellation); reconnects with backoff meanwhile."""
        pump = asyncio.create_task(self._pump_events(), name="agent-events")
        poll = asyncio.create_task(self._poll_devices(), name="agent-poll")
        try:
            await self._connection_loop()
        finally:
            for acting in list(self._inflight.values()):  # let a started command finish
                await asyncio.wait({acting}, timeout=30)
            await cancel_and_wait(poll)
            await cancel_and_wait(pump)
            self.outbox.close()

    def stop(self) -> None:
        self._stopping.set()

    async def _connection_loop(self) -> None:
        delay = self.backoff_initial_s
        while not self._stopping.is_set():
            try:
                await self._session()
                delay = self.backoff_initial_s
            except aiomqtt.MqttError as exc:
                if self._stopping.is_set():
                    break
                was = self.connected.is_set()
                self.connected.clear()
                if was:
                    delay = self.backoff_initial_s
                    self.stats["connection_lost"] += 1
                if "0x8E" in str(exc) or "taken over" in str(exc).lower():
                    log.error("broker %s: another client connected with this agent's client "
                              "id %s (session taken over); taking it back once (a second "
                              "agent on this bench stops when it sees this one)",
                              self.broker.url(), self.client_id)
                log.warning("broker %s: %s; reconnecting in %.1f s", self.broker.url(), exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(self.backoff_max_s, delay * 2)
        self.connected.clear()

    def _online_props(self, packet: int, reason: str) -> Properties:
        props = Properties(packet)
        props.UserProperty = [("instance", self.instance["instance"]),
                              ("host", str(self.instance["host"])),
                              ("pid", str(self.instance["pid"])),
                              ("since", str(self.instance["since"])), ("reason", reason)]
        return props

    async def _claim(self, client: MqttClient) -> None:
        """Make sure this is the only agent controlling the bench before any command is
        acted on (or acknowledged): the retained `agent` topic names the controller; its
        `online` (retained, last will "offline") says whether it is connected. Raises
        ControllerConflict when another agent controls the bench."""
        client.latch(self.topics.agent, self.topics.online)
        await client.subscribe(self.topics.agent, qos=1)
        await client.subscribe(self.topics.online, qos=1)
        # a second SUBSCRIBE's SUBACK comes after the first one's retained messages
        await client.subscribe(self.topics.online,
                               options=subscribe_options(1, retain_handling=2))
        other = _controller_of(client.latched.get(self.topics.agent))
        if other is None or other.get("instance") == self.instance["instance"]:
            return
        online = client.latched.get(self.topics.online)
        state = online[0] if online else b""
        reason = _user_props(online[1]).get("reason") if online else None
        if state == b"offline" and reason == "stopped":
            return  # the other agent said goodbye
        if self._established:
            if str(other.get("since") or "") > str(self.instance["since"]):
                raise ControllerConflict(other, "took control of the bench while this agent "
                                         "was disconnected")
            return  # an older agent's record, from a broker that lost our own
        if state == b"online" and other.get("client_id") != self.client_id:
            raise ControllerConflict(other, "is connected now (another client id)")
        # Its will, or an "online" with our client id (it cannot be connected now without our
        # connection having taken its place): it died (an "online" then comes from a broker
        # that crashed before the will), or we have just taken its connection, which a live
        # agent takes back at once.
        if await client.wait_disconnected(self.takeover_wait_s):
            raise ControllerConflict(other, "took its connection back")

    async def _session(self) -> None:
        will = aiomqtt.Will(self.topics.online, b"offline", qos=1, retain=True,
                            properties=self._online_props(PacketTypes.WILLMESSAGE, "lost"))
        client = MqttClient(self.broker, self.client_id, session_expiry_s=self.session_expiry_s,
                            clean_start=False, will=will, manual_ack=True)
        async with client:
            self.connections += 1
            try:
                await self._claim(client)
            except ControllerConflict:
                self._stopping.set()
                raise
            body = AgentPayload.model_validate(self.instance).model_dump_json()
            await client.publish_checked(self.topics.agent, body.encode(), qos=1, retain=True)
            for stale in (self.topics.cmd, self.topics.cmd_filter):
                await client.subscribe(stale, qos=1)
            await client.publish_checked(
                self.topics.online, b"online", qos=1, retain=True,
                properties=self._online_props(PacketTypes.PUBLISH, "online"))
            self._established = True
            self._status_dirty = True
            self._last_status = None  # republish after every (re)connect
            self._recover_results()
            self.connected.set()
            log.info("agent %s connected to %s", self.bench_id, self.broker.url())
            tasks = [
                asyncio.create_task(self._serve_commands(client), name="agent-cmd"),
                asyncio.create_task(self._publisher(client), name="agent-pub"),
                asyncio.create_task(self._stopping.wait(), name="agent-stop"),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    await cancel_and_wait(t)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            if self._stopping.is_set():
                # A clean goodbye: the will is not sent on a normal DISCONNECT.
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.publish_checked(
                        self.topics.online, b"offline", qos=1, retain=True, timeout=2,
                        properties=self._online_props(PacketTypes.PUBLISH, "stopped"))
            self.connected.clear()

    # ------------------------------------------------------------------ outgoing
    async def _pump_events(self) -> None:
        """Bench events -> the event buffer, the status flag and the result outbox. Runs for
        the agent's whole life, whether or not the broker is reachable."""
        async for event in self.port.events():
            try:
                self._seq += 1
                # an EventPayload document already (labctl.protocol); numbered here
                payload = EventPayload(**{**event, "bench_id": self.bench_id,
                                          "seq": self._seq})
                self._events.append(payload.model_dump_json().encode())
                self._status_dirty = True
                ended = self.port.is_final(event)
                if ended is not None:  # the outbox's commit in a thread, off the event loop
                    await asyncio.to_thread(self._queue_result, ended)
                if event.get("type") in STATE_CHANGES:
                    self._poll_now.set()
            except Exception:  # one odd event must not stop the stream
                log.exception("could not publish event %r", event)
            self._wake.set()

    async def _poll_devices(self) -> None:
        """Refresh device readings (so remote operators see the bench) and republish the
        retained status when they change. A slow or failing device never stops the loop."""
        if self.device_poll_s <= 0:
            return
        while True:
            self._poll_now.clear()  # a change during this poll asks for the next one
            try:
                await self.port.poll_devices()
                self._status_dirty = True
                self._wake.set()
            except Exception:  # polling is best effort; the next round tries again
                log.exception("device poll failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.device_poll_s):
                    await asyncio.sleep(min(POLL_GAP_S, self.device_poll_s))
                    await self._poll_now.wait()

    def _recover_results(self) -> None:
        """Queue the results no event brought: runs of MQTT clients that ended while this
        agent was not listening (closed as interrupted at start-up, or ended just before a
        crash). The event pump is subscribed by the time a connection is up, so a run that
        ends later comes through it."""
        try:
            known = self.outbox.known()
            for row in self.port.list_runs(RECOVER_LIMIT):
                run_id = str(row.get("run_id") or "")
                if (not run_id or run_id in known or row.get("status") not in ENDED
                        or not str(row.get("instigator") or "").startswith("ai:")):
                    continue
                fields = self.port.result(run_id)
                instigator = (fields or {}).get("instigator") or {}
                if fields is not None and instigator.get("via") == "mqtt":
                    self._queue_result(run_id)
        except Exception:  # recovery is best effort; it is tried again on the next connect
            log.exception("could not look for results missing from the outbox")

    def _queue_result(self, run_id: str) -> None:
        fields = self.port.result(run_id)
        if fields is None:
            log.error("run %s ended but has no result", run_id)
            return
        payload = ResultPayload(**{**fields, "bench_id": self.bench_id, "run_id": run_id})
        if self.outbox.add(run_id, payload.model_dump(mode="json")):
            log.info("result of %s queued for publication", run_id)

    def _status_payload(self) -> bytes:
        fields = dict(self.port.snapshot())
        fields.setdefault("state", "unknown")
        payload = StatusPayload(**{**fields, "bench_id": self.bench_id, "time": utc_now()})
        return payload.model_dump_json().encode()

    async def _publisher(self, client: MqttClient) -> None:
        """Results (durable), then status (retained, on change), then events."""
        while True:
            self._wake.clear()
            for run_id, payload in self.outbox.pending():
                await client.publish_checked(self.topics.result(run_id), payload, qos=1,
                                             retain=True)
                await asyncio.to_thread(self.outbox.mark_published, run_id)
                self.result_publications[run_id] += 1
                self.stats["results"] += 1
            if self._status_dirty:
                self._status_dirty = False
                payload = self._status_payload()
                body = json.loads(payload)
                body.pop("time", None)
                key = json.dumps(body, sort_keys=True)
                if key != self._last_status:
                    await client.publish_checked(self.topics.status, payload, qos=1, retain=True)
                    self._last_status = key
                    self.stats["status"] += 1
            while self._events:
                batch = [self._events[i] for i in range(min(EVENT_BATCH, len(self._events)))]
                await asyncio.gather(*(client.publish_checked(self.topics.events, p, qos=1)
                                       for p in batch))
                for _ in batch:
                    self._events.popleft()
                self.stats["events"] += len(batch)
                if self.outbox.pending() or self._status_dirty:
                    break
            if not (self._events or self._status_dirty or self.outbox.pending()):
                await self._wake.wait()

    # ------------------------------------------------------------------ incoming
    async def _serve_commands(self, client: MqttClient) -> None:
        """Read commands; control commands (e-stop, abort, status...) are handled at once,
        each in a task of its own, so they never wait behind a submit being validated or
        a reply waiting for its PUBACK. Submits and validations go one at a time, in order
        (queue positions follow arrival)."""
        work: asyncio.Queue[tuple[aiomqtt.Message, str, Any]] = asyncio.Queue()
        worker = asyncio.create_task(self._work_lane(client, work), name="agent-work")
        try:
            async for message in client.messages:
                sender = self.topics.sender_of(str(message.topic))
                if sender is None:
                    client.ack(message)
                    continue
                decoded = _decode(message)
                if isinstance(decoded, SubmitCommand | ValidateCommand):
                    work.put_nowait((message, sender, decoded))
                    continue
                task = asyncio.create_task(self._process(client, message, sender, decoded))
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
                if worker.done():
                    worker.result()  # the connection failed under it
        finally:
            await cancel_and_wait(worker)
            for task in list(self._handlers):
                await cancel_and_wait(task)

    async def _work_lane(self, client: MqttClient,
                         work: asyncio.Queue[tuple[aiomqtt.Message, str, Any]]) -> None:
        while True:
            message, sender, decoded = await work.get()
            await self._process(client, message, sender, decoded)

    async def _process(self, client: MqttClient, message: aiomqtt.Message, sender: str,
                       decoded: Any) -> None:
        """Handle one command and acknowledge it: after its reply is remembered and
        published, or after the broker refused that reply (a refused publish is the
        client's fault, not a lost connection: answered once, logged, never retried). On a
        lost connection it stays unacknowledged and the broker redelivers it."""
        try:
            await self._handle(client, message, sender, decoded)
        except aiomqtt.MqttError:
            return  # not acknowledged: the broker redelivers it after the reconnect
        except Exception:  # a bug must not stop the agent
            log.exception("command on %s failed", message.topic)
            self.stats["internal_errors"] += 1
        client.ack(message)

    def _role(self, sender: str) -> str:
        return "operator" if sender in self.operators else "ai"

    async def _handle(self, client: MqttClient, message: aiomqtt.Message, sender: str,
                      decoded: Any) -> None:
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        if isinstance(decoded, PayloadError):
            exc = decoded
            self.stats["malformed"] += 1
            if exc.command_id is None and not response_topic:
                log.warning("malformed command without id from %s ignored: %s", sender,
                            exc.message)
                return
            log.warning("malformed command %s from %s: %s", exc.command_id, sender,
                        exc.message)
            topic = self._reply_topic(sender, response_topic, str(exc.command_id or "none"))
            if topic is None:
                topic = self.topics.default_reply(sender, str(exc.command_id or "none"))
            await self._reply(client, topic, correlation, exc.reply().model_dump(mode="json"))
            return
        command = decoded
        topic = self._reply_topic(sender, response_topic, command.id)
        if topic is None:
            # never publish where the sender points outside its own reply namespace (another
            # client's replies, a result topic, the command topic): an error reply instead
            self.stats["forbidden_reply_topic"] += 1
            log.warning("command %s from %s asks replies on %r, outside %s: refused",
                        command.id, sender, response_topic,
                        self.topics.reply_namespace(sender))
            refusal = Reply(id=command.id, ok=False, command=command.command,
                            error=ErrorInfo(code="forbidden", path="response_topic",
                                            message=f"response topic {response_topic!r} is "
                                            f"outside your reply namespace "
                                            f"{self.topics.reply_namespace(sender)}"))
            await self._reply(client, self.topics.default_reply(sender, command.id),
                              correlation, refusal.model_dump(mode="json", exclude_none=True))
            return
        prior = self._recent.get(command.id) or self.port.seen_command(command.id)
        if prior is not None:
            self.stats["duplicates"] += 1
            log.info("duplicate command %s: same reply, nothing done", command.id)
            await self._reply(client, topic, correlation, prior)
            return
        acting = self._inflight.get(command.id)
        if acting is not None:  # redelivered while the first copy is still being handled
            self.stats["duplicates"] += 1
            await self._reply(client, topic, correlation, await asyncio.shield(acting))
            return
        # Shielded: a lost connection cancels this handler, never a half-done submit (its
        # redelivery then gets the remembered reply). The command's task replies itself.
        acting = asyncio.ensure_future(self._act(command, message, sender,
                                                 (client, topic, correlation)))
        self._inflight[command.id] = acting
        acting.add_done_callback(functools.partial(self._done_acting, command.id))
        await asyncio.shield(acting)
        self.stats["commands"] += 1

    def _done_acting(self, command_id: str, _task: asyncio.Future[Any]) -> None:
        self._inflight.pop(command_id, None)

    async def _act(self, command: Any, message: aiomqtt.Message, sender: str,
                   reply_to: tuple[MqttClient, str, bytes | None]) -> dict[str, Any]:
        """Carry out a command, remember its reply and send it; the reply body.

        The reply is published here, in the loop step that has the result. Handing the body
        back to `_handle` first took two more loop steps, and every task the command had
        woken ran before them: the run it queued, the status publisher (0.6 ms of a 6 ms
        submit)."""
        reply = await self._execute(command, message, sender)
        body = reply.model_dump(mode="json", exclude_none=True)
        if isinstance(command, READ_ONLY):
            # nothing to do twice: kept in memory only, sparing the index an fsync
            self._recent[command.id] = body
            while len(self._recent) > RECENT_READ_ONLY:
                self._recent.popitem(last=False)
        elif isinstance(command, SubmitCommand) and reply.ok:
            pass  # remembered by the bench with the run it made (labctl.bench.dedup)
        elif not (reply.error and reply.error.code == "internal"):  # a retry may succeed
            # the index's fsync in a thread: e-stop and status do not wait for the disk
            await asyncio.to_thread(self.port.remember_command, command.id, body)
        try:
            await self._reply(*reply_to, body)
        except aiomqtt.MqttError as exc:  # done and remembered: a redelivery gets the reply
            log.warning("reply to command %s lost with the connection: %s", command.id, exc)
        return body

    def _reply_topic(self, sender: str, response_topic: str | None,
                     command_id: str) -> str | None:
        """Where the reply goes: the MQTT 5 response topic when it lies in the sender's own
        reply namespace, the default `reply/<sender>/<id>` without one, None when refused."""
        if not response_topic:
            return self.topics.default_reply(sender, command_id)
        if self.topics.reply_allowed(sender, response_topic):
            return str(response_topic)
        return None

    async def _reply(self, client: MqttClient, topic: str, correlation: bytes | None,
                     body: dict[str, Any]) -> None:
        try:
            await client.publish_checked(topic, json.dumps(body).encode(), qos=1,
                                         properties=correlation_properties(correlation))
        except PublishRefused as exc:
            # the broker's ACL forbids this topic: the command was acted on (or refused)
            # and its reply remembered; nobody can be told, and retrying would loop
            self.stats["replies_refused"] += 1
            log.error("reply to command %s could not be delivered: %s", body.get("id"), exc)
            return
        self.stats["replies"] += 1

    async def _authorise(self, command: Any, sender: str) -> None:
        """Only the owner of a run, or an operator, may cancel, abort, pause or resume it;
        e-stop, status, list, validate and submit are open to every authorised sender."""
        if self._role(sender) == "operator" or not isinstance(
                command, CancelCommand | AbortCommand | PauseCommand | ResumeCommand):
            return
        targets: list[str]
        if isinstance(command, CancelCommand) or getattr(command, "run_id", None):
            targets = [str(command.run_id)]
        else:
            running = [str(r.get("run_id")) for r in self.port.snapshot().get("running") or []
                       if r.get("run_id")]
            current = self.port.run_owner(None)
            if running:  # every running run is acted on: the sender must own each
                targets = running
            elif current is not None:
                targets = [current[0]]
            elif isinstance(command, ResumeCommand):
                # releasing the queue held after an e-stop starts every queued run
                targets = [str(r) for r in self.port.snapshot().get("queue") or []]
            else:
                return  # nothing to control: the bench refuses it itself
        for run_id in targets:
            found = self.port.run_owner(run_id)
            if found is None:
                continue  # unknown run: the bench says so
            owner = found[1]
            if owner != sender:
                raise BenchError(
                    "forbidden", f"run {run_id} belongs to "
                    f"{owner or 'a local operator'}; only its owner or an operator may "
                    f"{command.command} it", path="run_id")

    async def _execute(self, command: Any, message: aiomqtt.Message, sender: str) -> Reply:
        name = command.command
        try:
            await self._authorise(command, sender)
            if isinstance(command, SubmitCommand):
                instigator = {
                    "kind": "ai",
                    "id": sender,
                    "owner": sender,  # the broker-enforced username, never the payload
                    "role": self._role(sender),
                    "via": "mqtt",
                    "agent": self.client_id,
                    "bench_id": self.bench_id,
                    "host": self._host,
                    "pid": os.getpid(),
                    "command_id": command.id,
                }
                claimed = (_user_property(message, "client_id")
                           or (command.request.client if command.request else None))
                if claimed:
                    instigator["client"] = claimed  # informational: the sender says so

                def accepted(run_id: str, position: int) -> Reply:
                    return Reply(id=command.id, ok=True, command=name, run_id=run_id,
                                 queue_position=position)

                # the reply is remembered with the run, in one transaction (_act skips it)
                submitted = await self.port.submit(
                    _recipe(command), command.parameters,
                    request=(command.request.model_dump(exclude_none=True)
                             if command.request else None),
                    instigator=instigator, priority=command.priority,
                    command=CommandReply(command.id, lambda run_id, pos: accepted(
                        run_id, pos).model_dump(mode="json", exclude_none=True)),
                )
                self._status_dirty = True
                self._wake.set()
                return accepted(submitted.run_id, submitted.queue_position or 0)
            if isinstance(command, ValidateCommand):
                issues = await self.port.plan(_recipe(command), command.parameters)
                if issues:
                    return Reply(id=command.id, ok=False, command=name, issues=issues,
                                 error=ErrorInfo(code="invalid_recipe", issues=issues,
                                                 message=f"{len(issues)} problem(s): "
                                                 f"{issues[0].path}: {issues[0].message}",
                                                 path=issues[0].path))
                return Reply(id=command.id, ok=True, command=name, issues=[])
            if isinstance(command, InventoryCommand):
                if command.action != "show" and self._role(sender) != "operator":
                    raise BenchError("forbidden", f"only an operator may {command.action} the "
                                     "inventory", path="action")
                doc = await self.port.inventory(command.action, vessel=command.vessel,
                                                material=command.material,
                                                amount=command.amount, lot=command.lot,
                                                who=sender)
                return Reply(id=command.id, ok=True, command=name, inventory=doc)
            if isinstance(command, SamplesCommand):
                rows = await self.port.samples(command.action, command.sample_id)
                return Reply(id=command.id, ok=True, command=name, samples=rows)
            if isinstance(command, CancelCommand):
                await self.port.control("cancel", command.run_id)
            elif isinstance(command, PauseCommand | ResumeCommand | AbortCommand):
                await self.port.control(command.command, command.run_id)
            elif isinstance(command, EstopCommand):
                await self.port.control(command.command)
            elif isinstance(command, StatusCommand):
                status = json.loads(self._status_payload())
                return Reply(id=command.id, ok=True, command=name, status=status)
            elif isinstance(command, ListCommand):
                return Reply(id=command.id, ok=True, command=name,
                             runs=self.port.list_runs(command.limit))
            self._status_dirty = True
            self._wake.set()
            return Reply(id=command.id, ok=True, command=name,
                         status=json.loads(self._status_payload()))
        except BenchError as exc:
            found = exc.issues or None
            return Reply(id=command.id, ok=False, command=name, issues=found,
                         error=ErrorInfo(code=wire_code(exc.code), message=exc.message,
                                         path=exc.path, issues=found))
        except Exception as exc:
            log.exception("command %s (%s) failed", command.id, name)
            return Reply(id=command.id, ok=False, command=name,
                         error=ErrorInfo(code="internal", message=f"{type(exc).__name__}: {exc}"))


def _recipe(command: SubmitCommand | ValidateCommand) -> RecipeInput:
    """The recipe a command names: the bare name of one in the bench's recipe folder, or
    inline data."""
    if command.recipe_ref is not None:
        return command.recipe_ref
    return command.recipe or {}


def _user_property(message: aiomqtt.Message, key: str) -> str | None:
    props = message.properties
    for k, v in (getattr(props, "UserProperty", None) or []) if props else []:
        if k == key:
            return str(v)
    return None


def _decode(message: aiomqtt.Message) -> Any:
    """The command model, or the PayloadError saying why there is none."""
    payload = message.payload if isinstance(message.payload, bytes | bytearray) else (
        str(message.payload).encode() if message.payload is not None else b"")
    try:
        return decode_command(bytes(payload))
    except PayloadError as exc:
        return exc


def _user_props(props: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (getattr(props, "UserProperty", None) or [])}


def _controller_of(latched: tuple[bytes, Any] | None) -> dict[str, Any] | None:
    """The retained `agent` message as a dict (None when absent or unreadable)."""
    if not latched or not latched[0]:
        return None
    try:
        body = json.loads(latched[0])
    except ValueError:
        return None
    return body if isinstance(body, dict) and body.get("instance") else None

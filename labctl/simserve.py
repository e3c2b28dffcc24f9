"""Serving helpers for instrument simulators: a byte endpoint on a pseudo-terminal or TCP.

Simulators (simulators/) depend on this module and on labctl.clock only. A `ByteServer`
delivers every chunk received to `on_data(chunk, reply)`; `reply(bytes)` writes back to the
peer that sent it. Several simulated instruments can share one server (one RS-485 bus).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tty
from collections.abc import Callable

log = logging.getLogger("labctl.simserve")

OnData = Callable[[bytes, Callable[[bytes], None]], None]


class ByteServer:
    """Serve one byte stream endpoint: `pty` or `tcp://host:port` (port 0 = any free)."""

    def __init__(self, on_data: OnData, *, name: str = "sim"):
        self.on_data = on_data
        self.name = name
        self.endpoint: str = ""
        self._master: int | None = None
        self._slave: int | None = None
        self._out: bytearray = bytearray()
        self._tcp: asyncio.Server | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._tcp_tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.silent_drop = False  # when True, the peer is cut off (disconnect fault)

    async def start(self, endpoint: str = "pty") -> str:
        """Start serving; returns the endpoint a host opens (pty slave path, or
        `socket://127.0.0.1:PORT`)."""
        self._loop = asyncio.get_running_loop()
        if endpoint == "pty":
            self._open_pty()
        elif endpoint.startswith("tcp://"):
            host, _, port = endpoint[len("tcp://") :].rpartition(":")
            self._tcp = await asyncio.start_server(self._serve_tcp, host or "127.0.0.1", int(port))
            sock = self._tcp.sockets[0].getsockname()
            self.endpoint = f"socket://{sock[0]}:{sock[1]}"
        else:
            raise ValueError(f"endpoint must be 'pty' or 'tcp://HOST:PORT', got {endpoint!r}")
        log.debug("%s serving on %s", self.name, self.endpoint)
        return self.endpoint

    @property
    def tcp_port(self) -> int | None:
        if self._tcp is None:
            return None
        return int(self._tcp.sockets[0].getsockname()[1])

    # -- pty --------------------------------------------------------------------------
    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: bytes pass as they are
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.endpoint = os.ttyname(slave)
        assert self._loop is not None
        self._loop.add_reader(master, self._pty_readable)

    def _pty_readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return
            if exc.errno == errno.EIO:  # no slave open: nothing to read
                return
            raise
        if data and not self.silent_drop:
            log.debug("%s < %r", self.name, data)
            self._dispatch(data, self._pty_write)

    def _pty_write(self, data: bytes) -> None:
        if self._master is None or self.silent_drop:
            return
        log.debug("%s > %r", self.name, data)
        self._out.extend(data)
        self._pty_flush()

    def _pty_flush(self) -> None:
        assert self._loop is not None
        if self._master is None:
            return
        while self._out:
            try:
                n = os.write(self._master, self._out)
            except BlockingIOError:
                self._loop.add_writer(self._master, self._pty_flush_from_writer)
                return
            except OSError:
                self._out.clear()
                return
            del self._out[:n]

    def _pty_flush_from_writer(self) -> None:
        assert self._loop is not None and self._master is not None
        self._loop.remove_writer(self._master)
        self._pty_flush()

    # -- tcp --------------------------------------------------------------------------
    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tcp_writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tcp_tasks.add(task)  # so close() can end the handler cleanly

        def reply(data: bytes) -> None:
            if not writer.is_closing():
                log.debug("%s > %r", self.name, data)
                writer.write(data)

        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                log.debug("%s < %r", self.name, data)
                self._dispatch(data, reply)
        except (ConnectionError, OSError):
            pass
        finally:
            self._tcp_writers.discard(writer)
            if task is not None:
                self._tcp_tasks.discard(task)
            writer.close()

    # -- common -----------------------------------------------------------------------
    def _dispatch(self, data: bytes, reply: Callable[[bytes], None]) -> None:
        try:
            self.on_data(data, reply)
        except Exception:  # a simulator bug must not kill the endpoint
            log.exception("%s: simulator raised on %r", self.name, data)

    async def disconnect(self) -> None:
        """Drop the peer. TCP: close client sockets (the host may reconnect). pty: the line
        goes deaf (no bytes in or out) until `reconnect()`."""
        for w in list(self._tcp_writers):
            w.close()
        self._tcp_writers.clear()
        if self._master is not None:
            self.silent_drop = True

    def reconnect(self) -> None:
        self.silent_drop = False

    async def close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
            for w in list(self._tcp_writers):
                w.close()
            handlers = list(self._tcp_tasks)
            for t in handlers:
                t.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2.0)
            self._tcp = None
        if self._master is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._master)
            self._loop.remove_writer(self._master)
            os.close(self._master)
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None

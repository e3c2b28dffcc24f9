"""Async byte links to instruments, opened from a URL.

URLs: a device path (`/dev/ttyUSB0`, a pty slave such as `/dev/pts/7`), `socket://host:port`
(raw TCP, e.g. a serial device server or a simulator), `rfc2217://host:port`, `loop://`.
Serial settings come from configuration; on a pty they cannot be enforced but are still set.

One `Link` per physical line: several addressed instruments on one RS-485 bus share it and
take `link.lock` around each command/reply exchange. A link that drops is reopened with
backoff; if it stays down longer than `reconnect_timeout` the caller gets `DeviceTimeout`
instead of a hang. Every byte in and out is logged at DEBUG on logger `labctl.transport`.

Serial device paths are opened exclusively: pyserial's `exclusive=True` (an flock on the
descriptor, which every cooperating program honours, root included) and, on real serial
lines, TIOCEXCL (the kernel then refuses any other open() by a non-root process). A second
process on the same line would interleave its bytes with ours mid-exchange; it gets
`PortInUse` (naming the holder when /proc/locks tells) at once instead. Pseudo-terminals
(simulators) get the flock only: on a pty TIOCEXCL outlives its holder while the master
stays open, so a SIGKILLed run would lock the next one out.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import stat
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import serial

from labctl.bench_lock import BenchInUse
from labctl.errors import DeviceError, DeviceTimeout, ProtocolError

log = logging.getLogger("labctl.transport")

PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}


class PortInUse(DeviceError, BenchInUse):
    """A device's serial line is held (exclusively) by another process; nothing was sent."""


def port_holder(path: str) -> str:
    """Who holds an flock on the device file `path`: `pid 123 (labctl run x.json)`, or ""
    when /proc/locks does not tell (another pid namespace, not Linux)."""
    pid = port_holder_pid(path)
    if pid is None:
        return ""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return f"pid {pid}"
    if len(argv) > 2 and argv[1:3] == ["-m", "labctl"]:
        argv = ["labctl", *argv[3:]]
    return f"pid {pid} ({' '.join(argv)[:200]})"


def port_holder_pid(path: str) -> int | None:
    """The pid /proc/locks gives for an flock on the device file `path`, if any."""
    try:
        st = os.stat(os.path.realpath(path))
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    maj, mino = os.major(st.st_dev), os.minor(st.st_dev)
    wanted = {f"{maj:02x}:{mino:02x}:{st.st_ino}", f"{maj}:{mino}:{st.st_ino}"}
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK" or fields[5] not in wanted:
            continue
        with contextlib.suppress(ValueError):
            return int(fields[4])
    return None


def port_in_use(path: str, device: str | None = None) -> PortInUse:
    holder = port_holder(path)
    return PortInUse(f"{path} is in use by {holder or 'another process'}: the line is "
                     "opened exclusively, so this bench cannot share it", device=device)


def _is_lock_refusal(exc: BaseException) -> bool:
    """pyserial's exclusive open failing because another descriptor holds the flock."""
    return (isinstance(exc, serial.SerialException)
            and getattr(exc, "errno", None) in (errno.EWOULDBLOCK, errno.EAGAIN))


@dataclass(frozen=True)
class SerialSettings:
    """Line settings; `parity` is one of N, E, O."""

    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    xonxoff: bool = False

    def pyserial_kwargs(self) -> dict[str, Any]:
        return {
            "baudrate": self.baudrate,
            "bytesize": self.bytesize,
            "parity": PARITIES[self.parity.upper()],
            "stopbits": self.stopbits,
            "xonxoff": self.xonxoff,
        }


class _Stream(Protocol):
    async def read(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...
    async def close(self) -> None: ...
    def alive(self) -> bool: ...


class _AsyncioStream:
    """A stream over asyncio's StreamReader/StreamWriter (TCP, or a serial port via
    pyserial-asyncio-fast)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    async def read(self) -> bytes:
        data = await self.reader.read(4096)
        if not data:
            raise ConnectionResetError("end of stream")
        return data

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("stream closed")
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    def alive(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())


class _ThreadedSerialStream:
    """pyserial URL handlers without a pollable file descriptor (rfc2217://, loop://)
    run their blocking reads in a worker thread."""

    def __init__(self, port: serial.SerialBase):
        self.port = port

    async def read(self) -> bytes:
        while True:
            data: bytes = await asyncio.to_thread(self._read_blocking)
            if data:
                return data

    def _read_blocking(self) -> bytes:
        if not self.port.is_open:
            raise ConnectionResetError("port closed")
        n = max(1, self.port.in_waiting)
        return bytes(self.port.read(n))

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self.port.write, data)

    async def close(self) -> None:
        await asyncio.to_thread(self.port.close)

    def alive(self) -> bool:
        return bool(self.port.is_open)


async def _open_stream(url: str, settings: SerialSettings) -> _Stream:
    if url.startswith("socket://"):
        hostport = url[len("socket://") :].split("?", 1)[0].rstrip("/")
        host, _, port = hostport.rpartition(":")
        reader, writer = await asyncio.open_connection(host or "127.0.0.1", int(port))
        return _AsyncioStream(reader, writer)
    if "://" in url:
        port = await asyncio.to_thread(
            serial.serial_for_url, url, timeout=0.05, **settings.pyserial_kwargs()
        )
        return _ThreadedSerialStream(port)
    import serial_asyncio_fast

    kwargs = settings.pyserial_kwargs()
    if _is_pty(url) and (settings.parity.upper() != "N" or settings.bytesize != 8):
        # A pseudo-terminal cannot carry parity (Linux answers EINVAL on reconfiguration);
        # line settings only matter on real lines, so a pty gets 8N1.
        log.debug("%s is a pty: %s%s%s not settable, using 8N1", url, settings.bytesize,
                  settings.parity, settings.stopbits)
        kwargs = {**kwargs, "parity": serial.PARITY_NONE, "bytesize": 8}
    try:
        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=url, exclusive=True, **kwargs)
    except serial.SerialException as exc:
        if _is_lock_refusal(exc) and port_holder_pid(url) != os.getpid():
            raise port_in_use(url) from exc
        raise  # our own descriptor, still closing after a drop: retried with backoff
    port = writer.transport.get_extra_info("serial")
    fd = getattr(port, "fd", None)
    if isinstance(fd, int) and not _is_pty(url):
        try:
            fcntl.ioctl(fd, termios.TIOCEXCL)
        except OSError as exc:  # not a tty driver that knows it: the flock still holds
            log.debug("%s: TIOCEXCL refused (%s)", url, exc)
    if isinstance(fd, int):
        # pyserial's non-blocking write retries EAGAIN in a loop: on a line the device has
        # stopped (an XOFF byte under Xon/Xoff) it would spin for ever inside the event
        # loop. A plain write raises BlockingIOError instead, which the transport buffers.
        port.write = _plain_writer(fd)
    return _AsyncioStream(reader, writer)


def _plain_writer(fd: int) -> Callable[[bytes], int]:
    def write(data: bytes) -> int:
        try:
            return os.write(fd, data)
        except BlockingIOError:
            raise
        except OSError as exc:
            raise serial.SerialException(f"write failed: {exc}") from exc

    return write


def _is_pty(path: str) -> bool:
    """Unix98 pseudo-terminal slaves live in /dev/pts (major numbers 136-143)."""
    try:
        st = os.stat(os.path.realpath(path))
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and 136 <= os.major(st.st_rdev) <= 143


@dataclass
class LinkStats:
    bytes_out: int = 0
    bytes_in: int = 0
    reconnects: int = 0
    last_error: str | None = None
    opened_at: float | None = None


@dataclass
class Link:
    """One byte link. Use `async with link.lock:` around a command and its reply."""

    url: str
    settings: SerialSettings = field(default_factory=SerialSettings)
    name: str = ""
    reconnect_timeout: float = 5.0
    backoff_initial: float = 0.05
    backoff_max: float = 1.0

    def __post_init__(self) -> None:
        self.lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()  # two devices opening a shared bus open it once
        self.stats = LinkStats()
        self._stream: _Stream | None = None
        self._buf = bytearray()
        self._pending: asyncio.Task[bytes] | None = None
        self._closed = False
        self._label = self.name or self.url

    # -- life cycle -------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._stream is not None

    async def open(self) -> None:
        """Open the link, retrying with backoff up to `reconnect_timeout`."""
        self._closed = False
        await self._ensure_open()

    async def close(self) -> None:
        self._closed = True
        await self._drop()

    async def _drop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(BaseException):
                await self._pending
            self._pending = None
        stream, self._stream = self._stream, None
        self._buf.clear()
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.close()

    async def _ensure_open(self) -> _Stream:
        if self._stream is not None:
            return self._stream
        async with self._open_lock:
            if self._stream is not None:
                return self._stream
            return await self._open_with_backoff()

    async def _open_with_backoff(self) -> _Stream:
        deadline = time.monotonic() + self.reconnect_timeout
        delay = self.backoff_initial
        while True:
            try:
                self._stream = await asyncio.wait_for(
                    _open_stream(self.url, self.settings), max(0.1, self.reconnect_timeout)
                )
                self.stats.opened_at = time.time()
                log.debug("%s: opened", self._label)
                return self._stream
            except PortInUse as exc:  # another process will not let go within a backoff
                self.stats.last_error = str(exc)
                raise PortInUse(exc.message, device=self.name or None) from exc
            except (TimeoutError, OSError, serial.SerialException, ValueError) as exc:
                self.stats.last_error = str(exc)
                if time.monotonic() + delay > deadline:
                    raise DeviceTimeout(
                        f"link {self.url} is down ({exc}); gave up after "
                        f"{self.reconnect_timeout:g} s",
                        device=self.name or None,
                    ) from exc
                log.debug("%s: open failed (%s), retrying in %.2f s", self._label, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    async def reconnect(self) -> None:
        """Drop and reopen (after a disconnect)."""
        self.stats.reconnects += 1
        await self._drop()
        await self._ensure_open()

    # -- bytes ------------------------------------------------------------------------
    async def _check_alive(self) -> None:
        """Drop a link the peer has closed, so the next write goes to a fresh one."""
        pending = self._pending
        if pending is not None and pending.done() and pending.exception() is not None:
            self._pending = None
            await self._drop()
            self.stats.reconnects += 1
        elif self._stream is not None and not self._stream.alive():
            await self._drop()
            self.stats.reconnects += 1

    async def write(self, data: bytes) -> None:
        await self._check_alive()
        for attempt in (0, 1):
            stream = await self._ensure_open()
            try:
                await stream.write(data)
                self.stats.bytes_out += len(data)
                log.debug("%s > %r", self._label, data)
                return
            except (OSError, serial.SerialException) as exc:
                self.stats.last_error = str(exc)
                log.debug("%s: write failed (%s)", self._label, exc)
                await self._drop()
                if attempt:
                    raise DeviceTimeout(
                        f"cannot write to {self.url}: {exc}", device=self.name or None
                    ) from exc
                self.stats.reconnects += 1

    def reset_input(self) -> bytes:
        """Discard bytes received but not read yet (stale replies, garbage); returns them."""
        stale = bytes(self._buf)
        self._buf.clear()
        if stale:
            log.debug("%s: discarded %r", self._label, stale)
        return stale

    async def _fill(self, deadline: float) -> None:
        stream = await self._ensure_open()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            if isinstance(stream, _AsyncioStream) and self._pending is None:
                # Fast path: a StreamReader read can be cancelled without losing bytes (they
                # stay in its buffer), so no helper task is needed.
                async with asyncio.timeout(remaining):
                    data = await stream.read()
            else:
                # Threaded reads cannot be cancelled safely: keep the read pending across
                # timeouts so no bytes are lost.
                if self._pending is None:
                    self._pending = asyncio.ensure_future(stream.read())
                done, _ = await asyncio.wait({self._pending}, timeout=remaining)
                if not done:
                    raise TimeoutError
                task, self._pending = self._pending, None
                data = task.result()
        except TimeoutError:  # a subclass of OSError, but not a broken link
            raise
        except (OSError, serial.SerialException) as exc:
            self.stats.last_error = str(exc)
            log.debug("%s: read failed (%s)", self._label, exc)
            await self._drop()
            raise ConnectionResetError(str(exc)) from exc
        self.stats.bytes_in += len(data)
        log.debug("%s < %r", self._label, data)
        self._buf.extend(data)

    async def read_until(self, terminator: bytes, timeout: float) -> bytes:
        """Bytes up to and including `terminator`; DeviceTimeout if it does not come."""
        deadline = time.monotonic() + timeout
        while True:
            idx = self._buf.find(terminator)
            if idx >= 0:
                end = idx + len(terminator)
                out = bytes(self._buf[:end])
                del self._buf[:end]
                return out
            await self._read_more(deadline, f"no reply ending {terminator!r}", timeout)

    async def read_exactly(self, n: int, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self._buf) < n:
            await self._read_more(deadline, f"fewer than {n} bytes", timeout)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def read_frame(
        self,
        start: bytes,
        end: bytes,
        timeout: float,
        *,
        length: Callable[[bytes], int | None] | None = None,
    ) -> bytes:
        """A frame from `start` to `end` (both included); bytes before `start` are dropped.

        With `length`, the frame is complete when `length(buffer_from_start)` (a total
        frame length, or None while unknown) bytes have arrived and the last is `end`.
        """
        deadline = time.monotonic() + timeout
        while True:
            s = self._buf.find(start)
            if s > 0:
                log.debug("%s: skipped %r before frame", self._label, bytes(self._buf[:s]))
                del self._buf[:s]
                s = 0
            if s == 0:
                if length is not None:
                    total = length(bytes(self._buf))
                    if total is not None and len(self._buf) >= total:
                        frame = bytes(self._buf[:total])
                        del self._buf[:total]
                        if not frame.endswith(end):
                            raise ProtocolError(
                                f"frame {frame!r} does not end with {end!r}",
                                device=self.name or None,
                            )
                        return frame
                else:
                    e = self._buf.find(end, len(start))
                    if e >= 0:
                        frame = bytes(self._buf[: e + len(end)])
                        del self._buf[: e + len(end)]
                        return frame
            elif s < 0 and len(self._buf) > 4096:
                self._buf.clear()
            await self._read_more(deadline, f"no frame {start!r}…{end!r}", timeout)

    async def _read_more(self, deadline: float, what: str, timeout: float) -> None:
        try:
            await self._fill(deadline)
        except TimeoutError:
            partial = bytes(self._buf)
            raise DeviceTimeout(
                f"timeout after {timeout:g} s on {self.url}: {what}"
                + (f" (got {partial!r})" if partial else ""),
                device=self.name or None,
            ) from None
        except ConnectionResetError as exc:
            raise DeviceTimeout(
                f"link {self.url} dropped: {exc}", device=self.name or None
            ) from exc

    async def transact(self, request: bytes, terminator: bytes, timeout: float) -> bytes:
        """Send a request and read one reply up to `terminator`, holding the bus lock."""
        async with self.lock:
            self.reset_input()
            await self.write(request)
            return await self.read_until(terminator, timeout)


class SharedLine(Protocol):
    """A line resource several devices share (a pymodbus client and its lock)."""

    users: int

    def close(self) -> None: ...


S = TypeVar("S", bound=SharedLine)


class LinkPool:
    """One Link per URL, so devices configured on the same bus share it (and its lock).
    Drivers whose library owns the line (pymodbus) share their own client the same way,
    through `shared`."""

    def __init__(self) -> None:
        self._links: dict[str, Link] = {}
        self._shared: dict[str, SharedLine] = {}

    def get(self, url: str, settings: SerialSettings, name: str = "") -> Link:
        link = self._links.get(url)
        if link is None:
            link = self._links[url] = Link(url, settings, name=name)
        elif link.settings != settings:
            raise ValueError(
                f"devices on {url} disagree on serial settings: {link.settings} vs {settings}"
            )
        return link

    def shared(self, key: str, make: Callable[[], S]) -> S:
        """The line resource of `key` (an endpoint) that devices on it share, made by `make`
        the first time; each device `release`s it when it closes."""
        found = self._shared.get(key)
        if found is None:
            found = self._shared[key] = make()
        found.users += 1
        return cast(S, found)

    def release(self, key: str, resource: SharedLine) -> None:
        """A device is done with a shared resource: closed when its last user is."""
        resource.users -= 1
        if resource.users <= 0:
            if self._shared.get(key) is resource:
                del self._shared[key]
            resource.close()

    async def close_all(self) -> None:
        for link in self._links.values():
            await link.close()
        self._links.clear()
        for resource in self._shared.values():
            resource.close()
        self._shared.clear()

"""Link over real pseudo-terminals and TCP sockets, against small byte servers."""

from __future__ import annotations

import asyncio
import logging

import pytest

from labctl.errors import DeviceTimeout, ProtocolError
from labctl.simserve import ByteServer
from labctl.transport import Link, LinkPool, SerialSettings


def upper_echo(data: bytes, reply) -> None:  # type: ignore[no-untyped-def]
    reply(data.upper())


@pytest.fixture
async def pty_server():
    srv = ByteServer(upper_echo, name="echo")
    await srv.start("pty")
    yield srv
    await srv.close()


@pytest.fixture
async def tcp_server():
    srv = ByteServer(upper_echo, name="echo")
    await srv.start("tcp://127.0.0.1:0")
    yield srv
    await srv.close()


async def test_transact_over_pty(pty_server: ByteServer) -> None:
    assert pty_server.endpoint.startswith("/dev/pts/")
    link = Link(pty_server.endpoint, SerialSettings(baudrate=9600, parity="E", bytesize=7))
    try:
        assert await link.transact(b"abc\r", b"\r", 2.0) == b"ABC\r"
        assert link.stats.bytes_out == 4 and link.stats.bytes_in == 4
    finally:
        await link.close()


async def test_transact_over_tcp(tcp_server: ByteServer) -> None:
    link = Link(tcp_server.endpoint)
    try:
        assert await link.transact(b"xyz\n", b"\n", 2.0) == b"XYZ\n"
    finally:
        await link.close()


async def test_loop_url_echoes() -> None:
    link = Link("loop://")
    try:
        assert await link.transact(b"ping\r", b"\r", 2.0) == b"ping\r"
    finally:
        await link.close()


async def test_read_until_times_out_with_partial_bytes() -> None:
    srv = ByteServer(lambda d, r: r(b"partial"), name="partial")
    await srv.start("pty")
    link = Link(srv.endpoint)
    try:
        with pytest.raises(DeviceTimeout) as err:
            await link.transact(b"q\r", b"\r", 0.3)
        assert "partial" in str(err.value)
    finally:
        await link.close()
        await srv.close()


async def test_read_frame_skips_garbage_and_checks_length() -> None:
    frames = [b"\xff\x00junk\x02AB\x03", b"\x02\x05xyz\x03"]
    srv = ByteServer(lambda d, r: r(frames.pop(0)), name="frames")
    await srv.start("pty")
    link = Link(srv.endpoint)
    try:
        async with link.lock:
            await link.write(b"1")
            assert await link.read_frame(b"\x02", b"\x03", 2.0) == b"\x02AB\x03"
            await link.write(b"2")
            # length byte says 5 bytes after STX+len... declare total = 2 + buf[1] - 0
            frame = await link.read_frame(
                b"\x02", b"\x03", 2.0, length=lambda b: b[1] + 1 if len(b) > 1 else None
            )
            assert frame == b"\x02\x05xyz\x03"
    finally:
        await link.close()
        await srv.close()


async def test_read_frame_with_wrong_end_is_a_protocol_error() -> None:
    srv = ByteServer(lambda d, r: r(b"\x02\x04ab!"), name="bad")
    await srv.start("pty")
    link = Link(srv.endpoint)
    try:
        await link.write(b"1")
        with pytest.raises(ProtocolError):
            await link.read_frame(b"\x02", b"\x03", 2.0,
                                  length=lambda b: b[1] + 1 if len(b) > 1 else None)
    finally:
        await link.close()
        await srv.close()


async def test_reconnects_after_server_drops_the_peer(tcp_server: ByteServer) -> None:
    link = Link(tcp_server.endpoint)
    try:
        assert await link.transact(b"one\r", b"\r", 2.0) == b"ONE\r"
        await tcp_server.disconnect()
        await asyncio.sleep(0.05)
        assert await link.transact(b"two\r", b"\r", 2.0) == b"TWO\r"
        assert link.stats.reconnects >= 1
    finally:
        await link.close()


async def test_link_that_stays_down_is_a_device_error_not_a_hang() -> None:
    srv = ByteServer(upper_echo)
    await srv.start("tcp://127.0.0.1:0")
    endpoint = srv.endpoint
    await srv.close()  # nobody listens any more
    link = Link(endpoint, name="ghost", reconnect_timeout=0.3)
    with pytest.raises(DeviceTimeout) as err:
        await asyncio.wait_for(link.transact(b"x\r", b"\r", 1.0), 10)
    assert "ghost" in str(err.value) and "down" in str(err.value)


async def test_bus_lock_serialises_two_devices_on_one_link(pty_server: ByteServer) -> None:
    pool = LinkPool()
    a = pool.get(pty_server.endpoint, SerialSettings(), name="a")
    b = pool.get(pty_server.endpoint, SerialSettings(), name="b")
    assert a is b  # one link per bus
    try:
        replies = await asyncio.gather(
            *(a.transact(f"m{i}\r".encode(), b"\r", 2.0) for i in range(20))
        )
        assert replies == [f"M{i}\r".encode() for i in range(20)]
    finally:
        await pool.close_all()


def test_pool_refuses_conflicting_serial_settings() -> None:
    pool = LinkPool()
    pool.get("/dev/ttyX", SerialSettings(baudrate=9600))
    with pytest.raises(ValueError, match="disagree"):
        pool.get("/dev/ttyX", SerialSettings(baudrate=19200))


async def test_every_byte_is_logged_at_debug(
    pty_server: ByteServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="labctl.transport")
    link = Link(pty_server.endpoint, name="dbg")
    try:
        await link.transact(b"hi\r", b"\r", 2.0)
    finally:
        await link.close()
    text = caplog.text
    assert "dbg > b'hi\\r'" in text and "dbg < b'HI\\r'" in text


async def test_concurrent_opens_of_a_shared_link_open_one_stream(pty_server: ByteServer) -> None:
    link = Link(pty_server.endpoint)
    try:
        await asyncio.gather(*(link.open() for _ in range(5)))
        # one stream: every reply arrives whole at the single reader
        assert await link.transact(b"once\r", b"\r", 2.0) == b"ONCE\r"
        assert link.stats.reconnects == 0
    finally:
        await link.close()

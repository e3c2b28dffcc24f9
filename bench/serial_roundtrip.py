"""Round trip of a TriContinent `Q` status query over a pty (prints figures, asserts nothing).

The simulator runs as `python -m simulators tricontinent-c3000 --endpoint pty` in its own
process, so host and instrument do not share an event loop. Three hosts send the same bytes
`/1Q\\r` and wait for `/0` status ETX CR LF:

1. by hand: blocking os.write/os.read on the pty slave (no asyncio, no labctl), and the
   same on asyncio (add_reader on the raw fd): the floor of any async host;
2. a bare `Link.transact` (labctl's async transport, no driver);
3. the driver: `TriContinentPump.query("Q")` (framing, lock, parsing, error mapping).

Several runs, interleaved so that machine load hits all three alike; each run gives a median
and a p99; the figures printed are the medians over runs, and the driver's overhead as the
ratio of its median to the hand-sent one (target: at most 1.2x).

    .venv/bin/python bench/serial_roundtrip.py [--runs 7] [--n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import tty
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.tricontinent import TriContinentPump  # noqa: E402
from labctl.device import DeviceSpec  # noqa: E402
from labctl.transport import Link, LinkPool  # noqa: E402

QUERY = b"/1Q\r"
END = b"\x03\r\n"


def figures(samples_s: list[float]) -> tuple[float, float]:
    """Median and p99 in microseconds."""
    xs = sorted(samples_s)
    p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
    return statistics.median(xs) * 1e6, p99 * 1e6


def by_hand(path: str, n: int) -> list[float]:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        out: list[float] = []
        for _ in range(n + 10):
            t0 = time.perf_counter()
            os.write(fd, QUERY)
            buf = b""
            while not buf.endswith(END):
                buf += os.read(fd, 64)
            out.append(time.perf_counter() - t0)
        return out[10:]
    finally:
        os.close(fd)


async def by_hand_async(path: str, n: int) -> list[float]:
    """The same bytes by hand on asyncio: raw fd, loop.add_reader, os.read — no labctl.
    This is the floor of any asyncio host; the blocking version above has no event loop."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    loop = asyncio.get_running_loop()
    try:
        out: list[float] = []
        for _ in range(n + 10):
            t0 = time.perf_counter()
            os.write(fd, QUERY)
            buf = b""
            while not buf.endswith(END):
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(fd, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_reader(fd)
                buf += os.read(fd, 64)
            out.append(time.perf_counter() - t0)
        return out[10:]
    finally:
        os.close(fd)


async def bare_link(path: str, n: int) -> list[float]:
    link = Link(path, name="bare")
    await link.open()
    try:
        out: list[float] = []
        for _ in range(n + 10):
            t0 = time.perf_counter()
            await link.transact(QUERY, END, 2.0)
            out.append(time.perf_counter() - t0)
        return out[10:]
    finally:
        await link.close()


async def driver(path: str, n: int) -> list[float]:
    spec = DeviceSpec(name="pump", driver="tricontinent-c3000", endpoint=path, address=1,
                      serial=TriContinentPump.default_serial,
                      params={"syringe_volume": "5 mL"})
    pool = LinkPool()
    pump = TriContinentPump(spec, links=pool)
    await pump.connect()
    try:
        out: list[float] = []
        for _ in range(n + 10):
            t0 = time.perf_counter()
            await pump.query("Q")
            out.append(time.perf_counter() - t0)
        return out[10:]
    finally:
        await pool.close_all()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--n", type=int, default=300, help="queries per run and host")
    args = ap.parse_args()
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators", "tricontinent-c3000", "--endpoint", "pty"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        path = json.loads(proc.stdout.readline())["endpoint"]
        results: dict[str, list[tuple[float, float]]] = {
            "hand": [], "hand_async": [], "link": [], "driver": []}
        for _ in range(args.runs):
            results["hand"].append(figures(by_hand(path, args.n)))
            results["hand_async"].append(figures(asyncio.run(by_hand_async(path, args.n))))
            results["link"].append(figures(asyncio.run(bare_link(path, args.n))))
            results["driver"].append(figures(asyncio.run(driver(path, args.n))))
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    print(f"TriContinent `Q` round trip over a pty: {args.runs} runs x {args.n} queries "
          "(median over runs of each run's median / p99)")
    med: dict[str, float] = {}
    for name, label in (("hand", "by hand, blocking os.read"),
                        ("hand_async", "by hand, asyncio add_reader"),
                        ("link", "bare Link.transact"), ("driver", "driver query('Q')")):
        med[name] = statistics.median(m for m, _ in results[name])
        p99 = statistics.median(p for _, p in results[name])
        print(f"  {label:30s} median {med[name]:8.1f} us   p99 {p99:8.1f} us")
    print(f"  driver / by hand (asyncio)  : {med['driver'] / med['hand_async']:.2f}x "
          "(target <= 1.2x)")
    print(f"  driver / by hand (blocking) : {med['driver'] / med['hand']:.2f}x")
    print(f"  driver / bare Link : {med['driver'] / med['link']:.2f}x")


if __name__ == "__main__":
    main()

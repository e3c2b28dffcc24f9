"""Potentiostat data path benchmark (prints figures, asserts nothing).

1. Data packages decoded per second by the driver (decode + DataPoint), against the line
   rate of a real EmStat Pico link (230400 baud, 8N1 = 10 bits per byte).
2. The highest sampling rate sustained end to end — simulator → pty → driver → BDF CSV on
   disk — with zero dropped points: a chronoamperometry at rising rates (sample interval on
   a scaled clock), counting the rows written against the points the script must produce.

Usage: .venv/bin/python bench/bench_potentiostat.py [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from drivers.palmsens import EmStat, decode_package, to_point
from labctl.bdf import BdfWriter, read_bdf
from labctl.clock import ScaledClock
from labctl.device import DeviceSpec
from labctl.techniques import CA
from simulators.palmsens import EmStatSimulator, encode_value
from simulators.serving import serve

BAUD = 230400
BITS_PER_BYTE = 10  # start + 8 data + stop


def sample_lines(n: int) -> list[str]:
    """Two-variable packages as the instrument sends them (potential, current + metadata)."""
    lines = []
    for k in range(n):
        e = -0.5 + k * 1e-4
        i = (k % 977 - 488) * 1.3e-7
        lines.append("P" + encode_value("da", e) + ";" + encode_value("ba", i) + ",10,288\n")
    return lines


def bench_decode(runs: int, n: int) -> None:
    lines = sample_lines(n)
    avg_len = sum(len(x) for x in lines) / len(lines)
    line_rate = BAUD / BITS_PER_BYTE / avg_len
    rates_decode, rates_points = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        for ln in lines:
            decode_package(ln)
        rates_decode.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for ln in lines:
            to_point(decode_package(ln))
        rates_points.append(n / (time.perf_counter() - t0))
    med_d, med_p = statistics.median(rates_decode), statistics.median(rates_points)
    print(f"package length: {avg_len:.1f} bytes; line rate at {BAUD} baud: "
          f"{line_rate:,.0f} packages/s")
    print(f"decode only:        median {med_d:,.0f} packages/s "
          f"({med_d / line_rate:,.0f}x line rate; min {min(rates_decode):,.0f})")
    print(f"decode + DataPoint: median {med_p:,.0f} packages/s "
          f"({med_p / line_rate:,.0f}x line rate; min {min(rates_points):,.0f})")


async def end_to_end(rate_hz: float, points: int, workdir: Path) -> tuple[int, int, float]:
    """One CA at `rate_hz` wall points per second: (expected, written, achieved rate)."""
    t_int = 0.01  # device seconds between samples
    scale = rate_hz * t_int
    clock = ScaledClock(scale)
    sim = EmStatSimulator(clock=clock, options={"seed": 1})
    served = await serve([sim], "pty")
    dev = EmStat(DeviceSpec(name="pstat", driver="palmsens-emstat", endpoint=served.endpoint),
                 clock=clock)
    try:
        await dev.connect()
        tech = CA(potential_v=3.4, duration_s=points * t_int, sample_interval_s=t_int)
        path = workdir / f"ca_{int(rate_hz)}.bdf.csv"
        t0 = time.perf_counter()
        with BdfWriter(path, tech) as w:
            async for p in dev.measure(tech):
                w.write(p)
        wall = time.perf_counter() - t0
        written = len(read_bdf(path)["Test Time / s"])
        return points, written, written / wall
    finally:
        await dev.open_link().close()
        await served.close()


def bench_end_to_end(runs: int, points: int) -> None:
    rates = [500, 1000, 2000, 5000, 10000, 20000, 40000]
    best = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for rate in rates:
            achieved, dropped = [], 0
            for _ in range(runs):
                expected, written, got = asyncio.run(end_to_end(rate, points, Path(tmp)))
                dropped += expected - written
                achieved.append(got)
            med = statistics.median(achieved)
            ok = dropped == 0 and med >= 0.9 * rate
            if ok:
                best = rate
            print(f"requested {rate:>6,} points/s: median achieved {med:>9,.0f} points/s, "
                  f"dropped {dropped}, {'sustained' if ok else 'NOT sustained'}")
    print(f"highest sampling rate sustained end to end with zero dropped points: "
          f"{best:,} points/s")


def main() -> None:
    quick = "--quick" in sys.argv
    runs = 3 if quick else 5
    print("== decode throughput")
    bench_decode(runs, 20000 if quick else 100000)
    print("== simulator -> pty -> driver -> BDF CSV")
    bench_end_to_end(3, 2000 if quick else 5000)


if __name__ == "__main__":
    main()

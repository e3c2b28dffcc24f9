"""Instrument round trips and polling capacity over ptys (prints figures, asserts nothing).

The simulators run in a separate process (this script re-run with `--serve`: one asyncio
process serving many simulated instruments, each on its own pseudo-terminal, built from
the plain-data bench spec labctl passes to `simulators`), so host and instruments never share
an event loop. The host is one asyncio process with the real drivers, built from
config/sim.toml exactly as `labctl.instruments.Instruments` builds them.

1. Round trip per instrument: one status/identity query per driver (TriContinent `Q`,
   NE-1000 status prompt, VICI `CP`, IKA `IN_PV_1`, MT-SICS `SI`, Quantos `QRD 2 3 7`,
   Modbus read of the pump's status register and of the CN7500's process value, EmStat
   `t`), back to back; several runs, the instruments interleaved within each run. Printed:
   median over runs of each run's median and p99.
2. Polling capacity (printed last): N TriContinent pumps, each on its own pty as on
   separate lines, every one polled with `Q` at 10 Hz (phases spread over the period) for a
   few seconds, for N = 1, 5, 10, 25, 50, 75, 100 and 150; runs interleaved. Printed:
   latency median/p99, wake-up lag p99 (how late the host's loop started a poll), the
   achieved poll rate, the CPU load of the host and of the simulator process, and the
   largest N whose median stays within 2x of N = 1 (target: at least 50).
3. A mixed bench (printed second): config/sim.toml's ten devices replicated (10, 25, 50,
   75, 100 devices, every kind in proportion), each kind's median compared with its own on
   the single bench (N = 10, every instrument once).

The host holds one bench at a time: pyserial waits on a line with select(), which cannot
take file descriptors above 1023, and each open serial link holds five (the port and two
pipes), so one process cannot hold much more than 200 serial links.

    .venv/bin/python bench/bench_instruments.py [--runs 3] [--n 200] [--poll-s 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from labctl.clock import make_clock  # noqa: E402
from labctl.config import BenchConfig, load_config  # noqa: E402
from labctl.device import Device, DeviceSpec  # noqa: E402
from labctl.registry import driver_class  # noqa: E402
from labctl.simulation import simulation_spec  # noqa: E402
from labctl.transport import LinkPool  # noqa: E402

SIM_TOML = ROOT / "config" / "sim.toml"
POLL_HZ = 10.0
POLL_NS = (1, 5, 10, 25, 50, 75, 100, 150)
MIXED_NS = (10, 25, 50, 75, 100)
WARMUP_S = 0.5

Query = Callable[[Any], Awaitable[object]]


async def _emstat_t(dev: Any) -> object:
    """`t` (firmware line + `*` line), on the driver's own link and timeout."""
    return await dev.open_link().transact(b"t\n", b"*\n", dev.spec.timeout_s)


#: driver name -> (label, one status/identity exchange of that driver)
QUERIES: dict[str, tuple[str, Query]] = {
    "tricontinent-c3000": ("TriContinent Q", lambda d: d.query("Q")),
    "newera-ne1000": ("NE-1000 status", lambda d: d.command("", tolerate_alarm=True)),
    "vici-valve": ("VICI CP", lambda d: d.position()),
    "ika-hotplate": ("IKA IN_PV_1", lambda d: d.medium_temperature_c()),
    "mettler-balance": ("MT-SICS SI", lambda d: d.reading()),
    "quantos-dispenser": ("Quantos QRD 2 3 7", lambda d: d.door_state()),
    "modbus-pump": ("Modbus pump status (FC04)", lambda d: d.read_point("status")),
    "omega-cn7500": ("CN7500 PV (FC03)", lambda d: d.temperature_c()),
    "palmsens-emstat": ("EmStat t", _emstat_t),
}


def figures(samples_s: list[float]) -> tuple[float, float]:
    """Median and p99 in milliseconds."""
    xs = sorted(samples_s)
    p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
    return statistics.median(xs) * 1e3, p99 * 1e3


# ------------------------------------------------------------------ the simulator process
async def _serve_forever() -> None:
    """`--serve`: read a bench spec (JSON) on stdin, serve it, print one JSON line per
    device, serve until stdin closes or a signal arrives."""
    from simulators.bench import start_simulated_bench

    spec = json.loads(sys.stdin.readline())
    bench = await start_simulated_bench(spec, make_clock(1.0))
    for name, endpoint in bench.endpoints.items():
        print(json.dumps({"name": name, "endpoint": endpoint}), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # EOF: the host went away
    await stop.wait()
    await bench.close()


class SimProcess:
    """The simulators of one bench spec, in their own process."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.proc: subprocess.Popen[str] | None = None
        self.endpoints: dict[str, str] = {}

    def __enter__(self) -> SimProcess:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(self.spec) + "\n")
        self.proc.stdin.flush()
        for _ in self.spec["devices"]:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the simulator process ended before it was ready")
            ready = json.loads(line)
            self.endpoints[ready["name"]] = ready["endpoint"]
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ------------------------------------------------------------------ benches
@dataclass
class Member:
    """One simulated instrument of a bench, as the host sees it."""

    name: str
    driver: str
    spec: DeviceSpec
    device: Device | None = None

    @property
    def label(self) -> str:
        return QUERIES[self.driver][0]

    async def poll(self) -> object:
        assert self.device is not None
        return await QUERIES[self.driver][1](self.device)


def replicated(cfg: BenchConfig, copies: int) -> tuple[dict[str, Any], list[Member]]:
    """The bench's devices `copies` times over (`name~k`), each device on its own line."""
    base = simulation_spec(cfg)
    devices: list[dict[str, Any]] = []
    members: list[Member] = []
    for k in range(copies):
        for dev in base["devices"]:
            name = f"{dev['name']}~{k}"
            devices.append({**dev, "name": name, "bus": None})
            spec = cfg.device_spec(dev["name"])
            members.append(Member(name, spec.driver,
                                  spec.model_copy(update={"name": name, "bus": None})))
    return {"world": base["world"], "devices": devices}, members


def pumps(count: int) -> tuple[dict[str, Any], list[Member]]:
    """`count` TriContinent C3000 pumps, address 1, each on its own line (no world)."""
    devices, members = [], []
    for i in range(count):
        name = f"pump{i:03d}"
        devices.append({"name": name, "kind": "tricontinent-c3000", "address": 1,
                        "options": {"syringe_volume": "5 mL"}, "bus": None,
                        "endpoint": "pty"})
        spec = DeviceSpec(name=name, driver="tricontinent-c3000", address=1,
                          params={"syringe_volume": "5 mL"})
        members.append(Member(name, "tricontinent-c3000", spec))
    return {"world": {}, "devices": devices}, members


async def connect(members: list[Member], endpoints: dict[str, str], pool: LinkPool) -> None:
    clock = make_clock(1.0)
    for m in members:
        m.spec = m.spec.model_copy(update={"endpoint": endpoints[m.name]})
        m.device = driver_class(m.driver)(m.spec, links=pool, clock=clock)
    sem = asyncio.Semaphore(20)

    async def one(m: Member) -> None:
        async with sem:
            assert m.device is not None
            await m.device.connect()
            m.device.info = await m.device.identify()

    await asyncio.gather(*(one(m) for m in members))


async def close(members: list[Member], pool: LinkPool) -> None:
    for m in members:
        if m.device is not None:
            await m.device.close()
    await pool.close_all()


# ------------------------------------------------------------------ 1. round trips
async def round_trips(members: list[Member], runs: int, n: int) -> None:
    results: dict[str, list[tuple[float, float]]] = {m.name: [] for m in members}
    order = list(members)
    for _ in range(runs):
        random.shuffle(order)  # interleaved: load drifts hit every instrument alike
        for m in order:
            for _ in range(10):
                await m.poll()
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                await m.poll()
                samples.append(time.perf_counter() - t0)
            results[m.name].append(figures(samples))
    print(f"\n1. Round trip per instrument over a pty ({runs} runs x {n} queries, back to "
          "back; median over runs of each run's median / p99)")
    print(f"   {'instrument':30s} {'device':14s} {'median':>9s} {'p99':>9s}")
    for m in members:
        med = statistics.median(x for x, _ in results[m.name])
        p99 = statistics.median(p for _, p in results[m.name])
        print(f"   {m.label:30s} {m.name.split('~')[0]:14s} {med:7.2f} ms {p99:7.2f} ms")


# ------------------------------------------------------------------ 2./3. polling capacity
@dataclass
class PollResult:
    latencies: dict[str, list[float]] = field(default_factory=dict)  # by member name
    lags: list[float] = field(default_factory=list)
    polls: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # host process CPU time / wall time while polling
    sim_cpu: float = 0.0  # the same for the simulator process


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def poll_at_10hz(members: list[Member], seconds: float, sim_pid: int) -> PollResult:
    """Every member polled at 10 Hz, phases spread over the period; samples of the first
    WARMUP_S are dropped. A poll that overruns its slot skips the missed ticks."""
    loop = asyncio.get_running_loop()
    period = 1 / POLL_HZ
    res = PollResult(latencies={m.name: [] for m in members})
    start = loop.time() + 0.05
    count_from, end = start + WARMUP_S, start + WARMUP_S + seconds
    cpu: list[float] = []

    async def meter() -> None:
        await asyncio.sleep(max(0.0, count_from - loop.time()))
        c0, s0, w0 = time.process_time(), cpu_seconds(sim_pid), loop.time()
        await asyncio.sleep(max(0.0, end - loop.time()))
        wall = loop.time() - w0
        cpu.extend([(time.process_time() - c0) / wall, (cpu_seconds(sim_pid) - s0) / wall])

    async def poller(i: int, m: Member) -> None:
        due = start + period * i / len(members)
        while due < end:
            await asyncio.sleep(max(0.0, due - loop.time()))
            began = loop.time()
            t0 = time.perf_counter()
            try:
                await m.poll()
                ok = True
            except Exception:  # a failed poll is counted, not fatal to the benchmark
                ok = False
            dt = time.perf_counter() - t0
            if due >= count_from:
                res.lags.append(began - due)
                if ok:
                    res.latencies[m.name].append(dt)
                    res.polls += 1
                else:
                    res.errors += 1
            due += period
            now = loop.time()
            if due < now:
                due += period * int((now - due) / period + 1)

    await asyncio.gather(meter(), *(poller(i, m) for i, m in enumerate(members)))
    res.seconds, res.cpu, res.sim_cpu = seconds, cpu[0], cpu[1]
    return res


def _all(res: PollResult) -> list[float]:
    return [x for xs in res.latencies.values() for x in xs]


@dataclass
class Row:
    """One N's figures, medians over runs."""

    median: float
    p99: float
    lag_p99: float
    rate: float
    cpu: float
    sim_cpu: float
    errors: int

    @classmethod
    def of(cls, n: int, results: list[PollResult]) -> Row:
        figs = [figures(_all(r)) for r in results]
        return cls(
            median=statistics.median(f[0] for f in figs),
            p99=statistics.median(f[1] for f in figs),
            lag_p99=statistics.median(figures(r.lags)[1] for r in results),
            rate=statistics.median(r.polls / r.seconds / n for r in results),
            cpu=statistics.median(r.cpu for r in results),
            sim_cpu=statistics.median(r.sim_cpu for r in results),
            errors=sum(r.errors for r in results),
        )

    def text(self, n: int) -> str:
        return (f"   {n:4d} {self.median:7.2f} ms {self.p99:7.2f} ms {self.lag_p99:7.2f} ms "
                f"{self.rate:7.2f} Hz {self.cpu * 100:6.1f} % {self.sim_cpu * 100:6.1f} % "
                f"{self.errors:6d}")


HEADER = (f"   {'N':>4s} {'median':>9s} {'p99':>9s} {'lag p99':>9s} {'rate/dev':>9s} "
          f"{'host CPU':>8s} {'sim CPU':>8s} {'errors':>6s}")


async def sweep(members: list[Member], ns: tuple[int, ...], runs: int, seconds: float,
                sim_pid: int) -> dict[int, list[PollResult]]:
    """Every N of `ns` once per run, in a fresh random order each run."""
    by_n: dict[int, list[PollResult]] = {n: [] for n in ns}
    for _ in range(runs):
        order = list(ns)
        random.shuffle(order)
        for n in order:
            by_n[n].append(await poll_at_10hz(members[:n], seconds, sim_pid))
    return by_n


async def capacity(members: list[Member], runs: int, seconds: float, sim_pid: int) -> None:
    """Part 2: homogeneous TriContinent pumps."""
    by_n = await sweep(members, POLL_NS, runs, seconds, sim_pid)
    print(f"\n2. Polling capacity: N TriContinent pumps (one pty each), `Q` at {POLL_HZ:g} Hz "
          f"each, {runs} runs x {seconds:g} s per N (median over runs)")
    print(HEADER + f" {'x N=1':>6s}")
    base: float | None = None
    best, holding = 0, True
    for n in POLL_NS:
        row = Row.of(n, by_n[n])
        base = row.median if base is None else base
        ratio = row.median / base
        holding = holding and ratio <= 2.0 and row.rate >= 0.9 * POLL_HZ and not row.errors
        best = n if holding else best
        print(row.text(n) + f" {ratio:5.2f}x")
    print(f"   largest N whose median stays within 2x of N=1 (with >= 90 % of {POLL_HZ:g} Hz "
          f"achieved, no errors): {best} (target: at least 50)")


async def mixed_capacity(members: list[Member], per_copy: int, runs: int, seconds: float,
                         sim_pid: int) -> None:
    """Part 3: the bench's devices replicated; every kind compared with itself at N = one
    bench."""
    by_n = await sweep(members, MIXED_NS, runs, seconds, sim_pid)
    labels = sorted({m.label for m in members})

    def kind_median(n: int, label: str) -> float:
        meds = []
        for r in by_n[n]:
            xs = [x for m in members[:n] if m.label == label for x in r.latencies[m.name]]
            if xs:
                meds.append(figures(xs)[0])
        return statistics.median(meds) if meds else float("nan")

    base = {label: kind_median(MIXED_NS[0], label) for label in labels}
    print(f"\n3. Mixed bench: config/sim.toml's {per_copy} devices replicated, every device "
          f"polled at {POLL_HZ:g} Hz with its query of part 1, {runs} runs x {seconds:g} s "
          "per N; each kind's median against its own at N=" + str(MIXED_NS[0]))
    print(HEADER + f" {'kinds':>6s} {'worst kind':>17s}")
    best, holding = 0, True
    for n in MIXED_NS:
        row = Row.of(n, by_n[n])
        ratios = {label: kind_median(n, label) / base[label] for label in labels}
        typical = statistics.median(ratios.values())
        worst = max(ratios, key=lambda k: ratios[k])
        holding = (holding and ratios[worst] <= 2.0 and row.rate >= 0.9 * POLL_HZ
                   and not row.errors)
        best = n if holding else best
        print(row.text(n) + f" {typical:5.2f}x {ratios[worst]:5.2f}x {worst}")
    print(f"   largest N whose every kind's median stays within 2x of N={MIXED_NS[0]}: {best}")


# ------------------------------------------------------------------ main
async def host(args: argparse.Namespace) -> None:
    """One bench at a time (see the module docstring: select() and 1024 descriptors)."""
    cfg = load_config(SIM_TOML)
    per_copy = len(cfg.enabled_devices())
    mixed_spec, mixed = replicated(cfg, -(-max(MIXED_NS) // per_copy))
    with SimProcess(mixed_spec) as sims:
        pool = LinkPool()
        try:
            t0 = time.perf_counter()
            await connect(mixed, sims.endpoints, pool)
            print(f"mixed bench: {len(mixed)} instruments (one pty each) connected and "
                  f"identified in {time.perf_counter() - t0:.1f} s")
            await round_trips(mixed[:per_copy], args.runs, args.n)
            await mixed_capacity(mixed, per_copy, max(1, args.runs - 1), args.poll_s, sims.pid)
        finally:
            await close(mixed, pool)
    pump_spec, pump_members = pumps(max(POLL_NS))
    with SimProcess(pump_spec) as sims:
        pool = LinkPool()
        try:
            await connect(pump_members, sims.endpoints, pool)
            await capacity(pump_members, args.runs, args.poll_s, sims.pid)
        finally:
            await close(pump_members, pool)


def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the NE-1000s' power-up alarm A?R is expected
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs (interleaved) of every figure")
    ap.add_argument("--n", type=int, default=200, help="queries per run and instrument")
    ap.add_argument("--poll-s", type=float, default=3.0, help="seconds of polling per N")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve_forever())
        return
    t0 = time.perf_counter()
    asyncio.run(host(args))
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()

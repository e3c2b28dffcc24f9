"""Closed-loop electrolyte optimisation over MQTT only.

A Gaussian-process Bayesian optimiser (scikit-optimize's ask/tell `Optimizer`) proposes a
salt amount and a solvent ratio, submits the electrolyte conductivity recipe to a bench with
those parameters through the broker, waits for the measured ionic conductivity (a figure of
merit in the run's result), tells the optimiser, and repeats. It never touches the bench
otherwise: this is what an AI server does.

    # against a running `labctl serve --broker mqtt://127.0.0.1:1883 --bench-id sim-bench-1`
    python examples/closed_loop.py --broker mqtt://127.0.0.1:1883 --bench-id sim-bench-1
    # or start a private mosquitto and agent on the simulated bench first
    python examples/closed_loop.py --local --iterations 12

At the end it prints the best formulation, its conductivity, and how far it is from the
simulator's true optimum. That last figure is the only thing not learnt over MQTT: it comes
from importing the simulator's ground-truth model (simulators/conductivity.py), which a real
AI server would not have.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from skopt import Optimizer
from skopt.space import Real

from labctl.client import BenchClient, CommandError
from labctl.units import to

ROOT = Path(__file__).resolve().parent.parent


def figure(result: dict[str, Any], *names: str) -> float | None:
    """The value of the first figure of merit whose name contains one of `names`, in S/m."""
    foms = result.get("figures_of_merit") or {}
    items = foms.items() if isinstance(foms, dict) else (
        (f.get("name", ""), f) for f in foms if isinstance(f, dict))
    for name, fom in items:
        if any(n in str(name).lower() for n in names):
            value = fom.get("value") if isinstance(fom, dict) else fom
            unit = fom.get("unit", "S/m") if isinstance(fom, dict) else "S/m"
            if value is None:
                continue
            return to(f"{value} {unit}", "S/m") if unit else float(value)
    return None


async def optimise(args: argparse.Namespace) -> None:
    space = [Real(args.salt_min, args.salt_max, name="salt"),
             Real(args.ratio_min, args.ratio_max, name="ratio")]
    opt = Optimizer(space, base_estimator="GP", acq_func="EI", n_initial_points=args.initial,
                    random_state=args.seed)
    history: list[tuple[float, float, float]] = []
    async with BenchClient(args.broker, args.bench_id, username=args.username,
                           password=args.password, timeout=60) as bench:
        await bench.wait_online(timeout=120)
        print(f"bench {args.bench_id} via {args.broker}: state {(await bench.status())['state']}")
        for i in range(1, args.iterations + 1):
            salt, ratio = opt.ask()
            params = {args.salt_param: f"{salt:.4f} {args.salt_unit}",
                      args.ratio_param: round(ratio, 4)}
            request = {"id": f"closed-loop-{uuid.uuid4().hex[:8]}-{i}", "client": "closed_loop"}
            try:
                run = await bench.submit(args.recipe, params, request=request)
                result = await run.result(timeout=args.run_timeout)
            except CommandError as exc:
                print(f"[{i:2d}] {params} refused: {exc}")
                opt.tell([salt, ratio], 0.0)
                continue
            sigma = figure(result, "conductivity") if result.get("status") == "completed" else None
            if sigma is None:
                print(f"[{i:2d}] {params} -> run {run.run_id} {result.get('status')}: "
                      f"{result.get('errors')}")
                opt.tell([salt, ratio], 0.0)
                continue
            history.append((salt, ratio, sigma))
            opt.tell([salt, ratio], -sigma)
            best = max(h[2] for h in history)
            print(f"[{i:2d}] salt {salt:.4f} {args.salt_unit}, ratio {ratio:.3f} -> "
                  f"σ = {sigma * 10:.3f} mS/cm  (best {best * 10:.3f} mS/cm)  "
                  f"fidelity {result.get('fidelity')}  run {run.run_id}", flush=True)
    if not history:
        print("no successful measurement")
        return
    salt, ratio, sigma = max(history, key=lambda h: h[2])
    print(f"\nbest formulation: {args.salt_param} = {salt:.4f} {args.salt_unit}, "
          f"{args.ratio_param} = {ratio:.3f}; measured conductivity {sigma * 10:.3f} mS/cm "
          f"({sigma:.4f} S/m) after {len(history)} experiments")
    report_distance(sigma)


def report_distance(sigma: float) -> None:
    """Compare with the simulator's ground truth (imported ONLY for this report)."""
    try:
        sys.path.insert(0, str(ROOT))
        from simulators.conductivity import optimum
    except ImportError as exc:
        print(f"(true optimum unavailable: {exc})")
        return
    m_opt, w_opt, s_opt = optimum(temperature_c=25.0)
    print("distance from the simulator's TRUE optimum (read from simulators/conductivity.py, "
          "not learnt over MQTT):")
    print(f"  true optimum at 25 °C: {m_opt:.3f} mol/kg LiPF6, EC mass fraction {w_opt:.3f}, "
          f"σ = {s_opt * 10:.3f} mS/cm")
    print(f"  best found: {sigma * 10:.3f} mS/cm = {100 * sigma / s_opt:.1f} % of the optimum "
          f"(gap {(s_opt - sigma) * 10:.3f} mS/cm)")


@contextlib.contextmanager
def local_bench(args: argparse.Namespace) -> Iterator[None]:
    """A private mosquitto and `labctl serve` on the simulated bench, for --local."""
    from labctl.mqtt.localbroker import MosquittoBroker

    work = Path(tempfile.mkdtemp(prefix="labctl-closed-loop-"))
    broker = MosquittoBroker(work / "broker")
    broker.start()
    agent = subprocess.Popen(
        [sys.executable, "-m", "labctl", "serve", "--config", str(args.config),
         "--broker", broker.url, "--bench-id", args.bench_id, "--data-dir", str(work / "runs"),
         "--time-scale", str(args.time_scale)],
        cwd=ROOT, stdout=subprocess.DEVNULL,
    )
    args.broker = broker.url
    print(f"local broker {broker.url}, agent pid {agent.pid}, run records in {work / 'runs'}")
    try:
        yield
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
        broker.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--broker", default=os.environ.get("LABCTL_BROKER", "mqtt://127.0.0.1:1883"))
    p.add_argument("--bench-id", default="sim-bench-1")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--local", action="store_true",
                   help="start a private mosquitto and `labctl serve` on the simulated bench")
    p.add_argument("--config", default=str(ROOT / "config" / "sim.toml"))
    p.add_argument("--time-scale", type=float, default=2000.0)
    p.add_argument("--recipe", default="electrolyte_conductivity",
                   help="recipe name in the bench's recipe folder")
    p.add_argument("--salt-param", default="salt_molality")
    p.add_argument("--salt-unit", default="mol/kg")
    p.add_argument("--salt-min", type=float, default=0.1)
    p.add_argument("--salt-max", type=float, default=2.0)
    p.add_argument("--ratio-param", default="ec_fraction")
    p.add_argument("--ratio-min", type=float, default=0.1)
    p.add_argument("--ratio-max", type=float, default=0.9)
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--initial", type=int, default=5, help="random points before the GP")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--run-timeout", type=float, default=300.0)
    args = p.parse_args()
    if args.local:
        with local_bench(args):
            asyncio.run(optimise(args))
    else:
        asyncio.run(optimise(args))


if __name__ == "__main__":
    main()

"""Closed-loop electrolyte optimisation over MQTT only.

A Gaussian-process Bayesian optimiser (scikit-optimize's ask/tell `Optimizer`) proposes a
salt amount and a solvent ratio, submits the electrolyte conductivity recipe to a bench with
those parameters through the broker, waits for the measured ionic conductivity (a figure of
merit in the run's result), tells the optimiser, and repeats. It never touches the bench
otherwise: this is what an AI server does.

    # against a running `labctl serve --broker mqtt://127.0.0.1:1883 --bench-id sim-bench-1`
    python examples/closed_loop.py --broker mqtt://127.0.0.1:1883 --bench-id sim-bench-1
    # or start a private mosquitto and agent on the simulated bench first
    python examples/closed_loop.py --local --figure closed_loop.png   # + summary figure

At the end it prints the best formulation, its conductivity, and how far it is from the
simulator's true optimum, in conductivity and in composition. That comparison is the only
thing not learnt over MQTT: it comes from importing the simulator's ground-truth model
(simulators/conductivity.py), which a real AI server would not have. The recipe's solvent
ratio is an EC volume fraction while the model's is a mass fraction: the report converts
with the densities of the bench config (EC 1.32, DMC 1.07 g/mL in config/sim.toml).

The default time scale (200) keeps a run of the conductivity recipe (~13 simulated minutes)
to a few seconds while the hotplate's 600 s watchdog (config/sim.toml) still allows a 3 s
stall of the agent's event loop; at 2000 a 0.3 s hiccup trips it and every later run fails.
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
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass
class Iteration:
    """One experiment of the loop: what was asked, and the conductivity measured (S/m)."""

    index: int
    salt: float
    ratio: float
    sigma_s_m: float | None
    run_id: str | None
    status: str


async def optimise(args: argparse.Namespace) -> list[Iteration]:
    """Ask, submit over MQTT, wait for the result, tell; `args.iterations` times (or until
    `args.max_failures` runs in a row failed). Returns every iteration."""
    space = [Real(args.salt_min, args.salt_max, name="salt"),
             Real(args.ratio_min, args.ratio_max, name="ratio")]
    opt = Optimizer(space, base_estimator="GP", acq_func="EI", n_initial_points=args.initial,
                    random_state=args.seed)
    history: list[Iteration] = []
    failures = 0
    async with BenchClient(args.broker, args.bench_id, username=args.username,
                           password=args.password, timeout=60) as bench:
        await bench.wait_online(timeout=120)
        print(f"bench {args.bench_id} via {args.broker}: state {(await bench.status())['state']}")
        for i in range(1, args.iterations + 1):
            salt, ratio = opt.ask()
            params = {args.salt_param: f"{salt:.4f} {args.salt_unit}",
                      args.ratio_param: round(ratio, 4),
                      "temperature": f"{args.temperature:g} degC"}
            request = {"id": f"closed-loop-{uuid.uuid4().hex[:8]}-{i}", "client": "closed_loop"}
            run_id: str | None = None
            try:
                run = await bench.submit(args.recipe, params, request=request)
                run_id = run.run_id
                result = await run.result(timeout=args.run_timeout)
            except CommandError as exc:
                print(f"[{i:2d}] {params} refused: {exc}", flush=True)
                result = {"status": "refused", "errors": [str(exc)]}
            status = str(result.get("status"))
            sigma = figure(result, "conductivity") if status == "completed" else None
            history.append(Iteration(i, salt, ratio, sigma, run_id, status))
            if sigma is None:
                if status != "refused":
                    print(f"[{i:2d}] {params} -> run {run_id} {status}: "
                          f"{result.get('errors')}", flush=True)
                opt.tell([salt, ratio], 0.0)  # a failed formulation is a bad one
                failures += 1
                if failures >= args.max_failures:
                    print(f"stopping: {failures} runs in a row failed (is the bench in a "
                          "fault state?)", flush=True)
                    break
                continue
            failures = 0
            opt.tell([salt, ratio], -sigma)
            best = max(h.sigma_s_m for h in history if h.sigma_s_m is not None)
            level = (result.get("fidelity") or {}).get("level", "?")
            print(f"[{i:2d}] {args.salt_param} {salt:.4f} {args.salt_unit}, "
                  f"{args.ratio_param} {ratio:.3f} -> σ = {sigma * 10:.3f} mS/cm "
                  f"(best {best * 10:.3f} mS/cm)  [{level}] run {run_id}", flush=True)
    measured = [h for h in history if h.sigma_s_m is not None]
    if not measured:
        print("no successful measurement")
        return history
    top = max(measured, key=lambda h: h.sigma_s_m or 0.0)
    print(f"\nbest formulation: {args.salt_param} = {top.salt:.4f} {args.salt_unit}, "
          f"{args.ratio_param} = {top.ratio:.3f}; measured conductivity "
          f"{(top.sigma_s_m or 0.0) * 10:.3f} mS/cm ({top.sigma_s_m:.4f} S/m) after "
          f"{len(measured)} experiments (iteration {top.index})")
    report_distance(top, args)
    if args.figure:
        summary(history, args)
    return history


def summary(history: list[Iteration], args: argparse.Namespace) -> dict[str, Any]:
    """The campaign figure: conductivity against each varied parameter, best so far."""
    from labctl.campaign import summary_figure

    rows = [{args.salt_param: h.salt, args.ratio_param: h.ratio,
             "sigma": h.sigma_s_m * 10 if h.sigma_s_m is not None else None}
            for h in history]
    drawn = summary_figure(rows, "sigma", [args.salt_param, args.ratio_param],
                           Path(args.figure), merit_label="ionic conductivity / mS/cm",
                           title=f"closed loop on {args.bench_id}")
    print(f"campaign figure: {', '.join(drawn['files'])}")
    return drawn


def solvent_densities(config: str | Path) -> tuple[float, float]:
    """EC and DMC densities (g/mL) from the bench config's materials."""
    raw = tomllib.loads(Path(config).read_text())
    mats = raw.get("materials", {})
    return (to(mats.get("EC", {}).get("density", "1.32 g/mL"), "g/mL"),
            to(mats.get("DMC", {}).get("density", "1.07 g/mL"), "g/mL"))


def mass_fraction(volume_fraction: float, rho_ec: float, rho_dmc: float) -> float:
    """EC mass fraction of an EC/DMC blend from its EC volume fraction."""
    m_ec = volume_fraction * rho_ec
    return m_ec / (m_ec + (1.0 - volume_fraction) * rho_dmc)


def volume_fraction(mass_frac: float, rho_ec: float, rho_dmc: float) -> float:
    """EC volume fraction of an EC/DMC blend from its EC mass fraction."""
    v_ec = mass_frac / rho_ec
    return v_ec / (v_ec + (1.0 - mass_frac) / rho_dmc)


def report_distance(top: Iteration, args: argparse.Namespace) -> None:
    """Compare with the simulator's ground truth (imported ONLY for this report)."""
    try:
        sys.path.insert(0, str(ROOT))
        from simulators.conductivity import conductivity_s_m, optimum
    except ImportError as exc:
        print(f"(true optimum unavailable: {exc})")
        return
    sigma = top.sigma_s_m or 0.0
    rho_ec, rho_dmc = solvent_densities(args.config)
    w_found = (top.ratio if args.ratio_basis == "mass"
               else mass_fraction(top.ratio, rho_ec, rho_dmc))
    t = args.temperature
    m_opt, w_opt, s_opt = optimum(temperature_c=t)
    v_opt = volume_fraction(w_opt, rho_ec, rho_dmc)
    v_found = volume_fraction(w_found, rho_ec, rho_dmc)
    s_model = conductivity_s_m(top.salt, w_found, t)
    print("distance from the simulator's TRUE optimum (read from simulators/conductivity.py, "
          "not learnt over MQTT):")
    print(f"  true optimum at {t:g} °C: {m_opt:.3f} mol/kg LiPF6, EC mass fraction "
          f"{w_opt:.3f} (EC volume fraction {v_opt:.3f} with EC {rho_ec:g}, DMC "
          f"{rho_dmc:g} g/mL), σ = {s_opt * 10:.3f} mS/cm")
    print(f"  best found: {top.salt:.3f} mol/kg, EC mass fraction {w_found:.3f} (volume "
          f"fraction {v_found:.3f}); measured σ = {sigma * 10:.3f} mS/cm, the model gives "
          f"{s_model * 10:.3f} mS/cm there")
    print(f"  conductivity: {100 * sigma / s_opt:.1f} % of the optimum, gap "
          f"{(s_opt - sigma) * 10:.3f} mS/cm measured ({(s_opt - s_model) * 10:.3f} mS/cm "
          f"by the model)")
    print(f"  composition: Δ molality {top.salt - m_opt:+.3f} mol/kg "
          f"({100 * (top.salt - m_opt) / m_opt:+.1f} %), Δ EC mass fraction "
          f"{w_found - w_opt:+.3f}, Δ EC volume fraction {v_found - v_opt:+.3f}")


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


def parser() -> argparse.ArgumentParser:
    """The command line (also used by tests/test_closed_loop.py to build the arguments)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--broker", default=os.environ.get("LABCTL_BROKER", "mqtt://127.0.0.1:1883"))
    p.add_argument("--bench-id", default="sim-bench-1")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--local", action="store_true",
                   help="start a private mosquitto and `labctl serve` on the simulated bench")
    p.add_argument("--config", default=str(ROOT / "config" / "sim.toml"))
    p.add_argument("--time-scale", type=float, default=200.0,
                   help="simulated bench (--local): 200 keeps the hotplate watchdog at 3 s")
    p.add_argument("--recipe", default="electrolyte_conductivity",
                   help="recipe name in the bench's recipe folder")
    p.add_argument("--salt-param", default="salt_molality")
    p.add_argument("--salt-unit", default="mol/kg")
    p.add_argument("--salt-min", type=float, default=0.1)
    p.add_argument("--salt-max", type=float, default=2.0)
    p.add_argument("--ratio-param", default="ec_fraction")
    p.add_argument("--ratio-min", type=float, default=0.1)
    p.add_argument("--ratio-max", type=float, default=0.9)
    p.add_argument("--ratio-basis", choices=("volume", "mass"), default="volume",
                   help="what the recipe's ratio parameter is: EC volume or mass fraction")
    p.add_argument("--temperature", type=float, default=25.0, help="°C, sent to the recipe")
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--initial", type=int, default=5, help="random points before the GP")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--run-timeout", type=float, default=300.0)
    p.add_argument("--figure", metavar="PATH.png",
                   help="write the campaign summary figure (PNG and SVG): conductivity "
                   "against each varied parameter, and the best so far")
    p.add_argument("--max-failures", type=int, default=3,
                   help="stop after this many failed runs in a row")
    return p


def main() -> None:
    args = parser().parse_args()
    if args.local:
        with local_bench(args):
            asyncio.run(optimise(args))
    else:
        asyncio.run(optimise(args))


if __name__ == "__main__":
    main()

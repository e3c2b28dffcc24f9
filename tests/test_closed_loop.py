"""The closed-loop example's optimiser against a real mosquitto and a real `labctl serve`
process on the simulated bench: every iteration is a conductivity measured over MQTT, and
the loop improves on where it started."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from mqtt_broker import MosquittoBroker

from simulators.conductivity import conductivity_s_m

ROOT = Path(__file__).resolve().parent.parent
ITERATIONS = 5
TIME_SCALE = 200  # the example's default: a run takes seconds, the hotplate watchdog 3 s


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("closed_loop",
                                                  ROOT / "examples" / "closed_loop.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while defined
    spec.loader.exec_module(module)
    return module


def test_volume_and_mass_fractions_convert_both_ways() -> None:
    cl = load_example()
    rho = cl.solvent_densities(ROOT / "config" / "sim.toml")
    assert rho == pytest.approx((1.32, 1.07))
    # 1 mL EC (1.32 g) + 1 mL DMC (1.07 g): 1.32 / 2.39 of the mass is EC
    assert cl.mass_fraction(0.5, *rho) == pytest.approx(1.32 / 2.39)
    for v in (0.1, 0.4, 0.9):
        assert cl.volume_fraction(cl.mass_fraction(v, *rho), *rho) == pytest.approx(v)


@pytest.mark.timeout(110)
async def test_optimiser_loop_over_mqtt(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cl = load_example()
    with MosquittoBroker(tmp_path / "broker") as broker:
        log = (tmp_path / "agent.log").open("wb")
        agent = subprocess.Popen(  # noqa: ASYNC220  (the real agent process under test)
            [sys.executable, "-m", "labctl", "serve", "--config", "config/sim.toml",
             "--broker", broker.url, "--bench-id", "loop-bench",
             "--data-dir", str(tmp_path / "runs"), "--time-scale", str(TIME_SCALE)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            args = cl.parser().parse_args(
                ["--broker", broker.url, "--bench-id", "loop-bench",
                 "--iterations", str(ITERATIONS), "--initial", "3", "--seed", "1",
                 "--run-timeout", "60", "--max-failures", "1"])
            history = await cl.optimise(args)
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
            log.close()
    out = capsys.readouterr().out
    agent_log = (tmp_path / "agent.log").read_text(errors="replace")[-3000:]
    assert len(history) == ITERATIONS, out + agent_log
    for h in history:
        assert h.status == "completed", out + agent_log
        assert h.sigma_s_m is not None and h.sigma_s_m > 0
        assert f"[{h.index:2d}]" in out  # every iteration is printed
        # what came back over MQTT is the simulated electrolyte's conductivity (the dosed
        # salt is within the dispenser's tolerance; the ratio is by volume)
        w = cl.mass_fraction(h.ratio, 1.32, 1.07)
        assert h.sigma_s_m == pytest.approx(conductivity_s_m(h.salt, w, 25.0), rel=0.05)
    best = max(h.sigma_s_m for h in history if h.sigma_s_m is not None)
    assert best > history[0].sigma_s_m
    assert "distance from the simulator's TRUE optimum" in out
    assert "composition: Δ molality" in out and "Δ EC mass fraction" in out

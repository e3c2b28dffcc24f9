"""One controller per bench: two real `labctl serve` processes with the same bench id, other
data dirs, one broker. The second refuses to start (exit 2, naming the first) without acting
on any command; the first goes on serving, every command done once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
from pathlib import Path

from mqtt_broker import MosquittoBroker
from mqtt_helpers import ROOT, TEST_RECIPES, TIME_SCALE, WAIT, WAIT_RECIPE

from labctl.client import BenchClient
from labctl.config import load_config
from labctl.mqtt.agent import Agent, ControllerConflict
from labctl.mqtt.bench_port import open_bench_port
from labctl.mqtt.connection import BrokerSettings

BENCH = "bench-a"
USERS = {BENCH: "pw-bench", "ai-planner": "pw-planner"}


def _serve(url: str, data: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "labctl", "serve", "--config", "config/sim.toml",
         "--broker", url, "--bench-id", BENCH, "--data-dir", str(data),
         "--time-scale", "1000", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def _finish(proc: subprocess.Popen[bytes], sig: int | None = signal.SIGTERM
                  ) -> tuple[int, str]:
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    _out, err = await asyncio.to_thread(proc.communicate, timeout=WAIT)
    return proc.returncode, err.decode(errors="replace")


def _run_folders(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if p.is_dir()) if data.exists() else []


async def test_second_agent_same_client_id_refuses_and_the_first_keeps_serving(
        tmp_path: Path) -> None:
    pw = tmp_path / "bench.pw"
    pw.write_text("pw-bench\n")
    login = ("--username", BENCH, "--password-file", str(pw))
    with MosquittoBroker(tmp_path / "broker", users=USERS, shipped=True) as broker:
        first = _serve(broker.url, tmp_path / "runs-1", *login)
        second: subprocess.Popen[bytes] | None = None
        try:
            async with BenchClient(broker.url, BENCH, username="ai-planner",
                                   password="pw-planner", timeout=WAIT) as c:
                await c.wait_online(WAIT)
                assert (await c.status())["bench_id"] == BENCH
                second = _serve(broker.url, tmp_path / "runs-2", *login)
                # commands sent while the second one starts are done once, by the first
                run = await c.submit(WAIT_RECIPE, {"duration": "1 s"})
                code, err = await _finish(second, sig=None)
                assert code == 2, err[-3000:]
                assert "controlled by another labctl serve" in err
                assert f"host {socket.gethostname()}" in err and f"pid {first.pid}" in err
                assert (await run.result(timeout=WAIT))["status"] == "completed"
                assert (await c.status())["bench_id"] == BENCH  # the first still serves
                runs = await c.list()
                assert [r["run_id"] for r in runs] == [run.run_id]
                assert _run_folders(tmp_path / "runs-2") == []
                assert first.poll() is None
                code, err = await _finish(first)
                assert code == 0, err[-3000:]
                # after a clean stop the next agent starts at once
                third = _serve(broker.url, tmp_path / "runs-2", *login)
                try:
                    status = await c.status()
                    assert status["bench_id"] == BENCH and status["state"] == "idle"
                finally:
                    code, err = await _finish(third)
                assert code == 0, err[-3000:]
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()


async def test_second_agent_other_client_id_refuses(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "broker") as broker:
        first = _serve(broker.url, tmp_path / "runs-1", "--client-id", "agent-one")
        try:
            async with BenchClient(broker.url, BENCH, timeout=WAIT) as c:
                await c.wait_online(WAIT)
                second = _serve(broker.url, tmp_path / "runs-2", "--client-id", "agent-two")
                code, err = await _finish(second, sig=None)
                assert code == 2, err[-3000:]
                assert f"pid {first.pid}" in err and "client id agent-one" in err
                run = await c.submit(WAIT_RECIPE, {"duration": "1 s"})
                assert (await run.result(timeout=WAIT))["status"] == "completed"
                assert [r["run_id"] for r in await c.list()] == [run.run_id]
                assert _run_folders(tmp_path / "runs-2") == []
        finally:
            code, err = await _finish(first)
        assert code == 0, err[-3000:]


async def test_agent_killed_the_next_one_takes_over_after_the_wait(tmp_path: Path) -> None:
    """A crashed agent leaves its last will: the next agent listens for it coming back,
    then takes control."""
    with MosquittoBroker(tmp_path / "broker") as broker:
        first = _serve(broker.url, tmp_path / "runs-1")
        async with BenchClient(broker.url, BENCH, timeout=WAIT) as c:
            await c.wait_online(WAIT)
            first.kill()
            await asyncio.to_thread(first.communicate, timeout=WAIT)
            second = _serve(broker.url, tmp_path / "runs-2")
            try:
                assert (await c.status())["bench_id"] == BENCH
                assert second.poll() is None
            finally:
                code, err = await _finish(second)
            assert code == 0, err[-3000:]


def _make_tls(folder: Path) -> dict[str, Path]:
    """A CA and a broker certificate for 127.0.0.1, made with openssl as README.md says."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in
                                  ("ca.key", "ca.crt", "broker.key", "broker.csr", "broker.crt"))
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=labctl test CA", "-keyout", str(ca_key), "-out", str(ca))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(key), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return {"ca": ca, "cert": cert, "key": key}


async def test_labctl_serve_over_the_shipped_tls_listener(tmp_path: Path) -> None:
    tls = _make_tls(tmp_path / "certs")
    pw = tmp_path / "bench.pw"
    pw.write_text("pw-bench\n")
    with MosquittoBroker(tmp_path / "broker", users=USERS, shipped=True, tls=tls) as broker:
        proc = _serve(broker.tls_url, tmp_path / "runs", "--username", BENCH,
                      "--password-file", str(pw), "--tls-ca", str(tls["ca"]))
        try:
            async with BenchClient(broker.tls_url, BENCH, username="ai-planner",
                                   password="pw-planner", tls_ca=str(tls["ca"]),
                                   timeout=WAIT) as c:
                assert (await c.status())["bench_id"] == BENCH
        finally:
            code, err = await _finish(proc)
        assert code == 0, err[-3000:]


async def test_broker_and_agent_both_crashed_the_next_agent_takes_control(
        tmp_path: Path) -> None:
    """The broker dies before it could send the agent's will, so it restarts with the dead
    agent's retained "online": the next agent (same client id) is not fooled into exit 2."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        first = _serve(broker.url, tmp_path / "runs-1")
        async with BenchClient(broker.url, BENCH, timeout=WAIT) as c:
            await c.wait_online(WAIT)
        await asyncio.sleep(1.5)  # past the test broker's autosave_interval (1 s)
        broker.stop(signal.SIGKILL)
        first.kill()
        await asyncio.to_thread(first.communicate, timeout=WAIT)
        broker.start()
        second = _serve(broker.url, tmp_path / "runs-2")
        try:
            async with BenchClient(broker.url, BENCH, timeout=WAIT) as c:
                assert (await c.status())["bench_id"] == BENCH
            assert second.poll() is None
        finally:
            code, err = await _finish(second)
        assert code == 0, err[-3000:]
    finally:
        broker.stop()


async def test_agent_back_after_another_took_control_stops(tmp_path: Path) -> None:
    """An agent that was away (broker gone, long backoff) while another agent took control
    finds the newer controller when it reconnects and stops (ControllerConflict), and the
    newer one goes on serving: no ping-pong."""
    cfg = load_config(ROOT / "config" / "sim.toml")
    cfg.bench.recipes_dir = str(TEST_RECIPES)
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        settings = BrokerSettings.from_url(broker.url)
        async with contextlib.AsyncExitStack() as stack:
            port_a = await stack.enter_async_context(open_bench_port(
                cfg, data_dir=tmp_path / "runs-a", time_scale=TIME_SCALE, bench_id=BENCH))
            old = Agent(port_a, settings, bench_id=BENCH, data_dir=tmp_path / "runs-a",
                        backoff_initial_s=8.0, backoff_max_s=8.0, takeover_wait_s=1.0)
            old_task = asyncio.create_task(old.run())
            await asyncio.wait_for(old.connected.wait(), WAIT)
            broker.restart()  # the old agent now waits 8 s before it reconnects
            port_b = await stack.enter_async_context(open_bench_port(
                cfg, data_dir=tmp_path / "runs-b", time_scale=TIME_SCALE, bench_id=BENCH))
            new = Agent(port_b, settings, bench_id=BENCH, data_dir=tmp_path / "runs-b",
                        backoff_initial_s=0.05, backoff_max_s=0.5, takeover_wait_s=1.0)
            new_task = asyncio.create_task(new.run())
            try:
                await asyncio.wait_for(new.connected.wait(), WAIT)
                with contextlib.suppress(ControllerConflict):
                    await asyncio.wait_for(old_task, WAIT)
                assert isinstance(old_task.exception(), ControllerConflict)
                assert str(new.instance["pid"]) in str(old_task.exception())
                async with BenchClient(broker.url, BENCH, timeout=WAIT) as c:
                    run = await c.submit(WAIT_RECIPE, {"duration": "1 s"})
                    assert (await run.result(timeout=WAIT))["status"] == "completed"
                assert not new_task.done()
                assert _run_folders(tmp_path / "runs-a") == []
            finally:
                new.stop()
                await asyncio.wait_for(new_task, WAIT)
    finally:
        broker.stop()

"""`labctl serve` as a real process: a command sent before the agent is up is answered once
it comes online (the SDK sends it again, same id); SIGTERM ends it cleanly with `offline`."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from mqtt_broker import MosquittoBroker
from mqtt_helpers import ROOT, WAIT, Raw

from labctl.client import BenchClient
from labctl.mqtt.topics import Topics


async def test_labctl_serve_process(tmp_path: Path) -> None:
    t = Topics("cli-bench")
    with MosquittoBroker(tmp_path / "broker") as broker:
        async with BenchClient(broker.url, "cli-bench", timeout=WAIT) as c:
            early = asyncio.create_task(c.status())  # nobody serves the bench yet
            await asyncio.sleep(0.2)
            assert not early.done()
            proc = subprocess.Popen(  # noqa: ASYNC220  (a real agent process under test)
                [sys.executable, "-m", "labctl", "serve", "--config", "config/sim.toml",
                 "--broker", broker.url, "--bench-id", "cli-bench",
                 "--data-dir", str(tmp_path / "runs"), "--time-scale", "1000"],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                status = await asyncio.wait_for(early, WAIT)
                assert status["bench_id"] == "cli-bench"
                assert c.bench_online.is_set()
            finally:
                proc.send_signal(signal.SIGTERM)
                out, err = await asyncio.to_thread(proc.communicate, timeout=WAIT)
            assert proc.returncode == 0, err.decode()[-2000:]
            assert b"labctl serve: bench cli-bench" in out
        async with Raw(broker.url, "after") as obs:
            await obs.subscribe(t.online)
            assert (await obs.wait_for(t.online))[-1] == b"offline"

"""No command lost, none run twice: the broker killed and restarted mid-run, and the agent
restarted with a command queued for it in the broker."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from mqtt_broker import MosquittoBroker
from mqtt_helpers import WAIT, WAIT_RECIPE, Raw, eventually, serve_bench

from labctl.client import BenchClient
from labctl.mqtt.topics import Topics

T = Topics("sim-bench-1")


async def test_broker_killed_mid_run_run_completes_result_delivered_once(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        async with serve_bench(broker.url, tmp_path / "runs") as served, \
                BenchClient(broker.url, "sim-bench-1", backoff_max_s=0.3) as c:
            run = await c.submit(WAIT_RECIPE, {"duration": "30 min"})  # 1.8 s per wait
            await eventually(lambda: served.bench.status()["state"] == "running", what="running")
            connections = served.agent.connections
            broker.stop(signal.SIGKILL)  # a crash: nothing saved since the last autosave
            await eventually(lambda: not served.agent.connected.is_set(), what="agent noticed")
            # the run goes on untouched while the broker is away, and ends
            await eventually(lambda: served.bench.store.index.get_run(run.run_id)["status"]
                             == "completed", what="run completed offline")
            assert served.agent.result_publications[run.run_id] == 0
            broker.start()  # same port
            result = await run.result(timeout=WAIT)
            assert result["status"] == "completed" and result["run_id"] == run.run_id
            await eventually(lambda: served.agent.connections > connections, what="reconnect")
            # the status is republished after the reconnect (retained, shows idle)
            async with Raw(broker.url, "observer") as obs:
                await obs.subscribe(T.status)
                await obs.subscribe(T.online)
                await eventually(lambda: bool(obs.on(T.status)) and bool(obs.on(T.online)),
                                 what="retained status and online")
                assert json.loads(obs.on(T.status)[-1])["state"] == "idle"
                assert obs.on(T.online)[-1] == b"online"
            await asyncio.sleep(0.5)  # give a wrong second publication a chance to show
            assert served.agent.result_publications[run.run_id] == 1
            assert c.result_deliveries[run.run_id] == 1
            assert [r["run_id"] for r in served.bench.store.list()] == [run.run_id]
    finally:
        broker.stop()


async def test_agent_restarted_with_a_queued_command(tmp_path: Path) -> None:
    data = tmp_path / "runs"
    with MosquittoBroker(tmp_path / "broker") as broker:
        # first life: the agent's persistent session (subscription to cmd) is created
        async with serve_bench(broker.url, data) as served:
            assert served.agent.connected.is_set()
        # the agent is gone; an AI client submits anyway
        async with Raw(broker.url, "ai") as ai:
            await ai.subscribe(f"{T.prefix}/reply/#")
            cmd = json.dumps({"id": "while-away", "command": "submit", "recipe": WAIT_RECIPE,
                              "parameters": {"duration": "1 s"}}).encode()
            await ai.publish(T.cmd, cmd)
            await asyncio.sleep(0.3)
            assert ai.on(T.reply("while-away")) == []
            # second life: the broker hands over the queued command
            async with serve_bench(broker.url, data) as served:
                reply = json.loads((await ai.wait_for(T.reply("while-away")))[0])
                assert reply["ok"] is True
                await ai.subscribe(T.result(reply["run_id"]))
                result = json.loads((await ai.wait_for(T.result(reply["run_id"])))[0])
                assert result["status"] == "completed"
            # third life: the same command id again gets the same reply, starts nothing
            async with serve_bench(broker.url, data) as served:
                await ai.publish(T.cmd, cmd)
                replies = await ai.wait_for(T.reply("while-away"), count=2)
                assert json.loads(replies[-1]) == reply
                assert [r["run_id"] for r in served.bench.store.list()] == [reply["run_id"]]
                assert served.agent.stats["duplicates"] == 1

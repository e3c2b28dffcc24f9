"""Run owners when several runs run at once, through the shipped broker configuration
(ACL, passwords): a client may pause or abort its own running run by id while another
client's run goes on; acting on another's run by id, or on every running run when one of
them is not its own, is forbidden; an operator may act on all of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from mqtt_broker import MosquittoBroker
from mqtt_helpers import WAIT_RECIPE, eventually, serve_bench

from labctl.client import BenchClient, CommandError

BENCH = "bench-a"
USERS = {BENCH: "pw-bench", "ai-planner": "pw-planner", "ai-optimiser": "pw-optimiser",
         "operator-alice": "pw-alice"}
pytestmark = pytest.mark.timeout(180)


def creds(user: str) -> dict[str, str]:
    return {"username": user, "password": USERS[user]}


async def test_per_run_control_respects_owners(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "broker", users=USERS, shipped=True) as broker:
        url = broker.url
        async with serve_bench(url, tmp_path / "runs", bench_id=BENCH, concurrency=2,
                               operators=("operator-alice",), **creds(BENCH)) as served, \
                BenchClient(url, BENCH, **creds("ai-optimiser")) as mine, \
                BenchClient(url, BENCH, **creds("ai-planner")) as theirs, \
                BenchClient(url, BENCH, **creds("operator-alice")) as operator:
            bench = served.bench

            def states() -> dict[str, str]:
                return {r["run_id"]: r["state"] for r in bench.status()["running"]}

            a = await mine.submit(WAIT_RECIPE, {"duration": "2 h"})
            b = await theirs.submit(WAIT_RECIPE, {"duration": "2 h"})
            await eventually(lambda: states() == {a.run_id: "running", b.run_id: "running"},
                             what="both running")
            for attempt in (mine.pause(b.run_id), mine.abort(b.run_id), mine.pause()):
                with pytest.raises(CommandError) as refused:
                    await attempt
                assert refused.value.code == "forbidden", refused.value
            assert states() == {a.run_id: "running", b.run_id: "running"}
            await mine.pause(a.run_id)
            await eventually(lambda: states()[a.run_id] == "paused", what="a paused")
            assert states()[b.run_id] == "running"
            status = await theirs.status()
            assert [r["run_id"] for r in status["running"]] == [a.run_id, b.run_id]
            assert {r["owner"] for r in status["running"]} == {"ai-optimiser", "ai-planner"}
            await operator.abort()  # every running run
            assert (await bench.wait(a.run_id))["status"] == "aborted"
            assert (await bench.wait(b.run_id))["status"] == "aborted"

"""The operator TUI on a remote bench, against a real mosquitto and the MQTT agent serving
config/sim.toml's bench: the same keys as locally (start from the picker with the agent's
validation errors inline, pause/resume, abort after the confirmation, e-stop at once), and
the bench picker that lists the benches on the broker from their retained topics."""

from __future__ import annotations

from pathlib import Path

import pytest
from mqtt_broker import MosquittoBroker
from mqtt_helpers import TEST_RECIPES, serve_bench
from textual.widgets import Input, Static
from tui_support import pick_recipe, screen_text, unsafe, until

from labctl.tui import BenchDirectory, LabctlApp, RemoteBackend
from labctl.tui.screens import (
    BenchPickerScreen,
    ConfirmScreen,
    ParameterFormScreen,
)

pytestmark = pytest.mark.timeout(180)
SIZE = (100, 32)
BENCH = "sim-bench-1"


@pytest.fixture
def broker(tmp_path: Path):
    with MosquittoBroker(tmp_path / "broker") as b:
        yield b


def remote(url: str, bench_id: str = BENCH) -> RemoteBackend:
    return RemoteBackend(url, bench_id, recipes_dir=TEST_RECIPES, timeout_s=30.0)


def run_state(be: RemoteBackend) -> str | None:
    return be.view.run.state if be.view.run else None


async def test_remote_start_pause_resume_abort_with_the_same_keys(broker, tmp_path) -> None:
    async with serve_bench(broker.url, tmp_path / "runs") as served:
        be = remote(broker.url)
        app = LabctlApp(be)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, app.backend_ready.is_set, "the broker connection")
            assert app.start_error is None
            await until(pilot, lambda: be.view.connected and be.online == "online",
                        "the bench online")
            await pilot.press("s")
            await pick_recipe(pilot, "mqtt_wait.json")
            await until(pilot, lambda: isinstance(app.screen, ParameterFormScreen), "form")
            form = app.screen
            form.query_one("#param-duration", Input).value = "11 h"  # over the max
            await pilot.press("ctrl+s")
            err = form.query_one("#err-duration", Static)
            await until(pilot, lambda: err.has_class("shown"), "the agent's inline error")
            assert "above the maximum" in str(err.render())
            assert served.bench.tickets == {}

            form.query_one("#param-duration", Input).value = "1 h"
            await pilot.press("ctrl+s")
            await until(pilot, lambda: not isinstance(app.screen, ParameterFormScreen),
                        "the form to close")
            await until(pilot, lambda: len(served.bench.tickets) == 1, "the run queued")
            [run_id] = served.bench.tickets
            await until(pilot, lambda: be.view.run is not None and be.view.run.run_id == run_id
                        and be.view.run.step("first") is not None
                        and be.view.run.step("first").state == "running",  # type: ignore[union-attr]
                        "the first wait running, as seen through the broker")
            await pilot.pause(0.3)
            text = screen_text(app)
            assert "remote" in text and "mqtt_wait" in text and "▶ running" in text

            await pilot.press("p")
            await until(pilot, lambda: run_state(be) == "paused", "paused")
            assert str(served.bench.current.machine.state) == "paused"
            await pilot.press("r")
            await until(pilot, lambda: run_state(be) == "running", "running again")
            assert str(served.bench.current.machine.state) == "running"

            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "confirmation")
            assert str(served.bench.current.machine.state) == "running"
            await pilot.press("y")
            await until(pilot, lambda: run_state(be) == "aborted", "aborted")
            assert (await served.bench.wait(run_id))["status"] == "aborted"
            assert unsafe(served.bench) == []
            await pilot.pause(0.3)
            assert "ABORTED" in screen_text(app)


async def test_remote_estop_is_immediate(broker, tmp_path) -> None:
    async with serve_bench(broker.url, tmp_path / "runs") as served:
        be = remote(broker.url)
        app = LabctlApp(be)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, app.backend_ready.is_set, "the broker connection")
            run_id = await be.submit(TEST_RECIPES / "mqtt_wait.json", {"duration": "2 h"})
            await until(pilot, lambda: run_state(be) == "running", "running")
            await pilot.press("e")
            assert not isinstance(app.screen, ConfirmScreen)
            await until(pilot, lambda: be.view.state == "held", "the bench held")
            assert (await served.bench.wait(run_id))["status"] == "aborted"
            assert unsafe(served.bench) == []
            await until(pilot, lambda: run_state(be) == "aborted", "aborted on screen")


async def test_bench_picker_lists_benches_and_operates_the_chosen_one(broker, tmp_path) -> None:
    async with serve_bench(broker.url, tmp_path / "runs"):
        directory = BenchDirectory(broker.url)
        app = LabctlApp(directory=directory,
                        make_backend=lambda bench_id: remote(broker.url, bench_id))
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: isinstance(app.screen, BenchPickerScreen), "the picker")
            await until(pilot, lambda: BENCH in directory.benches
                        and directory.benches[BENCH].online == "online", "the bench listed")
            await pilot.pause(0.5)
            text = screen_text(app)
            assert BENCH in text and "online" in text
            await pilot.press("enter")
            await until(pilot, app.backend_ready.is_set, "the chosen bench")
            assert app.start_error is None
            assert isinstance(app.backend, RemoteBackend)
            assert app.backend.bench_id == BENCH
            await until(pilot, lambda: app.view.state == "idle", "its status")
            await pilot.pause(0.3)
            assert f"{BENCH} remote" in screen_text(app)


async def test_remote_tui_on_the_shipped_broker_config(tmp_path) -> None:
    """The shipped config makes the client id the username (one connection per user): the
    picker, the status/events view and the commands of one operator share it, commands go
    on cmd/<operator> and the run is the operator's."""
    users = {BENCH: "pw-bench", "operator-alice": "pw-alice"}
    login = {"username": "operator-alice", "password": "pw-alice"}
    with MosquittoBroker(tmp_path / "broker", users=users, shipped=True) as b:
        async with serve_bench(b.url, tmp_path / "runs", username=BENCH, password="pw-bench",
                               operators=("operator-alice",)) as served:
            directory = BenchDirectory(b.url, **login)
            app = LabctlApp(directory=directory, make_backend=lambda bench_id: RemoteBackend(
                b.url, bench_id, recipes_dir=TEST_RECIPES, timeout_s=30.0, **login))
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: isinstance(app.screen, BenchPickerScreen), "picker")
                await until(pilot, lambda: BENCH in directory.benches
                            and directory.benches[BENCH].online == "online", "bench listed")
                await pilot.pause(0.5)
                await pilot.press("enter")
                await until(pilot, app.backend_ready.is_set, "the chosen bench")
                assert app.start_error is None
                be = app.backend
                assert isinstance(be, RemoteBackend)
                await until(pilot, lambda: be.view.connected and be.online == "online",
                            "the bench online")
                run_id = await be.submit(TEST_RECIPES / "mqtt_wait.json", {"duration": "2 h"})
                await until(pilot, lambda: run_state(be) == "running", "running, seen remotely")
                await pilot.press("p")
                await until(pilot, lambda: run_state(be) == "paused", "paused")
                await pilot.press("e")
                await until(pilot, lambda: be.view.state == "held", "the bench held")
                result = await served.bench.wait(run_id)
                assert result["status"] == "aborted"
                assert result["instigator"]["owner"] == "operator-alice"
                assert served.agent.connections == 1
                assert be.client.connections == 1  # nothing of its own took its place

"""`LabctlApp`: the bench operator's terminal (Textual).

The screen shows what `backend.view` says, redrawing only the panels whose section changed,
at most `refresh_hz` times a second. Every command goes to the backend in a worker, so a
slow device or broker never freezes the screen or the keys; e-stop goes out at once, without
a question, and never waits behind another command.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.css.query import NoMatches
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer

from labctl.problems import BenchError
from labctl.tui.backend import BenchBackend, BenchDirectory, RecipeEntry
from labctl.tui.model import BenchView
from labctl.tui.screens import (
    BenchPickerScreen,
    ConfirmScreen,
    InventoryScreen,
    ParameterFormScreen,
    QueueCancelScreen,
    RecipePickerScreen,
    RunRecordScreen,
)
from labctl.tui.widgets import BenchBar, DevicesPanel, EventLog, LivePlot, QueuePanel, RunPanel

DEVICES_REDRAW_S = 1.0
"""Device rows are redrawn at least this often even without news: staleness ages."""
RUN_COMMANDS = frozenset({"pause", "resume", "abort"})
RUN_STATES_PAUSABLE = frozenset({"running"})
RUN_STATES_RESUMABLE = frozenset({"pausing", "paused"})
RUN_STATES_ABORTABLE = frozenset({"ready", "running", "pausing", "paused"})


class LabctlApp(App[None]):
    CSS_PATH = "labctl.tcss"
    TITLE = "labctl"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "start", "Start"),
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("a", "abort", "Abort"),
        Binding("e", "estop", "E-STOP"),
        Binding("c", "cancel_queued", "Cancel queued"),
        Binding("l", "record", "Record"),
        Binding("i", "inventory", "Inventory"),
        Binding("q", "quit_app", "Quit"),
    ]

    def __init__(
        self,
        backend: BenchBackend | None = None,
        *,
        directory: BenchDirectory | None = None,
        make_backend: Any = None,
        refresh_hz: float = 10.0,
        now: float | None = None,
    ):
        """`backend`: the bench to operate; or `directory` + `make_backend(bench_id)` to
        pick one on a broker first. `now` freezes the clock staleness is judged by
        (snapshots)."""
        super().__init__()
        if backend is None and (directory is None or make_backend is None):
            raise ValueError("LabctlApp needs a backend, or a bench directory to pick one")
        self.backend = backend
        self.directory = directory
        self.make_backend = make_backend
        self.refresh_hz = refresh_hz
        self.now = now
        self.backend_ready = asyncio.Event()
        self.start_error: str | None = None
        self._seen: dict[str, int] = {}
        self._devices_drawn = 0.0
        self._backend_closed = False
        self._offered_drawn: frozenset[str] = frozenset()

    # -- layout ---------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield BenchBar(id="bench-bar")
        with Horizontal(id="main"):
            yield RunPanel(id="run")
            yield LivePlot(id="plot")
        yield DevicesPanel(id="devices", now=self.now)
        with Horizontal(id="lower"):
            yield EventLog(id="events")
            yield QueuePanel(id="queue")
        yield Footer()

    def on_mount(self) -> None:
        for wid, title in (("#run", "Run"), ("#devices", "Devices"), ("#queue", "Queue"),
                           ("#plot", "Measurement"), ("#events", "Events")):
            self.query_one(wid).border_title = title
        if self.backend is not None:
            self._operate(self.backend)
        else:
            assert self.directory is not None
            self._open_directory()

    @work(group="attach")
    async def _open_directory(self) -> None:
        assert self.directory is not None
        await self.directory.start()
        self.push_screen(BenchPickerScreen(self.directory), self._picked)

    def _picked(self, bench_id: str | None) -> None:
        if bench_id:
            self._operate(self.make_backend(bench_id))

    def _operate(self, backend: BenchBackend) -> None:
        self.backend = backend
        self._draw(force=True)
        self.set_interval(1.0 / self.refresh_hz, self._tick)
        self._start_backend()

    @work(group="attach")
    async def _start_backend(self) -> None:
        assert self.backend is not None
        if self.directory is not None:
            # one connection per username (use_username_as_clientid): the picker's goes
            await self.directory.close()
        try:
            await self.backend.start()
        except Exception as exc:  # shown on screen; the operator can still quit
            self.start_error = str(exc)
            self.backend.view.connection = f"failed to start: {exc}"
            self.backend.view.touch("bench")
            self.notify(f"could not start: {exc}", severity="error", timeout=30)
        finally:
            self.backend_ready.set()

    # -- drawing --------------------------------------------------------------------------
    def on_resize(self) -> None:
        self._fit_devices()

    def _fit_devices(self) -> None:
        """One table row per device, leaving the run (8 lines) and the log (5) their room."""
        n = len(self.backend.view.devices) if self.backend is not None else 0
        room = self.size.height - 2 - 8 - 5
        height = max(5, min(n + 3, room))
        panel = self.query_one(DevicesPanel)
        if panel.styles.height is None or panel.styles.height.value != height:
            panel.styles.height = height

    @property
    def view(self) -> BenchView:
        assert self.backend is not None
        return self.backend.view

    def _tick(self) -> None:
        if self.backend is None or not isinstance(self.screen, ModalScreen | Screen):
            return
        with contextlib.suppress(NoMatches):  # shutting down: the panels are gone
            self._draw()

    def _changed(self, section: str) -> bool:
        v = self.view.versions.get(section, 0)
        if self._seen.get(section) == v:
            return False
        self._seen[section] = v
        return True

    def _draw(self, force: bool = False) -> None:
        view = self.view
        loop_now = asyncio.get_running_loop().time()
        if self._changed("bench") or force:
            self.query_one(BenchBar).show(view)
        run_changed = self._changed("run")
        if run_changed or force:
            self.query_one(RunPanel).show(view)
        offered = self._offered()
        if offered != self._offered_drawn:
            self._offered_drawn = offered
            self.refresh_bindings()  # the footer offers only what the run state allows
        devices_due = loop_now - self._devices_drawn >= DEVICES_REDRAW_S
        if self._changed("devices") or run_changed or devices_due or force:
            self._devices_drawn = loop_now
            self.query_one(DevicesPanel).show(view)
            self._fit_devices()
        if self._changed("queue") or force:
            self.query_one(QueuePanel).show(view)
        plot = self.query_one(LivePlot)
        if self._changed("plot") or plot.pending or force:
            plot.show(view, force=force)
        if self._changed("events") or force:
            self.query_one(EventLog).show(view)

    # -- commands -------------------------------------------------------------------------
    def _offered(self) -> frozenset[str]:
        """The run commands the current run state allows: pause while it runs, resume
        while it pauses, abort while it is active; none once it has ended."""
        if self.backend is None:
            return frozenset()
        run = self.view.run
        state = run.state if run is not None else ""
        out = set()
        if state in RUN_STATES_ABORTABLE:
            out.add("abort")
        if state in RUN_STATES_PAUSABLE:
            out.add("pause")
        if state in RUN_STATES_RESUMABLE or (self.view.state == "held" and not (
                run is not None and run.active)):
            out.add("resume")  # after an e-stop, resume releases the held queue
        if any(q.queued for q in self.view.queue):
            out.add("cancel_queued")
        return frozenset(out)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Pause, resume and abort are offered (footer, key) only when the run state
        allows them; everything else always."""
        if action in RUN_COMMANDS:
            return action in self._offered()
        if action == "cancel_queued":  # offered while runs wait in the queue
            return action in self._offered()
        return True

    def _usable(self) -> bool:
        if self.backend is None or not self.backend_ready.is_set() or self.start_error:
            self.notify("the bench is not connected", severity="warning")
            return False
        return True

    @work(group="commands")
    async def _command(self, name: str, call: Any) -> None:
        assert self.backend is not None
        try:
            await call()
        except BenchError as exc:
            self.backend.note(f"{name} refused: {exc.message}", "warning")
            self.notify(f"{name}: {exc.message}", severity="warning")
        except Exception as exc:  # the screen stays up whatever the bench did
            self.backend.note(f"{name} failed: {type(exc).__name__}: {exc}", "error")
            self.notify(f"{name} failed: {exc}", severity="error")
        else:
            self.backend.note(f"{name} done")

    def action_pause(self) -> None:
        if self._usable():
            assert self.backend is not None
            self._command("pause", self.backend.pause)

    def action_resume(self) -> None:
        if self._usable():
            assert self.backend is not None
            self._command("resume", self.backend.resume)

    def action_estop(self) -> None:
        """No question asked: every device to its safe state now."""
        if self.backend is None:
            return
        self.backend.note("E-STOP pressed", "error")
        self._command("e-stop", self.backend.estop)

    def action_abort(self) -> None:
        if not self._usable():
            return
        run = self.view.run
        if run is None or not run.active:
            self.notify("no run in progress to abort", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes and self.backend is not None:
                self._command("abort", self.backend.abort)

        self.push_screen(ConfirmScreen(
            f"Abort run {run.run_id} ({run.recipe})?\nThe running step is cancelled and every "
            "device goes to its safe state.", yes="Abort run", no="Keep running"), answered)

    def action_cancel_queued(self) -> None:
        """Pick one of the queued runs and cancel it (nothing of it has run)."""
        if not self._usable():
            return
        rows = [q for q in self.view.queue if q.queued]
        if not rows:
            self.notify("no run is queued", severity="warning")
            return

        def chosen(run_id: str | None) -> None:
            if run_id and self.backend is not None:
                backend = self.backend
                self._command(f"cancel {run_id}", lambda: backend.cancel(run_id))

        self.push_screen(QueueCancelScreen(rows), chosen)

    def action_start(self) -> None:
        if not self._usable():
            return
        assert self.backend is not None
        backend = self.backend

        def chosen(entry: RecipeEntry | None) -> None:
            if entry is not None:
                self.push_screen(ParameterFormScreen(backend, entry), queued)

        def queued(run_id: str | None) -> None:
            if run_id:
                backend.note(f"queued run {run_id}")
                self.notify(f"queued run {run_id}")

        folder = str(backend.recipes_dir)
        self.push_screen(RecipePickerScreen(folder, backend.recipes()), chosen)

    def action_inventory(self) -> None:
        if self._usable():
            assert self.backend is not None
            self.push_screen(InventoryScreen(self.backend))

    def action_record(self) -> None:
        if self._usable():
            self._show_record()

    @work(group="record", exclusive=True)
    async def _show_record(self) -> None:
        assert self.backend is not None
        try:
            rec = await self.backend.run_record()
        except BenchError as exc:
            self.notify(exc.message, severity="warning")
            return
        self.push_screen(RunRecordScreen(rec))

    def action_quit_app(self) -> None:
        if self.backend is not None and self.view.run_active:
            local = self.backend.mode == "local"
            consequence = ("the run is aborted and every device goes to its safe state"
                           if local else "the run goes on on the bench")

            def answered(yes: bool | None) -> None:
                if yes:
                    self._quit_worker()

            self.push_screen(ConfirmScreen(f"A run is active. Quit anyway?\nIf you quit, "
                                           f"{consequence}.", yes="Quit", no="Stay"), answered)
            return
        self._quit_worker()

    @work(group="quit", exclusive=True)
    async def _quit_worker(self) -> None:
        await self.close_backend()
        self.exit()

    async def close_backend(self) -> None:
        if self._backend_closed:
            return
        self._backend_closed = True
        if self.backend is not None:
            with contextlib.suppress(Exception):
                await self.backend.close()
        if self.directory is not None:
            await self.directory.close()

    async def on_unmount(self) -> None:
        await self.close_backend()  # Ctrl+Q and the like: the bench is still left safe


def run_tui(backend: BenchBackend | None = None, **kw: Any) -> None:
    LabctlApp(backend, **kw).run()


__all__ = ["LabctlApp", "run_tui"]

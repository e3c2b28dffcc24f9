"""The measurement in progress: current vs potential (CV, LSV), Nyquist (EIS), voltage vs
time (cycling, chronopotentiometry), current vs time (chronoamperometry)."""

from __future__ import annotations

import time

from textual_plotext import PlotextPlot

from labctl.tui.model import BenchView

MIN_REDRAW_S = 0.25
"""A plot redraw costs more than a table cell: at most four a second, whatever the rate."""


class LivePlot(PlotextPlot):
    def __init__(self, **kw: object):
        super().__init__(**kw)  # type: ignore[arg-type]
        self._drawn_at = 0.0
        self._pending = False

    def on_mount(self) -> None:
        super().on_mount()
        self._draw(None)

    def show(self, view: BenchView, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn_at < MIN_REDRAW_S:
            self._pending = True
            return
        self._drawn_at = now
        self._pending = False
        self._draw(view)

    @property
    def pending(self) -> bool:
        """A change arrived while throttled: draw it at the next tick."""
        return self._pending

    def _draw(self, view: BenchView | None) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        m = view.measurement if view is not None else None
        if m is None:
            plt.title("no measurement")
            self.refresh()
            return
        title, xlabel, ylabel = m.axes
        where = f" {m.step}" if m.step else ""
        plt.title(f"{title}{where}  ({len(m.xs)} points)")
        ys = m.ys
        if ylabel.endswith("/ A") and ys:  # currents read better as µA, nA
            factor, prefix = _prefix(max(abs(y) for y in ys))
            ys = [y / factor for y in ys]
            ylabel = ylabel[:-1] + prefix + "A"
        plt.xlabel(xlabel)
        plt.ylabel(ylabel)
        if m.xs:
            if title.startswith("EIS"):
                plt.scatter(m.xs, ys, marker="dot")
            else:
                plt.plot(m.xs, ys, marker="braille")
        self.refresh()


def _prefix(magnitude: float) -> tuple[float, str]:
    for factor, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if magnitude >= factor:
            return factor, prefix
    return 1e-12, "p"

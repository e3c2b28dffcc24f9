"""The panels of the main screen, one per module; each redraws itself from a BenchView."""

from labctl.tui.widgets.bench_bar import BenchBar
from labctl.tui.widgets.devices import DevicesPanel
from labctl.tui.widgets.event_log import EventLog
from labctl.tui.widgets.live_plot import LivePlot
from labctl.tui.widgets.queue import QueuePanel
from labctl.tui.widgets.run_panel import RunPanel

__all__ = ["BenchBar", "DevicesPanel", "EventLog", "LivePlot", "QueuePanel", "RunPanel"]

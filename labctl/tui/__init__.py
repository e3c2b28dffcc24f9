"""The bench operator's terminal UI (`labctl tui`): devices, run progress, live plot, event
log, and pause/resume/abort/e-stop at a keystroke, on a local bench or over MQTT."""

from labctl.tui.app import LabctlApp
from labctl.tui.backend import (
    BackendError,
    BenchBackend,
    BenchDirectory,
    LocalBackend,
    RecipeRejected,
    RemoteBackend,
)

__all__ = ["BackendError", "BenchBackend", "BenchDirectory", "LabctlApp", "LocalBackend",
           "RecipeRejected", "RemoteBackend"]

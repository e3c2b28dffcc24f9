"""Dialogs and screens over the main screen: confirm, recipe picker, parameter form, run
record, bench picker, queued run to cancel, inventory."""

from labctl.tui.screens.bench_picker import BenchPickerScreen
from labctl.tui.screens.confirm import ConfirmScreen
from labctl.tui.screens.inventory import InventoryScreen
from labctl.tui.screens.param_form import ParameterFormScreen
from labctl.tui.screens.queue_cancel import QueueCancelScreen
from labctl.tui.screens.recipe_picker import RecipePickerScreen
from labctl.tui.screens.run_record import RunRecordScreen

__all__ = ["BenchPickerScreen", "ConfirmScreen", "InventoryScreen", "ParameterFormScreen",
           "QueueCancelScreen",
           "RecipePickerScreen", "RunRecordScreen"]

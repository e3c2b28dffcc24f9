"""Actions of a balance (capability "balance"): weigh, tare and zero."""

from __future__ import annotations

from labctl.actions.args import Arg
from labctl.actions.base import (
    ActionContext,
    ActionSpec,
    ArgIssue,
    Args,
    DeviceView,
    Result,
)
from labctl.capabilities.balance import Balance


class BalanceWeigh(ActionSpec[Balance]):
    capability = "balance"
    name = "weigh"
    summary = "Read the net mass (a stable reading unless stable = false)."
    args = (Arg("stable", "boolean", required=False, default=True),)

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return 5.0 if a.get("stable", True) else 1.0

    def describe(self, dev: DeviceView, a: Args) -> str:
        on = f" ({dev.param('vessel')})" if dev.param("vessel") else ""
        return f"Weigh on {dev.name}{on}."

    async def run(self, device: Balance, a: Args, ctx: ActionContext) -> Result:
        mass = await device.weigh(stable=bool(a.get("stable", True)))
        ctx.record("weighing", vessel=a.get("vessel"), mass_g=mass)
        return {"mass_g": mass}

    def check(self, dev: DeviceView, a: Args) -> list[ArgIssue]:
        a["vessel"] = dev.param("vessel")
        return []


class BalanceTare(ActionSpec[Balance]):
    capability = "balance"
    name = "tare"
    summary = "Tare: what is on the pan now reads zero."

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return 3.0

    def describe(self, dev: DeviceView, a: Args) -> str:
        return f"Tare {dev.name}."

    async def run(self, device: Balance, a: Args, ctx: ActionContext) -> Result:
        return {"tare_g": await device.tare()}


class BalanceZero(ActionSpec[Balance]):
    capability = "balance"
    name = "zero"
    summary = "Zero the balance."

    def estimate_s(self, dev: DeviceView, a: Args) -> float:
        return 3.0

    def describe(self, dev: DeviceView, a: Args) -> str:
        return f"Zero {dev.name}."

    async def run(self, device: Balance, a: Args, ctx: ActionContext) -> Result:
        await device.zero()
        return {}


ACTIONS = (BalanceWeigh, BalanceTare, BalanceZero)

"""Where moved material goes, for the actions that move it (pumps of every kind): the
vessel a route leads to at the time of the move, and the fields of the addition recorded."""

from __future__ import annotations

from typing import Any

from labctl.actions.base import ActionContext, DeviceView


def reservoir_material(dev: DeviceView, vessel: str | None) -> str | None:
    """The material a reservoir holds when it holds exactly one (for provenance)."""
    if vessel is None:
        return None
    v = dev.bench.vessels.get(vessel)
    if v is not None and len(v.contents) == 1:
        return next(iter(v.contents))
    return None


async def reached(ctx: ActionContext, target: str | None) -> dict[str, Any]:
    """Where material sent to `target` actually goes, read at the time of the move: a
    vessel as it is, a routing device (`@sel_valve`) resolved through its position now."""
    if target is None or not str(target).startswith("@"):
        return {"vessel": target}
    resolve = getattr(ctx, "resolve_route", None)
    if resolve is None:
        return {"vessel": None, "route": [], "route_error": "route not resolvable here"}
    found: dict[str, Any] = await resolve(target)
    return found


def expected(expect: str | None, lead: str | None) -> str | None:
    """The vessel validation expected a move to reach (None: a bare port through a route)."""
    if expect:
        return expect
    return lead if lead and not lead.startswith("@") else None


def addition(where: dict[str, Any], expected: str | None = None,
             after: dict[str, Any] | None = None) -> dict[str, Any]:
    """The vessel fields of an addition record: the vessel reached, the route it went
    through, and what the recipe expected when that differs (a misrouted addition)."""
    fields: dict[str, Any] = {"vessel": where.get("vessel")}
    if where.get("route"):
        fields["route"] = where["route"]
    if where.get("route_error"):
        fields["route_error"] = where["route_error"]
    if expected is not None and where.get("vessel") != expected:
        fields["expected_vessel"] = expected
    if after is not None and after.get("vessel") != where.get("vessel"):
        fields["route_changed_to"] = after.get("vessel")
    return fields

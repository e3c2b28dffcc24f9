"""Device readings in a few words: the key figures of each kind of device, in the units an
operator reads (mL, mL/min, °C, rpm, g, V, A), whatever driver reported them.

Drivers report SI floats named by suffix (labctl.units); this picks the ones worth a glance
and formats them, so the devices panel stays one short line per device.
"""

from __future__ import annotations

from typing import Any

STATE_SYMBOLS = {
    "idle": "·", "busy": "▶", "fault": "✖", "offline": "✖", "unknown": "?",
}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _si(value: float, unit: str) -> str:
    """Engineering notation for small currents and potentials: 1.2 µA, 350 mV."""
    a = abs(value)
    for factor, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if a >= factor or factor == 1e-9:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_readings(readings: dict[str, Any], action: str | None = None) -> str:
    """One line of key readings; `action` is what the device is doing in the run."""
    r = readings
    parts: list[str] = []
    if action:
        parts.append(action)
    v = _num(r.get("plunger_volume_l"))
    if v is not None:
        parts.append(f"plunger {v * 1e3:.3f} mL")
    if r.get("valve_port") not in (None, ""):
        parts.append(f"port {r['valve_port']}")
    if r.get("position") not in (None, ""):
        vessel = f" {r['vessel']}" if r.get("vessel") else ""
        parts.append(f"pos {r['position']}{vessel}")
    flow = _num(r.get("flow_l_s"))
    if flow is not None:
        parts.append(f"{flow * 6e4:.2f} mL/min")
    for key, label in (("infused_l", "in"), ("withdrawn_l", "out"), ("volume_l", "vol")):
        x = _num(r.get(key))
        if x is not None and (x or key == "volume_l"):
            parts.append(f"{label} {x * 1e3:.3f} mL")
    speed = _num(r.get("speed_rpm"))
    if speed is not None:
        sp = _num(r.get("speed_setpoint_rpm"))
        parts.append(f"{speed:.0f} rpm" + (f" (sp {sp:.0f})" if sp else ""))
    for key in ("medium_temperature_c", "temperature_c", "plate_temperature_c"):
        t = _num(r.get(key))
        if t is not None:
            sp = _num(r.get("temperature_setpoint_c", r.get("setpoint_c")))
            on = r.get("heater_on", r.get("running"))
            tail = f" (sp {sp:.1f})" if sp is not None and on else ""
            parts.append(f"{t:.1f} °C{tail}")
            break
    mass = _num(r.get("mass_g"))
    if mass is not None:
        parts.append(f"{mass:.4f} g" + ("" if r.get("stable", True) else " unstable"))
    if "current_a" in r or "potential_v" in r:
        e, i = _num(r.get("potential_v")), _num(r.get("current_a"))
        if e is not None:
            parts.append(f"E {_si(e, 'V')}")
        if i is not None:
            parts.append(f"I {_si(i, 'A')}")
    n = _num(r.get("points_received"))
    if n:
        parts.append(f"#{int(n)}")
    if r.get("pump_state") and not parts:
        parts.append(str(r["pump_state"]))
    return "  ".join(parts)


def format_duration(seconds: float | None) -> str:
    """`1:02:03`, `4:05`, or `--` when unknown."""
    if seconds is None:
        return "--"
    s = max(0, round(float(seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"

"""`labctl devices`: connect to every configured device and show identity and status."""

from __future__ import annotations

import json
from typing import Any

from labctl.cli import display
from labctl.cli.common import (
    DEFAULT_CONFIG_PATH,
    EXIT_FAILED,
    EXIT_INVALID,
    ConfigOpt,
    JsonOpt,
    TimeScaleOpt,
    fail,
    load_bench_config,
)
from labctl.cli.root import app
from labctl.errors import ConfigError, DeviceError


async def _survey(cfg: Any, time_scale: float | None) -> list[dict[str, Any]]:
    # Imported here, not at the top: the drivers' stack (config, pint, pyserial) is 0.5 s that
    # `labctl --help` would otherwise pay (bench/startup.py).
    from labctl.instruments import Instruments

    inst = Instruments(cfg, time_scale=time_scale)
    rows: list[dict[str, Any]] = []
    try:
        await inst.start(tolerate_errors=True)
        for name, dev in inst.devices.items():
            row: dict[str, Any] = {
                "name": name,
                "driver": dev.spec.driver,
                "capabilities": list(dev.capabilities),
                "endpoint": dev.spec.endpoint,
                "address": dev.spec.address,
                "simulated": inst.simulated,
                "identity": dev.info.to_dict() if dev.info else None,
                "error": inst.connect_errors.get(name),
                "in_use": name in inst.busy,
            }
            if name not in inst.connect_errors:
                try:
                    row["status"] = (await dev.status()).to_dict()
                except DeviceError as exc:
                    row["error"] = str(exc)
            rows.append(row)
    finally:
        await inst.close()
    return rows


@app.command()
def devices(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    json_out: JsonOpt = False,
    time_scale: TimeScaleOpt = None,
) -> None:
    """Connect to each configured device; print identity (model, serial, firmware) and status.

    Takes no data-dir lock (it records nothing), but opens serial lines exclusively like a
    run: a device another process is using shows "in use by pid ..." and the exit is 2.

    On a simulated bench (simulate = true) the simulators start in-process on
    pseudo-terminals and the drivers talk to them over real bytes.
    """
    import asyncio  # not at the top: ~25 ms of `labctl --help` (bench/startup.py)
    cfg = load_bench_config(config, as_json=json_out)
    try:
        rows = asyncio.run(_survey(cfg, time_scale))
    except ConfigError as exc:
        fail(str(exc), as_json=json_out)
    if json_out:
        print(json.dumps({"bench": cfg.bench.id, "config": str(config), "devices": rows}, indent=2))
    else:
        title = f"bench {cfg.bench.id} ({'simulated' if cfg.bench.simulate else 'hardware'})"
        table = display.table(title, "device", "state", "identity", "readings",
                              ids=("device",))
        lines = []
        for r in rows:
            ident = r["identity"] or {}
            status = r.get("status") or {}
            readings = "\n".join(display.reading(k, v)
                                 for k, v in status.get("readings", {}).items())
            state = (r["error"] and f"ERROR: {r['error']}") or status.get("state", "")
            who = "\n".join(x for x in (
                r["driver"], str(ident.get("model") or ""),
                f"serial {ident['serial']}" if ident.get("serial") else "",
                f"firmware {ident['firmware']}" if ident.get("firmware") else "") if x)
            lines.append((r["name"], state, who, readings))
        display.fit_ids(table, lines)
        display.console().print(table)
    if any(r["in_use"] for r in rows):  # another process has the bench: exit 2, as run does
        raise SystemExit(EXIT_INVALID)
    if any(r["error"] for r in rows):
        raise SystemExit(EXIT_FAILED)

"""`labctl serve`: the MQTT agent serving one bench to AI clients through a broker."""

from __future__ import annotations

import gc
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from labctl.bench_lock import BenchInUse
from labctl.cli.common import (
    DEFAULT_CONFIG_PATH,
    EXIT_INVALID,
    ConcurrencyOpt,
    ConfigOpt,
    DataDirOpt,
    TimeScaleOpt,
    fail,
    load_bench_config,
)
from labctl.cli.root import app

if TYPE_CHECKING:
    from labctl.config import BenchConfig
    from labctl.mqtt.connection import BrokerSettings

log = logging.getLogger("labctl.serve")


@app.command()
def serve(
    broker: Annotated[str, typer.Option("--broker", help="mqtt://HOST:PORT, or mqtts:// for TLS.")],
    bench_id: Annotated[str | None, typer.Option(
        "--bench-id", help="Topic prefix labctl/<ID>/ (default: the config's bench.id).")] = None,
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    data_dir: DataDirOpt = Path("runs"),
    time_scale: TimeScaleOpt = None,
    username: Annotated[str | None, typer.Option("--username", help="Broker username "
                                                 "(with the shipped ACL: the bench id).")] = None,
    password_file: Annotated[Path | None, typer.Option(
        "--password-file", help="File whose first line is the broker password.")] = None,
    tls_ca: Annotated[Path | None, typer.Option("--tls-ca", help="CA certificate (PEM).")] = None,
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", help="Client certificate (PEM), when the broker asks for one.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="Its private key.")] = None,
    client_id: Annotated[str | None, typer.Option(
        "--client-id", help="MQTT client id (default labctl-agent-<bench id>); keep it stable "
        "so the broker keeps the session's queued commands across restarts; a broker "
        "with use_username_as_clientid, as shipped, uses the username instead.")] = None,
    operator: Annotated[list[str] | None, typer.Option(
        "--operator", help="Broker username with the operator role: may pause, resume, "
        "abort and cancel any run (repeatable). Every other sender has the ai role: its "
        "own runs only; e-stop is open to all.")] = None,
    concurrency: ConcurrencyOpt = None,
) -> None:
    """Serve the bench over MQTT until SIGINT/SIGTERM: commands in on
    labctl/<ID>/cmd/<username>, replies under labctl/<ID>/reply/<username>/, retained
    status, events, retained results per run, online/offline. Exits 2 when another agent
    already controls the bench through this broker."""
    import asyncio  # not at the top: ~25 ms of `labctl --help` (bench/startup.py)

    from labctl.mqtt.connection import BrokerSettings, read_password_file
    from labctl.mqtt.topics import valid_bench_id

    cfg = load_bench_config(config)
    if concurrency is not None:
        cfg.bench.concurrency = concurrency
    bid = bench_id or cfg.bench.id
    if not valid_bench_id(bid):
        fail(f"--bench-id {bid!r}: letters, digits, '_', '.', '-' only (one topic level)")
    try:
        password = read_password_file(password_file) if password_file else None
        settings = BrokerSettings.from_url(
            broker, username=username, password=password,
            tls_ca=str(tls_ca) if tls_ca else None, tls_cert=str(tls_cert) if tls_cert else None,
            tls_key=str(tls_key) if tls_key else None)
    except (OSError, ValueError) as exc:
        fail(str(exc), EXIT_INVALID)
    from labctl.mqtt.agent import ControllerConflict

    try:
        asyncio.run(_serve(cfg, settings, bid, data_dir, time_scale, client_id,
                           list(operator or [])))
    except BenchInUse as exc:  # another process has this data dir or a device's line
        fail(str(exc), EXIT_INVALID)
    except ControllerConflict as exc:
        fail(str(exc), EXIT_INVALID)  # exit 2: another agent controls the bench


async def _serve(cfg: BenchConfig, settings: BrokerSettings, bench_id: str, data_dir: Path,
                 time_scale: float | None, client_id: str | None,
                 operators: list[str]) -> None:
    import asyncio  # not at the top: ~25 ms of `labctl --help` (bench/startup.py)

    from labctl.mqtt.agent import Agent
    from labctl.mqtt.bench_port import open_bench_port

    async with open_bench_port(cfg, data_dir=data_dir, time_scale=time_scale,
                               bench_id=bench_id) as port:
        agent = Agent(port, settings, bench_id=bench_id, data_dir=data_dir,
                      client_id=client_id, operators=operators)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop)
        # What start-up made (modules, pint's registry, pydantic's schemas, the bench) lives
        # as long as the process: kept out of the collector's full passes, which otherwise
        # stopped the event loop for 50-75 ms every ~150 runs (docs/performance.md)
        gc.collect()
        gc.freeze()
        print(f"labctl serve: bench {bench_id} on {settings.url()}"
              f" (topics labctl/{bench_id}/...)", flush=True)
        await agent.run()

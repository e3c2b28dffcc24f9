"""`labctl tui`: the operator's terminal, on a local bench, a remote one, or a picker of the
benches on a broker."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from labctl.bench_lock import BenchInUse, BenchLock
from labctl.cli.common import (
    DEFAULT_CONFIG_PATH,
    EXIT_INVALID,
    ConfigOpt,
    DataDirOpt,
    TimeScaleOpt,
    fail,
    load_bench_config,
)
from labctl.cli.root import app


def _log_to_file(path: Path) -> None:
    """Log lines written to the terminal would tear the screen: they go to a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            root.removeHandler(h)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


@app.command()
def tui(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    data_dir: DataDirOpt = Path("runs"),
    time_scale: TimeScaleOpt = None,
    broker: Annotated[str | None, typer.Option(
        "--broker", help="Operate a bench through its MQTT agent (mqtt://HOST:PORT); "
        "without --bench-id, pick one of the benches on the broker.")] = None,
    bench_id: Annotated[str | None, typer.Option(
        "--bench-id", help="The remote bench (topic prefix labctl/<ID>/).")] = None,
    recipes: Annotated[Path | None, typer.Option(
        "--recipes", help="Recipe folder offered by `s` (default: the bench config's "
        "recipes_dir locally, ./recipes remotely).")] = None,
    operator: Annotated[str | None, typer.Option(
        "--operator", help="Who operates (recorded as the instigator; default: $USER).")] = None,
    username: Annotated[str | None, typer.Option("--username", help="Broker username.")] = None,
    password_file: Annotated[Path | None, typer.Option(
        "--password-file", help="File whose first line is the broker password.")] = None,
    tls_ca: Annotated[Path | None, typer.Option("--tls-ca", help="CA certificate (PEM).")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="Client cert.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="Its private key.")] = None,
) -> None:
    """Operator terminal: devices, run progress, live plot and events; s start, p pause,
    r resume, a abort, e e-stop, l run record, q quit."""
    from labctl.tui import BenchDirectory, LabctlApp, LocalBackend, RemoteBackend

    _log_to_file(data_dir / "labctl-tui.log")
    if broker is None:
        if bench_id is not None:
            fail("--bench-id needs --broker (a local bench is chosen with --config)")
        cfg = load_bench_config(config)
        try:  # refuse before the screen opens; the bench takes the lock for good on start
            BenchLock(data_dir).acquire().release()
        except BenchInUse as exc:
            fail(str(exc), EXIT_INVALID)
        backend = LocalBackend(cfg, data_dir=data_dir, time_scale=time_scale,
                               recipes_dir=recipes, operator=operator)
        LabctlApp(backend).run()
        return

    from labctl.mqtt.connection import read_password_file
    from labctl.mqtt.topics import valid_bench_id

    try:
        password = read_password_file(password_file) if password_file else None
    except OSError as exc:
        fail(str(exc))
    creds = {"username": username, "password": password,
             "tls_ca": str(tls_ca) if tls_ca else None,
             "tls_cert": str(tls_cert) if tls_cert else None,
             "tls_key": str(tls_key) if tls_key else None}
    folder = recipes or Path("recipes")

    def remote(bid: str) -> RemoteBackend:
        return RemoteBackend(broker, bid, recipes_dir=folder, **creds)  # type: ignore[arg-type]

    try:
        if bench_id is not None:
            if not valid_bench_id(bench_id):
                fail(f"--bench-id {bench_id!r}: letters, digits, '_', '.', '-' only")
            LabctlApp(remote(bench_id)).run()
        else:
            LabctlApp(directory=BenchDirectory(broker, **creds), make_backend=remote).run()
    except ValueError as exc:  # a malformed broker URL
        fail(str(exc))

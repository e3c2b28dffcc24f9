"""`labctl finales serve|tenant`: the bench as a FINALES2 tenant (labctl.finales)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from labctl.bench_lock import BenchInUse
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
from labctl.config import BenchConfig
from labctl.errors import ConfigError

if TYPE_CHECKING:
    from labctl.finales.capability import Capability

log = logging.getLogger("labctl.finales")

finales_app = typer.Typer(
    help="Take part in BIG-MAP's FINALES2: answer its requests with this bench's recipes.",
    no_args_is_help=True)
app.add_typer(finales_app, name="finales")

RecipeOpt = Annotated[list[Path] | None, typer.Option(
    "--recipe", help="A recipe with a 'finales' block (repeatable; default: every such "
    "recipe in the config's recipes_dir).")]


def _caps(cfg: BenchConfig, recipes: list[Path] | None,
          as_json: bool = False) -> list[Capability]:
    from labctl.finales.capability import load_capabilities

    try:
        caps = load_capabilities(cfg, recipes)
    except ConfigError as exc:
        fail(str(exc), EXIT_INVALID, as_json=as_json)
    if not caps:
        fail("no recipe declares a 'finales' block: this bench answers nothing on FINALES2",
             EXIT_INVALID, as_json=as_json)
    return caps


@finales_app.command("tenant")
def finales_tenant(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    recipe: RecipeOpt = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Tenant name (default: the bench id).")] = None,
    contact: Annotated[str | None, typer.Option(
        "--contact", help="contact_person of the tenant.")] = None,
) -> None:
    """Print the tenant description FINALES2's admin registers with `finales db add tenant
    --input-filepath FILE`: one limitations entry per recipe with a 'finales' block, the
    fraction and temperature ranges derived from its parameter bounds and the bench's
    materials. FINALES2 answers with the tenant uuid `finales serve` needs."""
    from labctl.finales.capability import tenant_description

    cfg = load_bench_config(config)
    caps = _caps(cfg, recipe)
    print(json.dumps(tenant_description(cfg, caps, name=name, contact=contact), indent=2))


@finales_app.command("serve")
def finales_serve(
    server: Annotated[str, typer.Option("--server", help="FINALES2 base URL, "
                                        "http://HOST:PORT.")],
    username: Annotated[str, typer.Option("--username", help="FINALES2 user to log in as.")],
    password_file: Annotated[Path, typer.Option(
        "--password-file", help="File whose first line is the password.")],
    tenant_uuid: Annotated[str, typer.Option(
        "--tenant-uuid", help="The uuid FINALES2 gave this tenant (`finales db add tenant`).")],
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    data_dir: DataDirOpt = Path("runs"),
    time_scale: TimeScaleOpt = None,
    recipe: RecipeOpt = None,
    poll: Annotated[float, typer.Option("--poll", min=0.05,
                                        help="Seconds between looks at pending requests.")] = 2.0,
    claim_grace: Annotated[float, typer.Option(
        "--claim-grace", min=0.0, help="Seconds each tenant ranked before this one is given to "
        "reserve a request first (see README, Joining FINALES2).")] = 10.0,
    max_active: Annotated[int, typer.Option(
        "--max-active", min=1, help="Requests reserved and not yet answered at once.")] = 1,
) -> None:
    """Serve FINALES2 until SIGINT/SIGTERM: reserve the pending requests this bench's
    recipes answer, run them, post the results (failed ones, with the reason, for what the
    bench cannot make). Journals under DATA_DIR/finales/ so a restart neither loses nor
    doubles an answer."""
    from labctl.mqtt.connection import read_password_file

    if not server.startswith(("http://", "https://")):
        fail(f"--server {server!r}: expected http://HOST:PORT")
    try:
        uuid.UUID(tenant_uuid)
    except ValueError:
        fail(f"--tenant-uuid {tenant_uuid!r}: not a uuid")
    try:
        password = read_password_file(password_file)
    except OSError as exc:
        fail(f"--password-file: {exc}")
    cfg = load_bench_config(config)
    caps = _caps(cfg, recipe)
    try:
        asyncio.run(_serve(cfg, caps, server, username, password, tenant_uuid, data_dir,
                           time_scale, poll, claim_grace, max_active))
    except BenchInUse as exc:
        fail(str(exc), EXIT_INVALID)


async def _serve(cfg: BenchConfig, caps: list[Capability], server: str, username: str,
                 password: str, tenant_uuid: str, data_dir: Path,
                 time_scale: float | None, poll: float, claim_grace: float,
                 max_active: int) -> None:
    from labctl.bench import Bench
    from labctl.finales.client import FinalesClient
    from labctl.finales.tenant import Tenant

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Bench(cfg, data_dir=data_dir, time_scale=time_scale) as bench, \
            FinalesClient(server, username, password) as client:
        tenant = Tenant(bench, client, caps, tenant_uuid=tenant_uuid,
                        poll_s=poll, claim_grace_s=claim_grace, max_active=max_active)
        what = ", ".join(f"{c.finales.quantity}/{c.finales.method}" for c in tenant.caps.values())
        print(f"labctl finales: bench {bench.bench_id} answers {what} on {server} as tenant "
              f"{tenant_uuid}", flush=True)
        await tenant.serve(stop)

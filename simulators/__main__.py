"""`python -m simulators KIND [--endpoint pty|tcp://127.0.0.1:PORT] [--address N]
[--time-scale X] [--option KEY=VALUE ...]`: serve one simulated instrument.

Prints one JSON line {"kind", "endpoint"} when ready (pty: the slave path; TCP: the port
actually bound) and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from labctl.clock import make_clock
from simulators.registry import kinds, simulator_class
from simulators.serving import serve
from simulators.world import World


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option expects KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m simulators",
        description="Serve a simulated instrument on a pseudo-terminal or TCP.",
    )
    p.add_argument("kind", help=f"instrument kind: {', '.join(sorted(kinds()))}")
    p.add_argument("--endpoint", default="pty",
                   help="pty (default) or tcp://HOST:PORT (port 0: any)")
    p.add_argument("--address", default=None, help="bus address / unit id of the instrument")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="simulated seconds per wall second")
    p.add_argument("--option", action="append", type=_option, default=[],
                   help="simulator option KEY=VALUE (VALUE parsed as JSON when it can be)")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    try:
        cls = simulator_class(args.kind)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    address: object = args.address
    if isinstance(address, str) and address.isdigit():
        address = int(address)
    options = dict(args.option)
    world = World.from_spec(options.pop("world", {}) or {})
    sim = cls(clock=make_clock(args.time_scale), address=address, world=world, options=options)
    served = await serve([sim], args.endpoint)
    endpoint = served.endpoint
    if endpoint.startswith("socket://"):
        endpoint = "tcp://" + endpoint[len("socket://") :]
    print(json.dumps({"kind": args.kind, "endpoint": endpoint}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await served.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())

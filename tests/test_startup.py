"""What `labctl --help` loads: the command line's help must not reach the unit layer (pint,
numpy), pydantic, pyserial or asyncio; those cost most of its start-up (bench/startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from labctl.cli.common import DEFAULT_CONFIG_PATH
from labctl.config import DEFAULT_CONFIG

ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("pint", "numpy", "scipy", "pandas", "pydantic", "serial", "asyncio", "labctl.config",
         "labctl.units", "labctl.instruments")

PROBE = """
import json, sys
sys.argv = {argv!r}
from labctl.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def _loaded_after(argv: list[str]) -> tuple[set[str], str]:
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    modules = set(json.loads(done.stderr.strip().splitlines()[-1]))
    return modules, done.stdout


def test_help_does_not_import_heavy_modules() -> None:
    modules, out = _loaded_after(["labctl", "--help"])
    assert "validate" in out and "serve" in out  # every sub-command is still listed
    loaded = sorted(m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY)
    assert loaded == []


def test_subcommand_help_does_not_import_heavy_modules() -> None:
    """Typer itself imports pydantic to coerce a sub-command's parameters; the rest stays out."""
    modules, out = _loaded_after(["labctl", "run", "--help"])
    assert "--time-scale" in out
    heavy = set(HEAVY) - {"pydantic"}
    loaded = sorted(m for m in modules if m.split(".")[0] in heavy or m in heavy)
    assert loaded == []


def test_public_api_still_reachable_from_the_package() -> None:
    """The package's re-exports are lazy now; every name in __all__ still resolves."""
    import labctl

    for name in labctl.__all__:
        assert getattr(labctl, name) is not None
    assert labctl.BenchConfig.__module__ == "labctl.config"


def test_cli_default_config_is_the_configs_default() -> None:
    assert DEFAULT_CONFIG_PATH == DEFAULT_CONFIG

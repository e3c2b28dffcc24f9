"""Bench configuration: the default bench loads; bad files name file, key and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from labctl.config import load_config, parse_config
from labctl.errors import ConfigError


def test_default_sim_bench_loads() -> None:
    cfg = load_config("config/sim.toml")
    assert cfg.bench.simulate is True
    assert cfg.bench.time_scale > 1
    spec = cfg.world_spec()
    assert spec["vessels"]["res_ec"]["contents"]["EC"] == "200.0 mL"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[devices.p]\ndriver = "no-such-driver"\n', "devices.p.driver", "unknown driver"),
        ('[bench]\nsimulate = false\n[devices.p]\ndriver = "vici-valve"\n',
         "devices.p.endpoint", "endpoint is required"),
        ('[bench]\ntime_scale = -1\n', "bench.time_scale", "greater than 0"),
        ('[bench]\nbogus = 1\n', "bench.bogus", "Extra inputs"),
        ('[vessels.v]\ncapacity = "ten"\n', "vessels.v.capacity", "cannot parse"),
        ('[vessels.v]\ncontents = { X = "1 mL" }\n', "vessels.v.contents.X", "unknown material"),
        ('[devices.p]\ndriver = "vici-valve"\nlimits = { max_flow = "fast" }\n',
         "devices.p.limits", "cannot parse"),
        ('[devices.p]\ndriver = "vici-valve"\nparams = { port_map = { "1" = "nowhere" } }\n',
         "devices.p.params.port_map.1", "unknown vessel"),
    ],
)
def test_bad_config_names_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = tmp_path / "bench.toml"
    path.write_text('[bench]\nsimulate = true\n' + text if "[bench]" not in text else text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and key in message and reason in message


def test_invalid_toml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[bench\nid = 1\n")
    with pytest.raises(ConfigError, match=r"broken.toml: invalid TOML: .*line 1"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_parse_config_accepts_minimal_bench() -> None:
    cfg = parse_config({"bench": {"id": "b", "simulate": True}})
    assert cfg.devices == {}


def test_cli_exit_code_2_on_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[devices.p]\ndriver = "nope"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "labctl", "devices", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "devices.p.driver" in proc.stderr and "unknown driver" in proc.stderr

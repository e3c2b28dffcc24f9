"""Bench configuration: the default bench loads; bad files name file, key and reason."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labctl.config import load_config, parse_config
from labctl.errors import ConfigError
from labctl.registry import driver_class


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


# -- values checked once at load, every problem at once (issue 12) ------------------------------

ROOT = Path(__file__).resolve().parent.parent
SIM_TOML = ROOT / "config" / "sim.toml"


def sim_data() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads(SIM_TOML.read_text())
    return data


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


BAD_VALUES = [
    ("devices.pump_dmc.address", 1, "devices.pump_dmc.address",
     "address 1 is already used by devices.pump_ec on the same bus /dev/ttyUSB0"),
    ("devices.pump_ec.params.syringe_volume", "0 mL", "devices.pump_ec.params.syringe_volume",
     "syringe volume must be greater than 0"),
    ("vessels.res_ec.contents.EC", "2000 mL", "vessels.res_ec.contents",
     "2000 mL of liquid does not fit in the capacity 250 mL"),
    ("devices.pump_ec.limits.max_flow", "-25 mL/min", "devices.pump_ec.limits.max_flow",
     "max_flow must be greater than 0"),
    ("devices.pump_ec.limits.max_flow", "25 mL", "devices.pump_ec.limits.max_flow",
     "wrong dimension"),
    ("devices.pump_ec.limits.max_flow", 25, "devices.pump_ec.limits.max_flow", "no unit"),
    ("devices.pump_teos.params.syringe_diameter", "-14.5 mm",
     "devices.pump_teos.params.syringe_diameter", "greater than 0"),
    ("devices.rinse_pump.limits.max_flow", "0 mL/min", "devices.rinse_pump.limits.max_flow",
     "greater than 0"),
    ("devices.rinse_pump.params.tubing_ul_per_rev", 0,
     "devices.rinse_pump.params.tubing_ul_per_rev", "greater than 0"),
    ("devices.hotplate.limits.max_speed", "-5 rpm", "devices.hotplate.limits.max_speed",
     "greater than 0"),
    ("devices.hotplate.limits.min_temperature", "90 degC",
     "devices.hotplate.limits.min_temperature", "must be below max_temperature"),
    ("devices.dispenser.limits.max_mass", "0 g", "devices.dispenser.limits.max_mass",
     "greater than 0"),
    ("devices.dispenser.params.head_material", "Unobtainium",
     "devices.dispenser.params.head_material", "unknown material"),
    ("devices.potentiostat.params.cell_constant", "0 /cm",
     "devices.potentiostat.params.cell_constant", "greater than 0"),
    ("devices.potentiostat.limits", {"min_potential": "5 V", "max_potential": "4 V"},
     "devices.potentiostat.limits.min_potential", "below max_potential"),
    ("vessels.cell_vial.capacity", "0 mL", "vessels.cell_vial.capacity", "greater than 0"),
    ("vessels.cell_vial.capacity", "-20 mL", "vessels.cell_vial.capacity", "greater than 0"),
    ("vessels.coat_vial.empty_mass", "-1 g", "vessels.coat_vial.empty_mass", "at least 0"),
    ("vessels.res_dmc.contents.DMC", "-5 mL", "vessels.res_dmc.contents.DMC", "negative"),
    ("materials.DMC.density", "0 g/mL", "materials.DMC.density", "greater than 0"),
    ("materials.EC.molar_mass", "-88 g/mol", "materials.EC.molar_mass", "greater than 0"),
    ("bench.time_scale", 0, "bench.time_scale", "greater than 0"),
    ("bench.time_scale", float("inf"), "bench.time_scale", "finite"),
    ("devices.pump_ec.params.ports", 0, "devices.pump_ec.params.ports", "at least 1"),
    ("devices.pump_ec.params.port_map", {"7": "res_ec"}, "devices.pump_ec.params.port_map.7",
     "port 7 is not one of 1..6"),
    ("devices.sel_valve.params.port_map", {"17": "waste"},
     "devices.sel_valve.params.port_map.17", "port 17 is not one of 1..16"),
    ("devices.block_stirrer.params.vessels", ["a1", "a9"],
     "devices.block_stirrer.params.vessels[1]", "unknown vessel 'a9'"),
    ("devices.dispenser.params.sampler", {"1": "a9"}, "devices.dispenser.params.sampler.1",
     "unknown vessel 'a9'"),
    ("devices.potentiostat.params.channels", {"one": "a1"},
     "devices.potentiostat.params.channels.one", "is not a channel number"),
    ("devices.pump_ec.params.port_map", {"1": "@nowhere"},
     "devices.pump_ec.params.port_map.1", "names no configured device"),
    ("devices.pump_teos.params.destination", "no_vial", "devices.pump_teos.params.destination",
     "unknown vessel"),
    ("devices.hotplate.params.vessel", "no_vial", "devices.hotplate.params.vessel",
     "unknown vessel"),
    ("devices.pump_ec.address", 16, "devices.pump_ec.address", "1..15"),
    ("devices.block_heater.address", 0, "devices.block_heater.address", "1-247"),
    ("devices.sel_valve.address", "AB", "devices.sel_valve.address", "0-9 or A-Z"),
    ("devices.pump_teos.address", 100, "devices.pump_teos.address", "0-99"),
    ("devices.pump_ec.params.resolution", 3, "devices.pump_ec.params.resolution", "0, 1 or 2"),
    ("devices.pump_ec.timeout", "0 s", "devices.pump_ec.timeout", "greater than 0"),
    ("devices.hotplate.params.watchdog", "-600 s", "devices.hotplate.params.watchdog",
     "at least 0"),
    ("devices.hotplate.params.watchdog", -600, "devices.hotplate.params.watchdog",
     "at least 0"),
    ("devices.pump_ec.serial", {"baudrate": -9600}, "devices.pump_ec.serial.baudrate",
     "greater than 0"),
    ("devices.pump_ec.serial", {"stopbits": 3}, "devices.pump_ec.serial.stopbits", "1.5"),
]


@pytest.mark.parametrize(("dotted", "value", "key", "reason"), BAD_VALUES,
                         ids=[f"{b[0]}={b[1]}" for b in BAD_VALUES])
def test_bad_value_is_refused_at_load_naming_file_and_key(
        tmp_path: Path, dotted: str, value: Any, key: str, reason: str) -> None:
    data = sim_data()
    _set(data, dotted, value)
    path = write_toml(tmp_path / "bench.toml", data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (key, ) in [(k,) for k, _ in err.value.problems], err.value.problems
    assert f"{path}: {key}: " in str(err.value) and reason in str(err.value), str(err.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = sim_data()
    _set(data, "devices.pump_dmc.address", 1)
    _set(data, "devices.pump_ec.params.syringe_volume", "0 mL")
    _set(data, "vessels.res_ec.contents.EC", "2000 mL")
    _set(data, "devices.pump_ec.limits.max_flow", "-25 mL/min")
    path = write_toml(tmp_path / "bench.toml", data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    keys = [k for k, _ in err.value.problems]
    assert keys == ["devices.pump_ec.params.syringe_volume", "devices.pump_ec.limits.max_flow",
                    "devices.pump_dmc.address", "vessels.res_ec.contents"], keys
    assert str(err.value).startswith(f"{path}: 4 problems:")


def test_cli_validate_refuses_the_config_before_anything_else(tmp_path: Path) -> None:
    data = sim_data()
    _set(data, "devices.pump_dmc.address", 1)
    _set(data, "devices.pump_ec.params.syringe_volume", "0 mL")
    path = write_toml(tmp_path / "bench.toml", data)
    proc = subprocess.run(
        [sys.executable, "-m", "labctl", "validate", str(ROOT / "recipes" / "rinse.json"),
         "--config", str(path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (f"{path}: devices.pump_dmc.address: address 1 is already used by devices.pump_ec "
            "on the same bus /dev/ttyUSB0") in proc.stderr, proc.stderr
    assert f"{path}: devices.pump_ec.params.syringe_volume:" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_validate_without_a_recipe_checks_the_config_alone(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "labctl", "validate", "--config", str(SIM_TOML)],
                        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert ok.returncode == 0 and "valid bench config" in ok.stdout, ok.stdout + ok.stderr
    data = sim_data()
    _set(data, "devices.pump_ec.limits.max_flow", "-25 mL/min")
    _set(data, "vessels.res_ec.contents.EC", "2000 mL")
    path = write_toml(tmp_path / "bench.toml", data)
    bad = subprocess.run([sys.executable, "-m", "labctl", "validate", "--config", str(path),
                          "--json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2, bad.stdout + bad.stderr
    doc = json.loads(bad.stdout)
    assert doc["ok"] is False and doc["file"] == str(path)
    assert [p["key"] for p in doc["problems"]] == ["devices.pump_ec.limits.max_flow",
                                                   "vessels.res_ec.contents"]


def test_the_shipped_configs_stay_valid() -> None:
    for path in [SIM_TOML, *sorted((ROOT / "tests" / "configs").glob("*.toml"))]:
        load_config(path)


# -- fuzzing: mutated numbers of config/sim.toml load fine or are refused by key --------------

def _numeric_leaves(node: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every number, and every string starting with a number, in the data."""
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _numeric_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, bool):
        pass
    elif isinstance(node, (int, float)):
        out.append(prefix)
    elif isinstance(node, str) and re.match(r"^[+-]?\d", node.strip()):
        out.append(prefix)
    return out


LEAVES = _numeric_leaves(sim_data())
NUMBERS = st.one_of(
    st.integers(min_value=-10**6, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e-300, 1e300, -0.0]),
)


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node


def _mutate(old: Any, number: Any, as_number: bool) -> Any:
    if isinstance(old, str):
        unit = re.sub(r"^\s*[+-]?[\d.eE+-]*", "", old, count=1)
        return number if as_number else f"{number}{unit}"
    return number


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(LEAVES), NUMBERS, st.booleans()),
                min_size=1, max_size=4))
def test_fuzzed_numbers_load_fine_or_are_refused_by_file_and_key(
        mutations: list[tuple[str, Any, bool]]) -> None:
    data = sim_data()
    for dotted, number, as_number in mutations:
        _set(data, dotted, _mutate(_get(data, dotted), number, as_number))
    try:
        text = tomli_w.dumps(data)
    except (ValueError, TypeError):
        return  # not expressible in TOML: nothing a file could hold
    try:
        cfg = parse_config(tomllib.loads(text), "fuzz.toml")
    except ConfigError as exc:
        assert exc.file == "fuzz.toml" and exc.key, str(exc)
        assert str(exc).startswith(f"fuzz.toml: {exc.key}: ") or "problems:" in str(exc)
        return
    # accepted: every device can be built from it and the world laid out, no surprise later
    for name in cfg.enabled_devices():
        spec = cfg.device_spec(name)
        driver_class(spec.driver)(spec)
    world = cfg.world_spec()
    assert set(world["vessels"]) == set(cfg.vessels)


@pytest.mark.parametrize("scale", ["0", "-5", "inf", "nan"])
def test_cli_time_scale_must_be_a_finite_positive_number(scale: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "labctl", "devices", "--time-scale", scale],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--time-scale" in proc.stderr and "greater than 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bare_numbers_the_drivers_read_in_a_known_unit_are_accepted(tmp_path: Path) -> None:
    data = sim_data()
    _set(data, "devices.hotplate.params.watchdog", 600)  # seconds
    _set(data, "devices.balance.params.stable_timeout", 30)  # seconds
    _set(data, "devices.rinse_pump.params.tubing_ul_per_rev", 100)  # µL per revolution
    cfg = load_config(write_toml(tmp_path / "bench.toml", data))
    assert cfg.devices["rinse_pump"].params["tubing_ul_per_rev"] == 100

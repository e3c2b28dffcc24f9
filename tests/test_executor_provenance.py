"""The electrolyte conductivity recipe on the whole simulated bench (config/sim.toml): the
run's provenance — amounts requested and actual, order of addition, instruments, data
files, figures of merit, fidelity — checked against what the simulated world received."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from labctl.bench import Bench
from labctl.device import DeviceInfo
from tests.config_support import load_edited, long_watchdog

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(180)


async def test_conductivity_run_records_what_the_world_received(tmp_path: Path) -> None:
    cfg = load_edited(ROOT / "config" / "sim.toml", long_watchdog)
    bench = Bench(cfg, data_dir=tmp_path / "runs", time_scale=300)
    await bench.start()
    try:
        world = bench.instruments.simulation.world
        run_id = await bench.submit(ROOT / "recipes" / "electrolyte_conductivity.json",
                                    {"salt_molality": "1.2 mol/kg", "ec_fraction": "0.3"},
                                    instigator="ai:optimizer-1",
                                    request={"id": "req-7", "quantity": "conductivity"})
        result = await bench.wait(run_id)
        safe = {n: s.is_safe() for n, s in bench.instruments.simulation.simulators.items()}
    finally:
        await bench.close()
    assert result["status"] == "completed", result["errors"]
    assert all(safe.values()), safe
    folder = tmp_path / "runs" / run_id
    meta = json.loads((folder / "metadata.json").read_text())

    # additions: requested and actual, in order, as the world received them
    adds = meta["additions"]
    assert [a["material"] for a in adds][:3] == ["LiPF6", "EC", "DMC"]
    assert [a["order"] for a in adds] == list(range(1, len(adds) + 1))
    assert [a["time"] for a in adds] == sorted(a["time"] for a in adds)
    solid = [e for e in world.ledger if e["op"] == "add_solid" and e["to"] == "cell_vial"]
    assert solid and {e["material"] for e in solid} == {"LiPF6"}  # dosed in portions
    assert adds[0]["actual"] == pytest.approx(sum(e["grams"] for e in solid), abs=1e-4)
    assert adds[0]["unit"] == "g" and adds[0]["requested"] > 0
    into_vial = [e for e in world.ledger if e["op"] == "move_volume" and e["to"] == "cell_vial"]
    ec_l = sum(e["volume_l"] for e in into_vial if "EC" in e["grams"])
    dmc_l = sum(e["volume_l"] for e in into_vial if "DMC" in e["grams"])
    assert adds[1]["actual"] == pytest.approx(ec_l, rel=1e-6)
    assert adds[2]["actual"] == pytest.approx(dmc_l, rel=1e-6)
    assert ec_l / (ec_l + dmc_l) == pytest.approx(0.3, rel=1e-3)
    assert meta["mixing"] and meta["mixing"][0]["speed_rpm"] > 0

    # who asked, with which parameters
    assert meta["instigator"]["kind"] == "ai" and meta["instigator"]["request_id"] == "req-7"
    assert result["request_id"] == "req-7"
    assert meta["parameters"] == {"salt_molality": "1.2 mol/kg", "ec_fraction": "0.3"}

    # instruments: identity from the devices, configuration from the bench
    inst = meta["instruments"]
    assert set(inst) == set(cfg.enabled_devices())
    assert all(i["identity"] and i["identity"]["model"] for i in inst.values())
    # every field of DeviceInfo, as the instrument reported it (its to_dict is by hand)
    identity_fields = [f.name for f in dataclasses.fields(DeviceInfo)]
    assert all(list(i["identity"]) == identity_fields for i in inst.values())
    assert inst["potentiostat"]["identity"] == dataclasses.asdict(
        bench.instruments.devices["potentiostat"].info)
    assert inst["potentiostat"]["params"]["reference_electrode"] == "Li/Li+"
    assert inst["potentiostat"]["params"]["cell_constant"] == "1.0 /cm"

    # data files with hashes and BDF columns; figures of merit with method and IRI
    [eis] = [d for d in meta["data_files"] if d["path"].startswith("data/eis")]
    assert eis["sha256"] == hashlib.sha256((folder / eis["path"]).read_bytes()).hexdigest()
    names = [c["name"] for c in eis["columns"]]
    assert {"Test Time / s", "Frequency / Hz", "Real Impedance / ohm"} <= set(names)
    figs = {f["name"]: f for f in result["figures_of_merit"]}
    sigma = figs["ionic_conductivity"]
    assert sigma["unit"] == "S/m" and sigma["value"] > 0 and sigma["method"]
    assert sigma["iri"].endswith("electrochemistry_25dabdc2_68bf_4a38_8cbe_11be017358bc")
    assert meta["figures_of_merit"] == result["figures_of_merit"]

    # fidelity travels with data and result
    assert result["fidelity"]["level"] == meta["fidelity"]["level"] == "simulated"
    assert meta["fidelity"]["simulators"]["potentiostat"]["kind"] == "palmsens-emstat"
    assert meta["software"]["git_commit"]

    # the RO-Crate export describes the same run
    zpath = Bench(cfg, data_dir=tmp_path / "runs").store.export(run_id)
    with zipfile.ZipFile(zpath) as z:
        crate = json.loads(z.read("ro-crate-metadata.json"))
    action = next(e for e in crate["@graph"] if e["@type"] == "CreateAction")
    assert {"@id": "#instrument-potentiostat"} in action["instrument"]
    assert {"@id": eis["path"]} in action["result"]

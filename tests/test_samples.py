"""Samples (labctl.store.samples, labctl.bench.samples) through the real `labctl` CLI on a
simulated bench with a rack of two vials (tests/configs/sample_bench.toml): a run assigned
a free vial makes a sample of it; a later run names that sample by id, adds to it, and its
record names the sample and its chain of origin; a full rack, an unknown sample or a vial
of the wrong rack is refused before anything moves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "tests" / "configs" / "sample_bench.toml"
MAKE = ROOT / "tests" / "recipes" / "sample_make.json"
USE = ROOT / "tests" / "recipes" / "sample_use.json"
LABCTL = [sys.executable, "-m", "labctl"]
pytestmark = pytest.mark.timeout(180)


def labctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LABCTL, *args, "--config", str(CONFIG)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def run(recipe: Path, data: Path, *params: str) -> subprocess.CompletedProcess[str]:
    args = ["run", str(recipe), "--data-dir", str(data), "--json", "--time-scale", "1000"]
    for p in params:
        args += ["--param", p]
    return labctl(*args)


def result(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert out.returncode == 0, out.stdout + out.stderr
    doc: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return doc


def samples(data: Path, *args: str) -> Any:
    out = subprocess.run([*LABCTL, "samples", *args, "--data-dir", str(data), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_a_sample_made_by_one_run_is_used_by_id_in_the_next_and_its_chain_recorded(
        tmp_path: Path) -> None:
    data = tmp_path / "runs"
    first = result(run(MAKE, data, "dmc_volume=2 mL"))
    meta1 = json.loads((data / first["run_id"] / "metadata.json").read_text())
    [made] = meta1["samples"]["made"]
    assert made == "S-sample-bench-000001"
    assert first["samples"] == {"used": {}, "made": [made]}  # result.json names it too
    s = samples(data, "show", made)
    assert (s["vessel"], s["rack"], s["position"]) == ("t1", "tray", 1)  # the first free vial
    assert s["parent_run"] == first["run_id"] and s["status"] == "live"
    assert s["composition_g"] == {"DMC": pytest.approx(2 * 1.07)}  # 2 mL at 1.07 g/mL

    second = result(run(USE, data, f"sample={made}", "ec_volume=1 mL"))
    meta2 = json.loads((data / second["run_id"] / "metadata.json").read_text())
    used = meta2["samples"]["inputs"]["sample"]
    assert used["sample_id"] == made
    assert second["samples"] == {"used": {"sample": made}, "made": []}
    assert [c["parent_run"] for c in used["chain"]] == [first["run_id"]]
    assert meta2["samples"]["made"] == []  # it added to the sample, it made none
    assert meta2["parameters"]["sample"] == made  # the record keeps the id as submitted
    # the EC went where the sample is
    journal = [json.loads(x) for x in
               (data / second["run_id"] / "events.jsonl").read_text().splitlines()]
    [add] = [e for e in journal if e["event"] == "record" and e.get("kind") == "addition"]
    assert add["vessel"] == "t1"
    s = samples(data, "show", made)
    assert s["composition_g"] == {"DMC": pytest.approx(2.14), "EC": pytest.approx(1.32)}
    assert [(h["kind"], h["run_id"]) for h in s["history"]] == [
        ("created", first["run_id"]), ("added", second["run_id"])]
    assert [c["sample_id"] for c in s["chain"]] == [made]
    listed = samples(data, "list")
    assert [x["id"] for x in listed] == [made]
    text = subprocess.run([*LABCTL, "samples", "show", made, "--data-dir", str(data)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    assert "chain of origin" in text and first["run_id"] in text


async def test_an_electrolyte_made_in_one_run_is_measured_by_sample_id_in_the_next(
        tmp_path: Path) -> None:
    """config/sim.toml, one bench process (its simulated world lives on between runs, as a
    real vial does): formulate_electrolyte leaves its electrolyte in cell_vial, a sample of
    LiPF6, EC and DMC as dosed; a measuring run names it by id, validation sees the vial
    full (a PEIS needs liquid in it), its PEIS is a "measured" event of the sample and its
    record names the sample and its origin."""
    from labctl.bench import Bench
    from labctl.config import load_config

    data = tmp_path / "runs"
    b = Bench(load_config(ROOT / "config" / "sim.toml"), data_dir=data, time_scale=1000)
    await b.start()
    try:
        rid = await b.submit(ROOT / "recipes" / "formulate_electrolyte.json",
                             {"mixing_time": "1 min"})
        made = await b.wait(rid)
        assert made["status"] == "completed", made
        [sid] = made["samples"]["made"]
        s = b.samples.store.get(sid)
        assert s["vessel"] == "cell_vial"
        assert set(s["composition_g"]) == {"LiPF6", "EC", "DMC"}
        meta = json.loads((data / rid / "metadata.json").read_text())
        dosed = sum(a["actual"] for a in meta["additions"] if a["material"] == "LiPF6")
        assert s["composition_g"]["LiPF6"] == pytest.approx(dosed)  # as measured
        rid2 = await b.submit(ROOT / "tests" / "recipes" / "sample_measure.json",
                              {"sample": sid})
        measured = await b.wait(rid2)
        assert measured["status"] == "completed", measured
        assert measured["samples"] == {"used": {"sample": sid}, "made": []}
        [fig] = [f for f in measured["figures_of_merit"] if f["name"] == "ionic_conductivity"]
        assert fig["value"] > 0
        s = b.samples.store.get(sid)
        assert [(h["kind"], h["run_id"]) for h in s["history"]] == [
            ("created", rid), ("measured", rid2)]
        assert s["history"][1]["technique"] == "peis"
        meta = json.loads((data / rid2 / "metadata.json").read_text())
        assert meta["samples"]["inputs"]["sample"]["chain"][0]["parent_run"] == rid
    finally:
        await b.close()


def test_free_vials_are_assigned_in_rack_order_and_a_full_rack_is_refused(
        tmp_path: Path) -> None:
    data = tmp_path / "runs"
    result(run(MAKE, data))
    result(run(MAKE, data))
    assert sorted(s["vessel"] for s in samples(data, "list")) == ["t1", "t2"]
    n_runs = len([p for p in data.iterdir() if p.is_dir()])
    out = run(MAKE, data)
    assert out.returncode == 2, out.stdout + out.stderr
    msg = out.stdout + out.stderr
    assert "no free vial in rack 'tray'" in msg and "t1: S-sample-bench-000001" in msg, msg
    assert len([p for p in data.iterdir() if p.is_dir()]) == n_runs
    # naming a vial that holds a sample is refused too, naming the sample
    out = run(MAKE, data, "vial=t2")
    assert out.returncode == 2 and "vial t2 holds sample S-sample-bench-000002" in (
        out.stdout + out.stderr)


def test_bad_vessel_parameters_are_refused_naming_the_parameter(tmp_path: Path) -> None:
    data = tmp_path / "runs"
    out = run(USE, data, "sample=S-sample-bench-000042")
    assert out.returncode == 2
    assert "no sample 'S-sample-bench-000042' on this bench" in out.stdout + out.stderr
    out = labctl("validate", str(MAKE), "--param", "vial=vial", "--json")
    assert out.returncode == 2
    [err] = json.loads(out.stdout)["errors"]
    assert err["path"] == "parameters.vial" and "not 'tray'" in err["message"], err
    out = labctl("validate", str(MAKE), "--param", "vial=res_dmc", "--json")
    assert "is not a vial of this bench in rack 'tray' (vials: t1, t2)" in out.stdout
    assert not data.exists() or not [p for p in data.iterdir() if p.is_dir()]


async def test_a_run_that_would_overfill_a_vial_holding_a_sample_is_refused(
        tmp_path: Path) -> None:
    """Validation starts a vial holding a live sample from what the sample holds: adding
    more than its room is refused at submit, naming the vial, before anything moves."""
    from labctl.bench import Bench
    from labctl.config import load_config
    from labctl.recipe import RecipeError

    cfg = load_config(CONFIG)
    cfg.vessels["t1"].capacity = "6 mL"
    b = Bench(cfg, data_dir=tmp_path / "runs", time_scale=1000)
    await b.start()
    try:
        rid = await b.submit(MAKE, {"vial": "t1", "dmc_volume": "5 mL"})
        assert (await b.wait(rid))["status"] == "completed"
        [sid] = [s["id"] for s in b.samples.store.list_samples()]
        with pytest.raises(RecipeError) as err:
            await b.submit(USE, {"sample": sid, "ec_volume": "2 mL"})
        assert "t1 would overflow: 7 mL in a 6 mL vessel" in str(err.value), str(err.value)
        assert len(b.list_runs()) == 1  # nothing was created for the refused run
        rid = await b.submit(USE, {"sample": sid, "ec_volume": "1 mL"})  # this one fits
        assert (await b.wait(rid))["status"] == "completed"
    finally:
        await b.close()


def test_a_sample_outlives_the_process_that_made_it(tmp_path: Path) -> None:
    """config/sim.toml, two `labctl run` processes: the first makes an electrolyte in a block
    vial and exits; the second measures it by sample id through that vial's potentiostat
    channel and finds the same electrolyte (the simulated world is kept in the data dir, as
    the vial keeps its liquid on a real bench)."""
    data = tmp_path / "runs"
    sim = ROOT / "config" / "sim.toml"

    def run_sim(recipe: Path, *params: str) -> dict[str, Any]:
        args = [*LABCTL, "run", str(recipe), "--data-dir", str(data), "--json",
                "--time-scale", "1000", "--config", str(sim)]
        for p in params:
            args += ["--param", p]
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=150)
        return result(out)

    def conductivity(res: dict[str, Any]) -> float:
        return float(next(f["value"] for f in res["figures_of_merit"]
                          if f["name"] == "ionic_conductivity_mS_cm"))

    # the operator counted 3 mL of DMC: the simulated reservoir follows the inventory
    out = subprocess.run([*LABCTL, "inventory", "set", "res_dmc", "DMC", "3 mL", "--data-dir",
                          str(data), "--config", str(sim)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    made_run = run_sim(ROOT / "recipes" / "conductivity_screen.json",
                       "salt_molality=1.4 mol/kg", "ec_fraction=0.7",
                       "temperature=22 degC")  # the room's: the second run does not heat
    [made] = made_run["samples"]["made"]
    world = json.loads((data / "sim_world.json").read_text())["state"]["world"]
    # 4 mL of solvent at EC fraction 0.7: 1.2 mL of DMC (1.07 g/mL) left the 3 mL counted
    assert world["vessels"]["res_dmc"]["contents_g"]["DMC"] == pytest.approx(1.8 * 1.07,
                                                                             rel=0.01)
    measured = run_sim(ROOT / "tests" / "recipes" / "sample_measure.json", f"sample={made}")
    assert measured["status"] == "completed"
    assert conductivity(measured) == pytest.approx(conductivity(made_run), rel=0.05)
    s = samples(data, "show", made)
    assert [(h["kind"], h["run_id"]) for h in s["history"]] == [
        ("created", made_run["run_id"]), ("measured", made_run["run_id"]),
        ("measured", measured["run_id"])]

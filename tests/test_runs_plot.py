"""`labctl runs plot` and `labctl runs export` on records of real recipes run on the simulated
bench. Figures: the files exist, are valid PNG and SVG, and every data row of the record is
a point drawn in the figure (counted in the SVG, where each data series carries its id).
Exports: ro-crate-py reads the crate back; every Bluesky document passes event-model's
schema."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from labctl.bdf import FREQUENCY, read_bdf
from labctl.store import read_journal

ROOT = Path(__file__).resolve().parent.parent
LABCTL = [sys.executable, "-m", "labctl"]
SVG = "{http://www.w3.org/2000/svg}"
pytestmark = pytest.mark.timeout(300)
RUNS: dict[str, list[str]] = {
    "electrolyte_conductivity": ["--time-scale", "1000"],
    "stability_window": ["--time-scale", "1000"],
    "galvanostatic_cycling": ["--time-scale", "2000", "--param", "c_rate=2 /h",
                              "--param", "n_cycles=2"],
    "coating_synthesis": ["--time-scale", "1000"],
}


def labctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LABCTL, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each recipe run once on config/sim.toml, then plotted: {recipe: (folder, plot json)}."""
    data = tmp_path_factory.mktemp("runs")
    out: dict[str, Any] = {"data_dir": data}
    for recipe, extra in RUNS.items():
        run = labctl("run", f"recipes/{recipe}.json", "--data-dir", str(data), "--json", *extra)
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["status"] == "completed", (recipe, result.get("errors"), run.stderr)
        plot = labctl("runs", "plot", result["run_id"], "--data-dir", str(data), "--json")
        assert plot.returncode == 0, plot.stderr
        out[recipe] = (Path(result["record"]), json.loads(plot.stdout), result)
    return out


def svg_points(svg: Path, gid: str) -> int:
    """Points of the data series `gid` as drawn in the SVG: one <use> per marker, else the
    vertices of its line."""
    root = ET.parse(svg).getroot()
    [group] = [g for g in root.iter(f"{SVG}g") if g.get("id") == gid]
    uses = list(group.iter(f"{SVG}use"))
    if uses:
        return len(uses)
    [path] = [p for p in group.iter(f"{SVG}path") if "clip-path" in p.attrib
              or p.get("style")]
    return sum(1 for token in (path.get("d") or "").split() if token in ("M", "L"))


def check_files(folder: Path, name: str) -> tuple[Path, Path]:
    png, svg = folder / f"{name}.png", folder / f"{name}.svg"
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
        img.verify()
    root = ET.parse(svg).getroot()
    assert root.tag == f"{SVG}svg"
    return png, svg


def listed(plot: dict[str, Any], name: str) -> dict[str, Any]:
    [entry] = [f for f in plot["figures"] if f["name"] == name]
    return entry


def test_impedance_figures_hold_every_point_and_the_fit(records: dict[str, Any]) -> None:
    folder, plot, result = records["electrolyte_conductivity"]
    figs = Path(plot["out"])
    assert figs == folder / "figures"  # the default: inside the run's record
    rows = len(read_bdf(folder / "data" / "eis.bdf.csv")[FREQUENCY])
    _, nyquist = check_files(figs, "eis_nyquist")
    _, bode = check_files(figs, "eis_bode")
    assert svg_points(nyquist, "eis-data") == rows
    assert svg_points(bode, "eis-modulus") == rows == svg_points(bode, "eis-phase")
    assert listed(plot, "eis_nyquist")["series"]["eis-data"] == rows
    # the fitted circuit is drawn, and says which it is
    assert svg_points(nyquist, "eis-fit") > 50
    fit = next(f for f in result["figures_of_merit"] if f["name"] == "bulk_resistance_fit")
    text = nyquist.read_text()
    assert fit["circuit"] in text and f"R0 = {fit['value']:.4g}" in text


def test_voltammograms_hold_every_point_and_the_window(records: dict[str, Any]) -> None:
    folder, plot, result = records["stability_window"]
    figs = Path(plot["out"])
    limits = {f["name"]: f["value"] for f in result["figures_of_merit"]}
    for step in ("anodic", "cathodic"):
        rows = len(read_bdf(folder / "data" / f"{step}.bdf.csv")["Current / A"])
        _, svg = check_files(figs, f"{step}_voltammogram")
        assert svg_points(svg, f"{step}-data") == rows
        text = svg.read_text()
        assert f"anodic limit {limits['anodic_limit']:.3f} V" in text
        assert f"cathodic limit {limits['cathodic_limit']:.3f} V" in text
    # the open-circuit rest before the sweeps: its potential against time, every point
    rows = len(read_bdf(folder / "data" / "rest.bdf.csv")["Test Time / s"])
    _, rest = check_files(figs, "rest_trace")
    assert svg_points(rest, "rest-potential") == rows


def test_cycling_figures_hold_every_point_and_each_cycle(records: dict[str, Any]) -> None:
    folder, plot, result = records["galvanostatic_cycling"]
    figs = Path(plot["out"])
    rows = len(read_bdf(folder / "data" / "cycling.bdf.csv")["Current / A"])
    _, trace = check_files(figs, "cycling_potential")
    assert svg_points(trace, "cycling-potential") == rows == svg_points(trace, "cycling-current")
    _, per_cycle = check_files(figs, "cycling_capacity")
    ce = next(f for f in result["figures_of_merit"]
              if f["name"] == "coulombic_efficiency_per_cycle")["value"]
    assert svg_points(per_cycle, "cycling-ce") == len(ce) == 2
    assert svg_points(per_cycle, "cycling-charge") == svg_points(per_cycle,
                                                                 "cycling-discharge") == 2


def test_mass_and_temperature_traces_where_recorded(records: dict[str, Any]) -> None:
    folder, plot, _ = records["coating_synthesis"]
    figs = Path(plot["out"])
    journal = list(read_journal(folder / "events.jsonl"))
    weighings = [e for e in journal if e.get("kind") == "weighing"]
    holds = [e for e in journal if e.get("kind") in ("heating", "mixing")
             and e.get("temperature_c") is not None]
    assert weighings and holds
    _, mass = check_files(figs, "mass")
    assert svg_points(mass, "mass") == len(weighings)
    _, temp = check_files(figs, "temperature")
    assert svg_points(temp, "temperature-holds") == 2 * len(holds)  # each hold a segment
    # a conductivity run weighs nothing: no mass figure is made up
    cond_plot = records["electrolyte_conductivity"][1]
    assert "mass" not in {f["name"] for f in cond_plot["figures"]}


def test_out_dir_and_unknown_run(records: dict[str, Any], tmp_path: Path) -> None:
    _, _, result = records["stability_window"]
    out = labctl("runs", "plot", result["run_id"], "--data-dir", str(records["data_dir"]),
                 "--out", str(tmp_path / "figs"))
    assert out.returncode == 0, out.stderr
    printed = out.stdout.split()
    assert str(tmp_path / "figs" / "anodic_voltammogram.svg") in printed
    assert all(Path(p).exists() for p in printed)
    manifest = json.loads((tmp_path / "figs" / "figures.json").read_text())
    assert {f["name"] for f in manifest} >= {"anodic_voltammogram", "cathodic_voltammogram"}
    bad = labctl("runs", "plot", "no-such-run", "--data-dir", str(records["data_dir"]))
    assert bad.returncode == 2 and "no-such-run" in bad.stderr


def test_startup_imports_none_of_the_heavy_libraries() -> None:
    """`import labctl` and `labctl --help` (every sub-command registered) must not pay for
    matplotlib, impedance.py, pandas, rocrate or event-model: they load in the commands."""
    code = ("import sys, contextlib, io\n"
            "import labctl\n"
            "from labctl.cli.app import app\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    app(['--help'])\n"
            "import labctl.analysis, labctl.bench, labctl.plots\n"
            "heavy = ('matplotlib', 'impedance', 'pandas', 'rocrate', 'event_model')\n"
            "print([m for m in heavy if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_export_is_a_crate_with_the_figures_and_only_the_used_instruments(
        records: dict[str, Any], tmp_path: Path) -> None:
    """`labctl runs export` of a real run: ro-crate-py reads the zip back; the crate lists
    the devices the stability-window recipe drove and none of the bench's others, and holds
    the voltammograms."""
    from rocrate.rocrate import ROCrate

    folder, _, result = records["stability_window"]
    zpath = tmp_path / "crate.zip"
    out = labctl("runs", "export", result["run_id"], "--data-dir", str(records["data_dir"]),
                 "-o", str(zpath))
    assert out.returncode == 0, out.stderr
    crate = ROCrate(zpath)
    [action] = [e for e in crate.get_entities() if e.type == "CreateAction"]
    meta = json.loads((folder / "metadata.json").read_text())
    driven = {s["device"] for s in meta["steps"] if s.get("device")}
    listed_devices = {e["name"] for e in action["instrument"] if e.id.startswith("#instrument-")}
    assert listed_devices == driven
    assert "potentiostat" in driven and not {"balance", "block_heater", "pump_teos"} & driven
    assert len(meta["instruments"]) > len(listed_devices)
    for name in ("anodic_voltammogram.png", "cathodic_voltammogram.svg"):
        assert crate.get(f"figures/{name}") is not None
    assert {"data/anodic.bdf.csv", "data/cathodic.bdf.csv"} <= {e.id for e in action["result"]}


def read_documents(path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]  # type: ignore[misc]


@pytest.mark.parametrize("recipe", ["stability_window", "coating_synthesis"])
def test_bluesky_documents_validate_and_hold_every_row(records: dict[str, Any], recipe: str,
                                                       tmp_path: Path) -> None:
    from event_model import DocumentNames, schema_validators

    folder, _, result = records[recipe]
    dest = tmp_path / "run.jsonl"
    out = labctl("runs", "export", result["run_id"], "--data-dir", str(records["data_dir"]),
                 "--format", "bluesky", "-o", str(dest), "--json")
    assert out.returncode == 0, out.stderr
    docs = read_documents(dest)
    for name, doc in docs:  # event-model's own schemas, every document
        schema_validators[DocumentNames[name]].validate(doc)
    assert json.loads(out.stdout)["counts"]["event"] == sum(1 for n, _ in docs if n == "event")
    names = [n for n, _ in docs]
    assert names[0] == "start" and names[-1] == "stop" and names.count("start") == 1
    start, stop = docs[0][1], docs[-1][1]
    meta = json.loads((folder / "metadata.json").read_text())
    assert start["labctl"]["run_id"] == result["run_id"] == start["labctl_run_id"]
    assert start["labctl"]["recipe"]["sha256"] == meta["recipe"]["sha256"]
    assert start["labctl"]["instigator"] == meta["instigator"]
    assert start["labctl"]["fidelity"]["level"] == "simulated"
    assert start["plan_name"] == recipe
    assert stop["exit_status"] == "success" and stop["run_start"] == start["uid"]
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    per_stream: dict[str, int] = {}
    for n, d in docs:
        if n == "event":
            per_stream[streams[d["descriptor"]]] = per_stream.get(streams[d["descriptor"]], 0) + 1
    assert stop["num_events"] == per_stream
    for path in (folder / "data").glob("*.csv") if (folder / "data").exists() else []:
        step = path.name.split(".", 1)[0]
        assert per_stream[step] == len(read_bdf(path)["Test Time / s"])  # one event per row
    journal = list(read_journal(folder / "events.jsonl"))
    weighings = [e for e in journal if e.get("kind") == "weighing"]
    assert per_stream.get("weighings", 0) == len(weighings)
    if recipe == "stability_window":
        [fom] = [d for n, d in docs if n == "event" and streams[d["descriptor"]]
                 == "figures_of_merit"]
        window = next(f for f in result["figures_of_merit"]
                      if f["name"] == "electrochemical_window")
        assert fom["data"]["electrochemical_window"] == pytest.approx(window["value"])
    else:
        assert weighings and "weighings" in per_stream
    # the same run exports to the same documents
    again = tmp_path / "again.jsonl"
    labctl("runs", "export", result["run_id"], "--data-dir", str(records["data_dir"]),
           "--format", "bluesky", "-o", str(again))
    assert again.read_text() == dest.read_text()


def test_export_refuses_an_unknown_format(records: dict[str, Any]) -> None:
    result = records["stability_window"][2]
    out = labctl("runs", "export", result["run_id"], "--data-dir", str(records["data_dir"]),
                 "--format", "hdf5")
    assert out.returncode == 2 and "--format" in out.stderr

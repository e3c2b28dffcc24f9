"""The figures a scientist expects from a run record (`labctl runs plot`), with matplotlib.

Per data file, by the technique its measurement record names: Nyquist and Bode plots of an
impedance spectrum with the fitted equivalent circuit; the voltammogram with the stability
window's limits and the threshold marked; for galvanostatic cycling the potential trace and
the capacity and coulombic efficiency per cycle; for other techniques (open-circuit
potential, chronoamperometry) potential and current against time. From the journal: the
mass at every weighing and the temperatures held (heating and stirring set-points for their
recorded durations), and any temperature column of the data. Each figure is written as PNG
and SVG; `figures.json` lists them with the number of points each data series holds, so a
reader (or a test) can check that the figure shows all the data.

matplotlib is imported here, lazily, on the Agg backend (no display, no pyplot state).
Data series carry an SVG id (`gid`), and path simplification is off, so the SVG holds every
point.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labctl.bdf import (
    APPLIED_POTENTIAL,
    CURRENT,
    CYCLE,
    FREQUENCY,
    TEMPERATURE,
    TEST_TIME,
    VOLTAGE,
    WE_POTENTIAL,
    Z_IMAG,
    Z_REAL,
    pick,
    read_bdf,
)
from labctl.store.journal import read_journal

FORMATS = ("png", "svg")


@dataclass
class Plotted:
    """One figure written: its files and the points of each data series (by SVG id)."""

    name: str
    kind: str
    step: str | None
    files: list[str] = field(default_factory=list)
    series: dict[str, int] = field(default_factory=dict)
    rows: int | None = None  # data rows of the file it shows

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "step": self.step, "files": self.files,
                "series": self.series, "rows": self.rows}


def _figure(nrows: int = 1, height: float = 3.6) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, 1, squeeze=False)[:, 0]
    return fig, axes


def _save(fig: Any, out: Path, plotted: Plotted) -> Plotted:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    for fmt in FORMATS:
        path = out / f"{plotted.name}.{fmt}"
        meta = {"Creator": "labctl", "Date": None} if fmt == "svg" else {"Software": "labctl"}
        fig.savefig(path, format=fmt, dpi=150, metadata=meta)
        plotted.files.append(path.name)
    for ax in fig.axes:  # count what was drawn, not what was meant to be
        for line in ax.get_lines():
            if line.get_gid():
                plotted.series[line.get_gid()] = len(line.get_xdata())
    return plotted


def _figures_for(result: dict[str, Any], name: str, step: str) -> dict[str, Any] | None:
    for f in result.get("figures_of_merit") or []:
        if f.get("name") == name and f.get("step") == step:
            return dict(f)
    return None


def _title(meta: dict[str, Any], what: str) -> str:
    """What the figure shows, and under it which run it comes from."""
    step, _, text = what.partition(": ")
    if not text:
        return f"{what}\nrun {meta.get('run_id', '')}"
    return f"{text}\nrun {meta.get('run_id', '')}, step {step}"


# -- impedance -----------------------------------------------------------------------------------

def _eis(out: Path, sid: str, cols: dict[str, Any], meta: dict[str, Any],
         result: dict[str, Any]) -> list[Plotted]:
    from labctl.analysis.eis import predict

    f, zr, zi = (np.asarray(cols[c], float) for c in (FREQUENCY, Z_REAL, Z_IMAG))
    ok = np.isfinite(f) & np.isfinite(zr) & np.isfinite(zi)
    f, zr, zi = f[ok], zr[ok], zi[ok]
    fit = _figures_for(result, "bulk_resistance_fit", sid)
    sigma = _figures_for(result, "ionic_conductivity", sid)
    model = None
    if fit and fit.get("circuit") and fit.get("parameters"):
        lo, hi = fit.get("f_min_hz") or np.min(f), fit.get("f_max_hz") or np.max(f)
        f_fit = np.geomspace(float(lo), float(hi), 200)  # over the points it was fitted to
        model = (f_fit, predict(fit["circuit"], fit["parameters"], f_fit), fit)
    rows = len(np.asarray(cols[FREQUENCY]))

    fig, (ax,) = _figure(height=4.6)
    ax.plot(zr, -zi, "o", ms=4, mfc="none", gid=f"{sid}-data", label=f"data ({len(f)} points)")
    if model is not None:
        ff, zf, info = model
        ax.plot(zf.real, -zf.imag, "-", lw=1.2, gid=f"{sid}-fit",
                label=f"fit {info['circuit']} (RMS {100 * info['rms_relative']:.2g} %)")
        ax.plot([info["value"]], [0.0], "x", ms=8, color="C3", gid=f"{sid}-r0",
                label=f"R0 = {info['value']:.4g} Ω")
    ax.set_xlabel("Z' / Ω")
    ax.set_ylabel("−Z'' / Ω")
    ax.set_aspect("equal", adjustable="datalim")
    what = "Nyquist plot"
    if sigma and sigma.get("value") is not None:
        what += f", σ = {10 * sigma['value']:.4g} mS/cm"
    ax.set_title(_title(meta, f"{sid}: {what}"))
    ax.legend(loc="upper left")
    nyq = _save(fig, out, Plotted(f"{sid}_nyquist", "nyquist", sid, rows=rows))

    fig, (a_mod, a_ph) = _figure(2, height=2.6)
    a_mod.loglog(f, np.hypot(zr, zi), "o", ms=4, mfc="none", gid=f"{sid}-modulus",
                 label="data")
    a_ph.semilogx(f, np.degrees(np.arctan2(zi, zr)), "o", ms=4, mfc="none", gid=f"{sid}-phase",
                  label="data")
    if model is not None:
        ff, zf, info = model
        a_mod.loglog(ff, np.abs(zf), "-", lw=1.2, gid=f"{sid}-modulus-fit",
                     label=f"fit {info['circuit']}")
        a_ph.semilogx(ff, np.degrees(np.angle(zf)), "-", lw=1.2, gid=f"{sid}-phase-fit",
                      label=f"fit {info['circuit']}")
    a_mod.set_ylabel("|Z| / Ω")
    a_ph.set_ylabel("phase / °")
    a_ph.set_xlabel("frequency / Hz")
    a_mod.set_title(_title(meta, f"{sid}: Bode plot"))
    a_mod.legend()
    bode = _save(fig, out, Plotted(f"{sid}_bode", "bode", sid, rows=rows))
    return [nyq, bode]


# -- voltammetry ----------------------------------------------------------------------------------

def _window(result: dict[str, Any]) -> dict[str, Any]:
    return {f["name"]: f for f in result.get("figures_of_merit") or []
            if f.get("name") in ("anodic_limit", "cathodic_limit")}


def _voltammogram(out: Path, sid: str, cols: dict[str, Any], meta: dict[str, Any],
                  result: dict[str, Any], technique: str) -> list[Plotted]:
    e = np.asarray(pick(cols, APPLIED_POTENTIAL, WE_POTENTIAL, VOLTAGE), float)
    i = np.asarray(cols[CURRENT], float)
    limits = _window(result)
    area = next((f.get("area_m2") for f in limits.values() if f.get("area_m2")), None)
    fig, (ax,) = _figure(height=4.2)
    if area:
        y, unit = i / area / 10.0, "j / mA cm⁻²"  # A/m² → mA/cm²
    else:
        y, unit = i * 1e3, "I / mA"
    ax.plot(e, y, "-", lw=1.0, gid=f"{sid}-data", label=f"{technique.upper()} ({len(e)} points)")
    for name, f in limits.items():
        steps = {f.get("anodic_step"), f.get("cathodic_step")} - {None}
        if f.get("value") is None or (steps and sid not in steps):
            continue
        ax.axvline(f["value"], color="C3" if name == "anodic_limit" else "C2", ls="--",
                   label=f"{name.replace('_', ' ')} {f['value']:.3f} V")
        if area and f.get("threshold_mA_cm2"):
            thr = float(f["threshold_mA_cm2"])
            ax.axhline(thr if name == "anodic_limit" else -thr, color="0.5", lw=0.8, ls=":")
    ax.set_xlabel("E / V" + (f" vs {_reference(limits)}" if _reference(limits) else ""))
    ax.set_ylabel(unit)
    ax.set_title(_title(meta, f"{sid}: voltammogram"))
    ax.legend(loc="upper left")
    return [_save(fig, out, Plotted(f"{sid}_voltammogram", "voltammogram", sid, rows=len(e)))]


def _reference(limits: dict[str, Any]) -> str:
    return next((str(f["reference"]) for f in limits.values() if f.get("reference")), "")


# -- cycling ---------------------------------------------------------------------------------------

def _cycling(out: Path, sid: str, cols: dict[str, Any], meta: dict[str, Any]) -> list[Plotted]:
    from labctl.analysis.cycling import charges_per_cycle

    t = np.asarray(cols[TEST_TIME], float)
    e = np.asarray(pick(cols, VOLTAGE, WE_POTENTIAL, APPLIED_POTENTIAL), float)
    i = np.asarray(cols[CURRENT], float)
    fig, (a_e, a_i) = _figure(2, height=2.4)
    a_e.plot(t / 3600, e, "-", lw=1.0, gid=f"{sid}-potential", label=f"{len(t)} points")
    a_i.plot(t / 3600, i * 1e3, "-", lw=1.0, gid=f"{sid}-current")
    a_e.set_ylabel("E / V")
    a_i.set_ylabel("I / mA")
    a_i.set_xlabel("time / h")
    a_e.set_title(_title(meta, f"{sid}: galvanostatic cycling"))
    a_e.legend(loc="upper right")
    trace = _save(fig, out, Plotted(f"{sid}_potential", "cycling-trace", sid, rows=len(t)))

    cycles = [c for c in charges_per_cycle(t, i, np.asarray(cols[CYCLE], float))
              if c.charge_ah > 0 or c.discharge_ah > 0]
    n = [c.cycle for c in cycles]
    fig, (a_q, a_ce) = _figure(2, height=2.4)
    a_q.plot(n, [1e3 * c.charge_ah for c in cycles], "o-", gid=f"{sid}-charge",
             label="charge")
    a_q.plot(n, [1e3 * c.discharge_ah for c in cycles], "s-", gid=f"{sid}-discharge",
             label="discharge")
    a_ce.plot(n, [c.efficiency_pct for c in cycles], "o-", color="C2", gid=f"{sid}-ce")
    a_q.set_ylabel("capacity / mAh")
    a_ce.set_ylabel("coulombic efficiency / %")
    a_ce.set_xlabel("cycle")
    for ax in (a_q, a_ce):
        ax.set_xticks(n)
    a_q.set_title(_title(meta, f"{sid}: capacity and efficiency per cycle"))
    a_q.legend()
    per = _save(fig, out, Plotted(f"{sid}_capacity", "capacity", sid, rows=len(cycles)))
    return [trace, per]


# -- other techniques ------------------------------------------------------------------------------

def _time_trace(out: Path, sid: str, cols: dict[str, Any], meta: dict[str, Any],
                technique: str) -> list[Plotted]:
    """Potential and current against time (open-circuit potential, chronoamperometry…):
    the finite columns only."""
    t = np.asarray(cols[TEST_TIME], float)
    series = [(col, label, scale) for col, label, scale in (
        (pick(cols, WE_POTENTIAL, VOLTAGE, APPLIED_POTENTIAL), "E / V", 1.0),
        (cols.get(CURRENT), "I / mA", 1e3))
        if col is not None and np.isfinite(np.asarray(col, float)).any()]
    if not series:
        return []
    fig, axes = _figure(len(series), height=2.6)
    for ax, (col, label, scale), gid in zip(axes, series, ("potential", "current"),
                                            strict=False):
        ax.plot(t / 60, np.asarray(col, float) * scale, "-", lw=1.0, gid=f"{sid}-{gid}",
                label=f"{len(t)} points")
        ax.set_ylabel(label)
        ax.legend(loc="upper right")
    axes[-1].set_xlabel("test time / min")
    axes[0].set_title(_title(meta, f"{sid}: {technique.upper() or 'measurement'} against time"))
    return [_save(fig, out, Plotted(f"{sid}_trace", "trace", sid, rows=len(t)))]


# -- journal traces --------------------------------------------------------------------------------

def _journal(folder: Path) -> list[dict[str, Any]]:
    path = folder / "events.jsonl"
    return list(read_journal(path)) if path.exists() else []


def _traces(out: Path, folder: Path, meta: dict[str, Any],
            data: dict[str, dict[str, Any]]) -> list[Plotted]:
    """Mass at each weighing, in order; each temperature hold as a segment of its recorded
    (process) duration, end to end; the temperature column of any data file against its
    test time. The journal's wall-clock times are not used: on a simulated bench they run
    faster than the process."""
    events = _journal(folder)
    made: list[Plotted] = []
    weigh = [e for e in events if e.get("event") == "record" and e.get("kind") == "weighing"
             and e.get("mass_g") is not None]
    if weigh:
        fig, (ax,) = _figure()
        ax.plot(range(1, len(weigh) + 1), [e["mass_g"] for e in weigh], "o-", gid="mass",
                label=f"{len(weigh)} weighings")
        ax.set_xticks(range(1, len(weigh) + 1),
                      [str(e.get("step") or k + 1) for k, e in enumerate(weigh)],
                      rotation=20, ha="right")
        ax.set_xlabel("weighing (step)")
        ax.set_ylabel("mass / g")
        ax.set_title(_title(meta, "mass on the balance"))
        ax.legend()
        made.append(_save(fig, out, Plotted("mass", "mass", None, rows=len(weigh))))
    heat = [e for e in events if e.get("event") == "record"
            and e.get("kind") in ("heating", "mixing") and e.get("temperature_c") is not None]
    measured = {sid: cols for sid, cols in data.items()
                if TEMPERATURE in cols and np.isfinite(np.asarray(cols[TEMPERATURE], float)).any()}
    if heat:
        fig, (ax,) = _figure()
        x: list[float] = []
        y: list[float] = []
        start = 0.0
        for e in heat:
            end = start + float(e.get("duration_s") or 0.0) / 60
            x += [start, end]
            y += [float(e["temperature_c"])] * 2
            ax.annotate(str(e.get("step", "")), (start, float(e["temperature_c"])),
                        fontsize=7, xytext=(2, 4), textcoords="offset points")
            start = end
        ax.plot(x, y, "-", lw=1.5, gid="temperature-holds",
                label=f"{len(heat)} holds (set-point, recorded duration)")
        ax.set_xlabel("hold time, holds end to end / min")
        ax.set_ylabel("temperature / °C")
        ax.set_title(_title(meta, "temperature held"))
        ax.legend(loc="upper left")
        made.append(_save(fig, out, Plotted("temperature", "temperature", None,
                                            rows=len(heat))))
    for sid, cols in measured.items():
        fig, (ax,) = _figure()
        t = np.asarray(cols[TEST_TIME], float)
        ax.plot(t / 60, np.asarray(cols[TEMPERATURE], float), "-", gid=f"{sid}-temperature",
                label=f"{len(t)} points")
        ax.set_xlabel("test time / min")
        ax.set_ylabel("temperature / °C")
        ax.set_title(_title(meta, f"{sid}: temperature during the measurement"))
        ax.legend()
        made.append(_save(fig, out, Plotted(f"{sid}_temperature", "temperature", sid,
                                            rows=len(t))))
    return made


# -- the run ---------------------------------------------------------------------------------------

def _techniques(events: list[dict[str, Any]]) -> dict[str, str]:
    return {str(e.get("step")): str(e.get("technique") or "") for e in events
            if e.get("event") == "record" and e.get("kind") == "measurement"}


def plot_run(folder: Path, out: Path | None = None) -> list[Plotted]:
    """Write the run's figures into `out` (default `<folder>/figures`) and `figures.json`."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    folder = Path(folder)
    out = Path(out) if out is not None else folder / "figures"
    out.mkdir(parents=True, exist_ok=True)
    meta = _read(folder / "metadata.json") or {"run_id": folder.name}
    result = _read(folder / "result.json") or {}
    techniques = _techniques(_journal(folder))
    data: dict[str, dict[str, Any]] = {}
    for path in sorted((folder / "data").glob("*.csv")) if (folder / "data").exists() else []:
        data[path.name.split(".", 1)[0]] = read_bdf(path)
    made: list[Plotted] = []
    with matplotlib.rc_context({"path.simplify": False, "svg.hashsalt": "labctl",
                                "font.size": 9, "axes.titlesize": 9, "axes.grid": True,
                                "grid.alpha": 0.3}):
        for sid, cols in data.items():
            tech = techniques.get(sid, "").lower()
            if all(pick(cols, c) is not None for c in (FREQUENCY, Z_REAL, Z_IMAG)) and \
                    np.isfinite(np.asarray(cols[FREQUENCY], float)).any():
                made += _eis(out, sid, cols, meta, result)
            elif CURRENT in cols and (tech.startswith("gcpl") or tech in ("cp", "gcd")
                                      or (CYCLE in cols and tech == "")):
                made += _cycling(out, sid, cols, meta)
            elif CURRENT in cols and tech in ("lsv", "cv", "") and \
                    pick(cols, APPLIED_POTENTIAL, WE_POTENTIAL, VOLTAGE) is not None:
                made += _voltammogram(out, sid, cols, meta, result, tech or "sweep")
            elif TEST_TIME in cols:
                made += _time_trace(out, sid, cols, meta, tech)
        made += _traces(out, folder, meta, data)
    (out / "figures.json").write_text(json.dumps([p.as_dict() for p in made], indent=2) + "\n")
    return made


def _read(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

"""The summary figure of a campaign: the figure of merit against each varied parameter,
and the best value so far per experiment (examples/closed_loop.py; any campaign that has
one row per experiment).

Matplotlib's object API (no pyplot state), PNG and SVG. Failed experiments are drawn too
(as crosses on the axis floor): a region of the space that fails is a result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def summary_figure(rows: Sequence[dict[str, Any]], merit: str, parameters: Sequence[str],
                   out: Path, *, merit_label: str | None = None,
                   title: str = "campaign") -> dict[str, Any]:
    """Write `out` (.png) and its .svg sibling. `rows`: one dict per experiment, in order,
    with each parameter's value and `merit` (None for a failed run). Returns what was
    drawn: files, points per panel, failures, the best row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not parameters:
        raise ValueError("a campaign summary needs at least one varied parameter")
    label = merit_label or merit
    ok = [r for r in rows if _finite(r.get(merit))]
    failed = [r for r in rows if not _finite(r.get(merit))]
    n = len(parameters) + 1
    cols = min(n, 3)
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=(4.0 * cols, 3.4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    best = max(ok, key=lambda r: float(r[merit])) if ok else None
    floor = min((float(r[merit]) for r in ok), default=0.0)
    drawn: dict[str, int] = {}
    order = [i for i, r in enumerate(rows) if _finite(r.get(merit))]
    for ax, name in zip(axes, parameters, strict=False):
        xs = [float(r[name]) for r in ok]
        ys = [float(r[merit]) for r in ok]
        sc = ax.scatter(xs, ys, c=order, cmap="viridis", s=28, zorder=3, gid="measured")
        if failed:
            ax.scatter([float(r[name]) for r in failed], [floor] * len(failed), marker="x",
                       color="tab:red", zorder=3, label="failed", gid="failed")
        if best is not None:
            ax.scatter([float(best[name])], [float(best[merit])], s=140, facecolors="none",
                       edgecolors="tab:red", linewidths=1.5, zorder=4, label="best")
        ax.set_xlabel(name)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        drawn[name] = len(xs)
    if ok:
        fig.colorbar(sc, ax=axes[: len(parameters)].tolist(), label="experiment (order)")
    ax = axes[len(parameters)]
    best_so_far: list[float] = []
    xs_i: list[int] = []
    top = -math.inf
    for i, r in enumerate(rows, start=1):
        if _finite(r.get(merit)):
            top = max(top, float(r[merit]))
        if top > -math.inf:
            xs_i.append(i)
            best_so_far.append(top)
    ax.step(xs_i, best_so_far, where="post", gid="best_so_far")
    ax.set_xlabel("experiment")
    ax.set_ylabel(f"best {label}")
    ax.grid(alpha=0.3)
    drawn["best_so_far"] = len(xs_i)
    for extra in axes[n:]:
        extra.set_visible(False)
    fig.suptitle(f"{title}: {len(ok)} measured, {len(failed)} failed")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png, svg = out.with_suffix(".png"), out.with_suffix(".svg")
    fig.savefig(png, dpi=150, metadata={"Software": "labctl"})
    fig.savefig(svg, metadata={"Creator": "labctl", "Date": None})
    return {"files": [str(png), str(svg)], "points": drawn, "failed": len(failed),
            "best": best}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)

"""Run progress from the plan and the run's events: fraction done and ETA that move within
a step and are revised from what has been measured.

Why not count finished steps: a ten-minute mix is one step, and a run that only moves at
step boundaries sits at one number for ten minutes. Here every leaf step in flight is
credited with the share of its estimate that its elapsed clock time covers (or what its
device reports), capped below 1 until it finishes; the ETA is the estimate still ahead,
scaled by how the run has kept to its estimates so far (`pace`). All times are on the run's
clock (simulated seconds on a simulated bench); `to_wall` turns them into wall seconds for
people. Paused time counts neither as progress nor against the pace.

`RunProgress` is fed the executor's events (`feed`) with the clock time they happened at,
and `snapshot(now)` answers at any moment; it keeps no reference to devices or the bench.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LEAF_KINDS = ("action", "wait", "analysis")
#: events after which what a device reads may have changed: views read the devices again
STATE_CHANGE_EVENTS = frozenset({
    "step_started", "step_finished", "step_failed", "step_cancelled", "step_recovered",
    "transition", "run_finished", "device_paused", "device_resumed", "safe_state",
    "safe_state_done", "estop", "bench_started", "queue_released"})
#: an unfinished step is never shown as more than this share of its estimate
IN_STEP_CAP = 0.99
#: the pace is trusted once this share of the estimated run lies behind (before: 1.0)
PACE_AFTER = 0.02
#: bounds of the pace (measured / estimated), so one odd step cannot throw the ETA off wildly
PACE_MIN, PACE_MAX = 0.2, 5.0


def _get(step: Any, name: str, default: Any = None) -> Any:
    if isinstance(step, Mapping):
        return step.get(name, default)
    return getattr(step, name, default)


def plan_leaves(plan: Any) -> list[Any]:
    """Leaf steps of a Plan (object or dict) in plan order."""
    out: list[Any] = []

    def walk(steps: Iterable[Any]) -> None:
        for s in steps:
            if _get(s, "kind") in LEAF_KINDS:
                out.append(s)
            walk(_get(s, "children") or [])

    walk(_get(plan, "steps") or [])
    return out


@dataclass
class _InFlight:
    started_s: float
    paused_s: float = 0.0  # paused time within this step so far
    reported: float | None = None  # device-reported fraction of the step, 0..1


class RunProgress:
    """Fraction done and ETA of one run, from its plan and its events."""

    def __init__(self, plan: Any, *, done: Iterable[str] = ()):
        leaves = plan_leaves(plan)
        self.estimates: dict[str, float] = {str(_get(s, "id")): max(
            0.0, float(_get(s, "estimated_s") or 0.0)) for s in leaves}
        self.leaf_total = sum(self.estimates.values())
        #: the run's own estimate: parallel branches overlap, so it may be below leaf_total
        self.run_estimate = float(_get(plan, "estimated_s") or 0.0) or self.leaf_total
        self.finished: set[str] = {s for s in done if s in self.estimates}
        self.active: dict[str, _InFlight] = {}
        self.started_s: float | None = None
        self.ended_s: float | None = None
        self.outcome: str | None = None
        self.paused_since: float | None = None
        self.paused_total = 0.0
        #: steps finished in this session: their clock time, and what their estimates said
        self.measured_s = 0.0
        self.measured_est_s = 0.0

    # -- events ------------------------------------------------------------------------
    def feed(self, ev: Mapping[str, Any], now_s: float) -> None:
        """One executor event (journal line) at clock time `now_s`."""
        kind = ev.get("event")
        step = str(ev.get("step")) if ev.get("step") is not None else None
        if kind == "step_started" and ev.get("kind") in LEAF_KINDS and step:
            self.start(step, now_s)
        elif kind in ("step_finished", "step_recovered") and step:
            self.finish(step, now_s)
        elif kind == "step_failed" and step:
            if ev.get("continued"):
                self.finish(step, now_s)
            else:
                self.active.pop(step, None)
        elif kind == "step_cancelled" and step:
            self.active.pop(step, None)
        elif kind == "step_progress" and step:
            frac = ev.get("fraction")
            if isinstance(frac, (int, float)):
                self.report(step, float(frac))
        elif kind == "transition":
            dest = str(ev.get("dest") or "")
            if dest == "paused":
                self.pause(now_s)
            elif dest in ("running", "stopping"):
                self.resume(now_s)
            if dest in ("completed", "failed", "aborted"):
                self.end(dest, now_s)

    def start(self, step: str, now_s: float) -> None:
        if self.started_s is None:
            self.started_s = now_s
        self.active[step] = _InFlight(started_s=now_s)

    def finish(self, step: str, now_s: float) -> None:
        if self.started_s is None:
            self.started_s = now_s
        act = self.active.pop(step, None)
        if step in self.estimates:
            self.finished.add(step)
            if act is not None:  # measured in this session: what the pace is made of
                took = max(0.0, now_s - act.started_s - act.paused_s)
                self.measured_s += took
                self.measured_est_s += self.estimates[step]

    def report(self, step: str, fraction: float) -> None:
        """A device's own word on how far a step is (0..1)."""
        act = self.active.get(step)
        if act is not None:
            act.reported = min(1.0, max(0.0, fraction))

    def pause(self, now_s: float) -> None:
        if self.paused_since is None:
            self.paused_since = now_s

    def resume(self, now_s: float) -> None:
        if self.paused_since is not None:
            gap = max(0.0, now_s - self.paused_since)
            self.paused_total += gap
            for act in self.active.values():
                act.paused_s += gap
            self.paused_since = None

    def end(self, outcome: str, now_s: float) -> None:
        self.resume(now_s)
        self.outcome = outcome
        self.ended_s = now_s
        self.active.clear()

    # -- answers -----------------------------------------------------------------------
    def _finished_credit(self) -> float:
        return sum(self.estimates[s] for s in self.finished)

    def _now(self, now_s: float) -> float:
        """The clock with paused time taken out (frozen while paused)."""
        if self.ended_s is not None:
            now_s = self.ended_s
        if self.paused_since is not None:
            now_s = self.paused_since
        return now_s

    def step_fraction(self, step: str, now_s: float) -> float:
        """How far one step in flight is: device-reported, else elapsed / estimate."""
        act = self.active.get(step)
        if act is None:
            return 1.0 if step in self.finished else 0.0
        if act.reported is not None:
            return min(IN_STEP_CAP, act.reported)
        est = self.estimates.get(step, 0.0)
        if est <= 0:
            return 0.0
        ran = max(0.0, self._now(now_s) - act.started_s - act.paused_s)
        return min(IN_STEP_CAP, ran / est)

    def elapsed(self, now_s: float) -> float:
        """Clock seconds the run has been running (paused time not counted)."""
        if self.started_s is None:
            return 0.0
        return max(0.0, self._now(now_s) - self.started_s - self.paused_total)

    def snapshot(self, now_s: float,
                 to_wall: Callable[[float], float] = lambda s: s) -> dict[str, Any]:
        """fraction (0..1), elapsed_s and eta_s (wall seconds through `to_wall`),
        steps_done/steps_total, est_total_s (the run's estimate, wall s) and pace.

        ETA = what the steps in flight still need (their estimate less their elapsed time,
        or by their device's word; the longest of them, as they run side by side) + the
        estimates of the steps not started, times the pace of the steps finished so far.
        A step on schedule thus brings the ETA down second by second."""
        total_steps = len(self.estimates)
        elapsed = self.elapsed(now_s)
        if self.outcome == "completed":
            return {"fraction": 1.0, "elapsed_s": round(to_wall(elapsed), 3),
                    "eta_s": 0.0, "steps_done": total_steps, "steps_total": total_steps,
                    "est_total_s": round(to_wall(self.run_estimate), 3), "pace": 1.0}
        credit = self._finished_credit() + sum(
            self.step_fraction(s, now_s) * self.estimates.get(s, 0.0) for s in self.active)
        if self.leaf_total > 0:
            frac = credit / self.leaf_total
        else:
            frac = len(self.finished) / total_steps if total_steps else 0.0
        frac = min(1.0, max(0.0, frac))
        if self.outcome is None and frac < 1.0:
            frac = min(frac, IN_STEP_CAP)
        pace = self.pace()
        eta = 0.0
        if not self.outcome:
            in_flight = max((self._left_s(s, now_s) for s in self.active), default=0.0)
            pending = self.leaf_total - self._finished_credit() - sum(
                self.estimates.get(s, 0.0) for s in self.active)
            overlap = self.run_estimate / self.leaf_total if self.leaf_total > 0 else 1.0
            eta = in_flight + max(0.0, pending) * overlap * pace
        return {"fraction": round(frac, 4), "elapsed_s": round(to_wall(elapsed), 3),
                "eta_s": round(to_wall(eta), 3), "steps_done": len(self.finished),
                "steps_total": total_steps,
                "est_total_s": round(to_wall(self.run_estimate), 3), "pace": round(pace, 3)}

    def _left_s(self, step: str, now_s: float) -> float:
        """Clock seconds a step in flight still needs: by its device's word (elapsed scaled
        by what it reports), else its estimate less its elapsed time."""
        act = self.active[step]
        ran = max(0.0, self._now(now_s) - act.started_s - act.paused_s)
        if act.reported:
            return ran * (1.0 - act.reported) / act.reported
        return max(0.0, self.estimates.get(step, 0.0) - ran)

    def pace(self) -> float:
        """Measured / estimated clock time of the steps finished in this session: how the
        run keeps to its estimates (1.0 until enough lies behind to judge)."""
        if self.measured_est_s <= max(PACE_AFTER * self.run_estimate, 0.0) or (
                self.measured_est_s <= 0):
            return 1.0
        return min(PACE_MAX, max(PACE_MIN, self.measured_s / self.measured_est_s))


def progress_text(prog: Mapping[str, Any], *, state: str | None = None) -> str:
    """One line for people: `42.3 %  steps 3/9  ETA 1:05`, never `0.0 %  s` for lack of
    numbers: before a run starts it says what is known (queued, its estimate)."""
    total = prog.get("steps_total")
    if not total and prog.get("fraction") is None:
        est = prog.get("est_total_s")
        what = state or "starting"
        return f"{what}" + (f", estimated {format_s(est)}" if est else "")
    frac = float(prog.get("fraction") or 0.0)
    eta = prog.get("eta_s")
    out = f"{frac * 100:5.1f} %" + (f"  steps {prog.get('steps_done', 0)}/{total}"
                                     if total else "")
    if eta is not None and frac < 1.0:
        out += f"  ETA {format_s(eta)}"
    return out


def format_s(seconds: Any) -> str:
    """`7.0 s`, `4:05`, `1:02:03`; `--` when unknown."""
    if not isinstance(seconds, (int, float)):
        return "--"
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f} s"
    whole = round(s)
    h, rem = divmod(whole, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"

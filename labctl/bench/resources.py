"""What each step of a run touches, and when two runs may hold the same thing.

Claims are computed once from the Plan at submit (pure: the plan and the bench config,
never a device). Per leaf step:

- its device, exclusive; every routing device a `@name` of its effects goes through
  (a pump's output through `@sel_valve` needs the valve to stay where it is), exclusive;
- the vessels of its effects, with `@device` leads resolved by replaying the plan's
  "route" effects in order (unresolvable: the `expect_*` vessel, else every vessel the
  routing device can lead to, the safe side); vials exclusive, reservoirs and waste shared
  (two pumps may draw from one reservoir); a technique's or a weighing's `vessel` arg;
- a stirrer/heater set-point (`set`, `stir`, `hold`, `set_temperature`) on a device that
  serves several vessels (params `vessels`) is a SHARED claim keyed by its set-point: same
  temperature and speed share the block, a different one waits. Any other action on such a
  device (`off`, ...) is exclusive: it would change the block under another run.

A resource a run uses in two or more leaves is a *span*, held from its first to its last
use. The grant rule that makes this deadlock-free is in `ResourceBoard` (and docs/
reliability.md, "con/runs", with the argument).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from labctl.recipe.plan import Plan, PlannedStep

Mode = Literal["exclusive", "shared"]

#: stirrer/heater actions whose claim on a multi-vessel device is keyed by their set-point
SETPOINT_ACTIONS = frozenset({"set", "stir", "hold", "set_temperature", "monitor", "off"})
#: the set-point fields of those actions (args as planned)
SETPOINT_ARGS = ("temperature_c", "speed_rpm")


@dataclass(frozen=True)
class Claim:
    """One resource (`device:NAME` or `vessel:NAME`) wanted in a mode; a shared claim may
    carry a key (a set-point, "speed_rpm=600;temperature_c=25"): shared claims conflict when
    a field both keys set has different values (a block at 25 °C may be stirred at 600 rpm
    by one run and kept at 25 °C by another; 25 °C and 40 °C cannot share it)."""

    resource: str
    mode: Mode = "exclusive"
    key: str | None = None

    def conflicts(self, other: Claim) -> bool:
        if self.resource != other.resource:
            return False
        if self.mode == "exclusive" or other.mode == "exclusive":
            return True
        if self.key is None or other.key is None:
            return self.key != other.key
        mine, theirs = key_fields(self.key), key_fields(other.key)
        return any(mine[f] != theirs[f] for f in mine.keys() & theirs.keys())

    def to_dict(self) -> dict[str, Any]:
        return {"resource": self.resource, "mode": self.mode, "key": self.key}


def key_fields(key: str) -> dict[str, str]:
    """"speed_rpm=600;temperature_c=25" -> {"speed_rpm": "600", "temperature_c": "25"}."""
    out = {}
    for part in key.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            out[name] = value
    return out


def _key_text(fields: Mapping[str, str]) -> str:
    return ";".join(f"{k}={fields[k]}" for k in sorted(fields)) or "none"


def conflict(a: Iterable[Claim], b: Iterable[Claim]) -> Claim | None:
    """A claim of `a` that conflicts with one of `b` (None: they may be held together)."""
    bl = list(b)
    for x in a:
        for y in bl:
            if x.conflicts(y):
                return x
    return None


@dataclass
class RunClaims:
    """A run's claims: per leaf step (in plan order) and its spans."""

    order: list[str]
    steps: dict[str, list[Claim]]
    #: resource -> merged claim over all its uses, for resources used in >= 2 leaves
    spans: dict[str, Claim] = field(default_factory=dict)
    #: resource -> id of the leaf that uses it last (released after that leaf)
    last_use: dict[str, str] = field(default_factory=dict)
    #: the first leaf that uses a span resource (the spans are granted before it)
    first_span_step: str | None = None

    def step_only(self, step_id: str) -> list[Claim]:
        """A step's claims on resources that are not spans (taken for the step alone)."""
        return [c for c in self.steps.get(step_id, []) if c.resource not in self.spans]

    def remaining(self, done: Iterable[str]) -> list[Claim]:
        """Every claim the run still needs: its spans not yet released and the claims of
        the steps not done."""
        finished = set(done)
        out: list[Claim] = []
        for sid in self.order:
            if sid not in finished:
                out.extend(self.steps.get(sid, []))
        return out


# -- computing claims --------------------------------------------------------------------
def _vessel_kind(cfg: Any, name: str) -> str | None:
    v = (getattr(cfg, "vessels", None) or {}).get(name)
    return getattr(v, "kind", None) if v is not None else None


def _device_params(cfg: Any, name: str) -> Mapping[str, Any]:
    d = (getattr(cfg, "devices", None) or {}).get(name)
    params = getattr(d, "params", None) if d is not None else None
    return params if isinstance(params, Mapping) else {}


def vessel_claim(cfg: Any, name: str) -> Claim:
    """Vials exclusive; reservoirs and waste shared (several pumps may draw from or drain
    into one)."""
    kind = _vessel_kind(cfg, name)
    return Claim(f"vessel:{name}", "shared" if kind in ("reservoir", "waste") else "exclusive")


def multi_vessel(cfg: Any, device: str) -> bool:
    """Does this device serve several vessels at once (a vial block)?"""
    vs = _device_params(cfg, device).get("vessels")
    return isinstance(vs, (list, tuple)) and len(vs) > 1


def setpoint_key(step: PlannedStep) -> str:
    """A canonical set-point: "speed_rpm=600;temperature_c=25" (unset fields left out)."""
    fields = {k: f"{float(v):g}" for k in SETPOINT_ARGS
              if (v := step.args.get(k)) is not None}
    return _key_text(fields)


class _Routes:
    """Where each routing device leads, replayed from the plan's route effects."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.state: dict[str, str | None] = {}

    def leads(self, device: str) -> list[str]:
        """Every vessel/lead a routing device can lead to (its port map)."""
        pm = _device_params(self.cfg, device).get("port_map")
        return [str(v) for v in pm.values()] if isinstance(pm, Mapping) else []

    def resolve(self, target: str, devices: set[str], depth: int = 0) -> list[str]:
        """The vessels `target` stands for now; routing devices passed are added to
        `devices`. Unknown positions resolve to every vessel the device can reach."""
        if not target.startswith("@"):
            return [] if target.startswith("#") else [target]
        name = target[1:]
        devices.add(name)
        if depth > 8:
            return []
        now = self.state.get(name)
        leads = [now] if now is not None else self.leads(name)
        out: list[str] = []
        for lead in leads:
            out.extend(self.resolve(str(lead), devices, depth + 1))
        return out


def _step_claims(step: PlannedStep, cfg: Any, routes: _Routes) -> list[Claim]:
    claims: dict[str, Claim] = {}

    def add(c: Claim) -> None:
        old = claims.get(c.resource)
        claims[c.resource] = c if old is None else _merge(old, c)

    routing: set[str] = set()
    vessels: list[str] = []
    for e in step.effects:
        kind = e.get("kind")
        if kind == "route" and e.get("device"):
            dev = str(e["device"])
            target = e.get("target")
            routes.state[dev] = str(target) if target is not None else None
            if target is not None and dev != step.device:
                routing.add(dev)
            if target is not None:
                vessels += routes.resolve(str(target), routing)
        elif kind == "move":
            for end in ("source", "destination"):
                lead = e.get(end)
                if lead is None:
                    continue
                found = routes.resolve(str(lead), routing)
                expect = e.get(f"expect_{end}")
                if str(lead).startswith("@") and expect is not None and (
                        not found or expect in found):
                    found = [str(expect)]
                vessels += found
        elif kind == "needs_liquid" and e.get("destination"):
            vessels.append(str(e["destination"]))
    vessel_arg = step.args.get("vessel")
    if isinstance(vessel_arg, str) and vessel_arg:
        vessels.append(vessel_arg)
    if step.device:
        dev = str(step.device)
        if multi_vessel(cfg, dev):
            if step.action in SETPOINT_ACTIONS:
                add(Claim(f"device:{dev}", "shared", setpoint_key(step)))
            else:
                add(Claim(f"device:{dev}"))
        else:
            add(Claim(f"device:{dev}"))
            one = _device_params(cfg, dev).get("vessel")
            if (isinstance(one, str) and not vessels and step.kind == "action"
                    and step.capability in ("stirrer", "temperature_controller", "balance",
                                            "potentiostat")):
                vessels.append(one)  # it acts on the vessel it sits under
    for name in routing:
        if name != step.device:
            add(Claim(f"device:{name}"))
    for v in vessels:
        if v.startswith(("@", "#")) or _vessel_kind(cfg, v) is None:
            continue
        add(vessel_claim(cfg, v))
    return sorted(claims.values(), key=lambda c: c.resource)


def _merge(a: Claim, b: Claim) -> Claim:
    """Two uses of one resource by one run: shared uses whose set-points agree stay shared,
    keyed by all the fields they set; anything else is exclusive (a run that changes a
    shared block's set-point owns the block)."""
    if a.mode == "shared" and b.mode == "shared":
        if a.key is None and b.key is None:
            return a
        if a.key is not None and b.key is not None and not a.conflicts(b):
            return Claim(a.resource, "shared", _key_text({**key_fields(a.key),
                                                          **key_fields(b.key)}))
    return Claim(a.resource, "exclusive")


def claims_of(plan: Plan, cfg: Any) -> RunClaims:
    """Every leaf's claims and the run's spans, from the plan alone."""
    routes = _Routes(cfg)
    order: list[str] = []
    steps: dict[str, list[Claim]] = {}
    uses: dict[str, list[str]] = {}
    merged: dict[str, Claim] = {}
    for leaf in plan.leaves():
        order.append(leaf.id)
        cs = _step_claims(leaf, cfg, routes)
        steps[leaf.id] = cs
        for c in cs:
            uses.setdefault(c.resource, []).append(leaf.id)
            merged[c.resource] = c if c.resource not in merged else _merge(merged[c.resource], c)
    spans = {r: merged[r] for r, used in uses.items() if len(used) >= 2}
    out = RunClaims(order=order, steps=steps, spans=spans,
                    last_use={r: used[-1] for r, used in uses.items() if r in spans})
    for sid in order:
        if any(c.resource in spans for c in steps[sid]):
            out.first_span_step = sid
            break
    return out


# -- the board: who holds what, and the grant rule ----------------------------------------
@dataclass
class _RunState:
    claims: RunClaims
    done: set[str] = field(default_factory=set)
    #: spans granted and not yet released
    spans: dict[str, Claim] = field(default_factory=dict)
    granted: bool = False
    #: step id -> the step-only claims it holds while it runs
    steps: dict[str, list[Claim]] = field(default_factory=dict)

    def holds(self) -> list[Claim]:
        out = list(self.spans.values())
        for cs in self.steps.values():
            out.extend(cs)
        return out

    def remaining(self) -> list[Claim]:
        return self.claims.remaining(self.done)


class ResourceBoard:
    """Every run's holds on one bench, and the rule that grants them.

    A run's spans are granted in ONE atomic grant, at the first step that uses any of them
    (released one by one after their last use). The grant is made only if the spans (and
    that step's own claims) are free now, and for every other run holding spans: that run's
    remaining needs do not conflict with the new spans, and the new run's remaining needs
    do not conflict with that run's held spans. Claims used by one step only are taken
    atomically per step. So a run holding spans never waits on another run's spans (the
    rule checked both ways when the later of the two was granted), and a run waiting for a
    grant or for a step's claims holds nothing it is waiting on besides spans that no
    other run will need: the only waits are on steps in flight, which wait on nothing.
    No cycle of waits can form, whatever the recipes."""

    def __init__(self) -> None:
        self._runs: dict[str, _RunState] = {}
        #: made in the running loop at first use (a board may be built outside one)
        self._changed: asyncio.Condition | None = None
        #: run id -> the step it waits to start (for status: who waits for what)
        self.waiting: dict[str, str] = {}

    def _cond(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    # -- registration ----------------------------------------------------------------
    def register(self, run_id: str, claims: RunClaims, *, done: Iterable[str] = ()) -> None:
        """A run that is about to start (`done`: steps a resume skips)."""
        st = _RunState(claims=claims, done=set(done))
        self._runs[run_id] = st

    def holds(self, run_id: str) -> list[Claim]:
        st = self._runs.get(run_id)
        return st.holds() if st is not None else []

    def holders(self, resource: str) -> list[str]:
        """Runs holding a resource now."""
        return [rid for rid, st in self._runs.items()
                if any(c.resource == resource for c in st.holds())]

    def devices_only_held_by(self, run_id: str) -> list[str]:
        """The devices this run holds that no other run holds (shared blocks another run
        also uses are left alone): what a fault of this run puts in safe state."""
        out = []
        for c in self.holds(run_id):
            if not c.resource.startswith("device:"):
                continue
            if self.holders(c.resource) == [run_id]:
                out.append(c.resource.split(":", 1)[1])
        return sorted(set(out))

    # -- the rule --------------------------------------------------------------------
    def _wanted(self, run_id: str, step_id: str) -> tuple[list[Claim], list[Claim]]:
        """(spans to grant now, step-only claims) for a step about to run."""
        st = self._runs[run_id]
        step_claims = st.claims.steps.get(step_id, [])
        new_spans: list[Claim] = []
        if not st.granted and any(c.resource in st.claims.spans for c in step_claims):
            new_spans = [c for r, c in st.claims.spans.items()
                         if st.claims.last_use.get(r) not in st.done]
        return new_spans, st.claims.step_only(step_id)

    def can_enter(self, run_id: str, step_id: str) -> bool:
        st = self._runs[run_id]
        spans, step_only = self._wanted(run_id, step_id)
        want = spans + step_only
        mine = st.remaining()
        for rid, other in self._runs.items():
            if rid == run_id:
                continue
            if conflict(want, other.holds()) is not None:
                return False
            if spans and other.spans:
                if conflict(other.remaining(), spans) is not None:
                    return False
                if conflict(mine, other.spans.values()) is not None:
                    return False
        return True

    def take(self, run_id: str, step_id: str) -> list[Claim]:
        """Take what the step needs (call only when can_enter); the claims newly held."""
        st = self._runs[run_id]
        spans, step_only = self._wanted(run_id, step_id)
        for c in spans:
            st.spans[c.resource] = c
        if spans:
            st.granted = True
        if step_only:
            st.steps[step_id] = step_only
        return spans + step_only

    async def enter(self, run_id: str, step_id: str) -> list[Claim]:
        """Wait until the step may run, then hold what it needs; the claims newly held."""
        if run_id not in self._runs:
            return []
        cond = self._cond()
        async with cond:
            if not self.can_enter(run_id, step_id):
                self.waiting[run_id] = step_id
                try:
                    await cond.wait_for(lambda: self.can_enter(run_id, step_id))
                finally:
                    self.waiting.pop(run_id, None)
            return self.take(run_id, step_id)

    def blockers(self, run_id: str) -> list[dict[str, Any]]:
        """What the run's waiting step waits for: [{resource, held_by}] (empty: it does not
        wait, or it waits for the grant rule rather than a held resource)."""
        step_id = self.waiting.get(run_id)
        if step_id is None or run_id not in self._runs:
            return []
        spans, step_only = self._wanted(run_id, step_id)
        out = []
        for rid, other in self._runs.items():
            if rid == run_id:
                continue
            for want in spans + step_only:
                for held in other.holds():
                    if want.conflicts(held):
                        out.append({"resource": want.resource, "held_by": rid})
        return out

    def _release_step(self, run_id: str, step_id: str) -> list[Claim]:
        st = self._runs.get(run_id)
        if st is None:
            return []
        st.done.add(step_id)
        out = st.steps.pop(step_id, [])
        for r, c in list(st.spans.items()):
            if st.claims.last_use.get(r) == step_id:
                out.append(c)
                del st.spans[r]
        return out

    async def exit(self, run_id: str, step_id: str) -> list[Claim]:
        """The step is done: its step-only claims and the spans it used last are
        released; the claims released."""
        cond = self._cond()
        async with cond:
            out = self._release_step(run_id, step_id)
            cond.notify_all()
        return out

    async def finish(self, run_id: str) -> list[Claim]:
        """The run ended (any way): everything it holds is released."""
        cond = self._cond()
        async with cond:
            st = self._runs.pop(run_id, None)
            out = st.holds() if st is not None else []
            cond.notify_all()
        return out


class RunGate:
    """One run's gate for the executor: `enter(step)` waits for and takes the step's
    claims, `exit(step)` releases what it used last, `close()` releases the rest."""

    def __init__(self, board: ResourceBoard, run_id: str):
        self.board = board
        self.run_id = run_id

    async def enter(self, step: PlannedStep) -> list[Claim]:
        return await self.board.enter(self.run_id, step.id)

    async def exit(self, step: PlannedStep) -> list[Claim]:
        return await self.board.exit(self.run_id, step.id)

    async def close(self) -> list[Claim]:
        return await self.board.finish(self.run_id)

    def sharing(self, step: PlannedStep) -> list[str]:
        if not step.device:
            return []
        return [rid for rid in self.board.holders(f"device:{step.device}")
                if rid != self.run_id]

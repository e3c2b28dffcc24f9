"""Parameters that name a vessel: "vial" (a vial of a rack) and "sample" (a sample id the
bench has bound to its vessel before planning, labctl.bench.samples). Validation checks the
vessel exists, is a vial and sits in the declared rack."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labctl.config import BenchConfig
from labctl.recipe.expressions import POISON
from labctl.recipe.issues import Issue
from labctl.recipe.models import Parameter


def rack_vials(decls: Mapping[str, Parameter], given: Mapping[str, Any],
               cfg: BenchConfig) -> dict[str, str]:
    """A vial parameter given no value and no default: the rack's first vial, so that a
    recipe validates on its own (a bench assigns a free vial at submit instead)."""
    out = {}
    for name, d in decls.items():
        if d.type == "vial" and name not in given and d.default is None:
            vials = rack_of(cfg, d.rack)
            if vials:
                out[name] = vials[0]
    return out


def rack_of(cfg: BenchConfig, rack: str | None) -> list[str]:
    """The vials of a rack in position order (rack None: every vial of the bench)."""
    vials = [(v.position or 0, n) for n, v in cfg.vessels.items()
             if v.kind == "vial" and (rack is None or v.rack == rack)]
    return [n for _p, n in sorted(vials)]


def check_vessel_parameters(decls: Mapping[str, Parameter], values: Mapping[str, Any],
                            cfg: BenchConfig) -> list[Issue]:
    issues = []
    for name, d in decls.items():
        value = values.get(name)
        if d.type not in ("vial", "sample") or value is None or value is POISON:
            continue
        path = f"parameters.{name}"
        v = cfg.vessels.get(str(value))
        if d.type == "sample" and v is None:
            issues.append(Issue(path, f"parameter {name!r}: sample {value!r} is not bound to "
                                      "a vessel (a bench resolves sample ids when the run is "
                                      "submitted)"))
            continue
        if v is None or v.kind != "vial":
            vials = ", ".join(rack_of(cfg, d.rack)) or "none"
            issues.append(Issue(path, f"parameter {name!r}: {value!r} is not a vial of this "
                                      f"bench{f' in rack {d.rack!r}' if d.rack else ''} "
                                      f"(vials: {vials})"))
        elif d.type == "vial" and d.rack and v.rack != d.rack:
            issues.append(Issue(path, f"parameter {name!r}: vial {value!r} is in rack "
                                      f"{v.rack!r}, not {d.rack!r} (its vials: "
                                      f"{', '.join(rack_of(cfg, d.rack)) or 'none'})"))
    return issues

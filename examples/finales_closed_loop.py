"""Closed-loop conductivity optimisation through FINALES2 only.

An optimiser as BIG-MAP runs them: it knows FINALES2, not labctl. A Gaussian-process
optimiser (scikit-optimize ask/tell) proposes a formulation as FINALES2_schemas describes
one (LiPF6, EC, DMC by molar fraction) at 298.15 K, posts a `conductivity`/`two_electrode`
request, waits for the result any tenant posts, tells the optimiser the conductivity
(a failed result counts as 0 S/m), and repeats. Whichever bench answers is FINALES2's
business; with `--local` it is a labctl simulated bench (`labctl finales serve`).

    # against a running FINALES2 (a user able to post requests; any tenant uuid of yours)
    python examples/finales_closed_loop.py --server http://HOST:13371 --username ai \\
        --password-file pw.txt --tenant-uuid UUID
    # or start a private FINALES2 and a labctl tenant on the simulated bench first
    python examples/finales_closed_loop.py --local
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from skopt import Optimizer
from skopt.space import Real

ROOT = Path(__file__).resolve().parent.parent
LIPF6 = {"SMILES": "[Li+].F[P-](F)(F)(F)(F)F", "InChIKey": "AXPLOJNSKRXQPA-UHFFFAOYSA-N"}
EC = {"SMILES": "C1COC(=O)O1", "InChIKey": "KMTRUDSVKNLOMY-UHFFFAOYSA-N"}
DMC = {"SMILES": "COC(=O)OC", "InChIKey": "IEJIGPNLZYLLBP-UHFFFAOYSA-N"}


def formulation(salt: float, ec_share: float) -> dict[str, Any]:
    """Salt molar fraction; EC's share of the solvent's moles (the rest is DMC)."""
    solvent = 1.0 - salt
    parts = [(LIPF6, salt), (EC, solvent * ec_share), (DMC, solvent * (1 - ec_share))]
    return {"formulation": [{"chemical": c, "fraction": round(f, 6),
                             "fraction_type": "molPerMol"} for c, f in parts],
            "temperature": 298.15}


class Finales:
    def __init__(self, url: str, username: str, password: str):
        self.http = httpx.Client(base_url=url, timeout=30)
        r = self.http.post("/user_management/authenticate",
                           data={"username": username, "password": password})
        r.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def ask(self, parameters: dict[str, Any], tenant_uuid: str) -> str:
        r = self.http.post("/requests/", json={
            "quantity": "conductivity", "methods": ["two_electrode"],
            "parameters": {"two_electrode": parameters}, "tenant_uuid": tenant_uuid})
        r.raise_for_status()
        return str(r.json())

    def result(self, request_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = self.http.get(f"/results_requested/{request_id}")
            r.raise_for_status()
            if r.json():
                return dict(r.json()["result"]["data"])
            time.sleep(0.2)
        raise TimeoutError(f"no result for {request_id} in {timeout_s:g} s")


def start_local(tmp: Path, time_scale: float) -> tuple[Any, subprocess.Popen[bytes], str, str]:
    """A private FINALES2 (tests/finales_server.py) and a labctl tenant on the simulated
    bench; the optimiser logs in as "ai"."""
    sys.path.insert(0, str(ROOT))
    from tests.finales_server import FinalesServer, Optimiser

    server = FinalesServer(tmp / "finales")
    server.setup({"ai": "ai-pw", "bench": "bench-pw"}, [("conductivity", "two_electrode")])
    server.start()
    desc = json.loads(subprocess.run(
        [sys.executable, "-m", "labctl", "finales", "tenant", "--name", "sim-bench"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    admin = Optimiser(server.url, "ai", "ai-pw")
    (uuid,) = server.add_tenants([desc], admin)
    admin.close()
    (tmp / "pw").write_text("bench-pw\n")
    with open(tmp / "tenant.log", "wb") as log:
        tenant = subprocess.Popen(
            [sys.executable, "-m", "labctl", "finales", "serve", "--server", server.url,
             "--username", "bench", "--password-file", str(tmp / "pw"), "--tenant-uuid", uuid,
             "--data-dir", str(tmp / "runs"), "--time-scale", str(time_scale), "--poll", "0.2"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return server, tenant, server.url, uuid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server")
    ap.add_argument("--username")
    ap.add_argument("--password-file", type=Path)
    ap.add_argument("--tenant-uuid", help="the requester's tenant uuid FINALES2 records")
    ap.add_argument("--local", action="store_true")
    ap.add_argument("--time-scale", type=float, default=100.0, help="--local bench")
    ap.add_argument("--n", type=int, default=12, help="experiments")
    ap.add_argument("--initial", type=int, default=5, help="random ones first")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    server = tenant = None
    if args.local:
        server, tenant, url, tenant_uuid = start_local(
            Path(tempfile.mkdtemp(prefix="finales-loop-")), args.time_scale)
        finales = Finales(url, "ai", "ai-pw")
    else:
        if not (args.server and args.username and args.password_file and args.tenant_uuid):
            ap.error("--server, --username, --password-file, --tenant-uuid (or --local)")
        password = args.password_file.read_text().splitlines()[0].strip()
        finales = Finales(args.server, args.username, password)
        tenant_uuid = args.tenant_uuid
    opt = Optimizer([Real(0.01, 0.14, name="salt"), Real(0.15, 0.85, name="ec_share")],
                    base_estimator="GP", acq_func="EI", n_initial_points=args.initial,
                    random_state=args.seed)
    best: tuple[float, list[float]] = (0.0, [])
    try:
        for i in range(args.n):
            x = opt.ask()
            data = finales.result(finales.ask(formulation(*x), tenant_uuid), timeout_s=600)
            cond = data["conductivity"]
            sigma = float(cond["values"][0]) if cond["meta"]["success"] else 0.0
            opt.tell(x, -sigma)
            why = "" if cond["meta"]["success"] else f"  (failed: {cond['meta'].get('reason')})"
            print(f"{i + 1:2d}  LiPF6 {x[0]:.4f}  EC share {x[1]:.3f}  ->  {sigma:.4f} S/m{why}",
                  flush=True)
            if sigma > best[0]:
                best = (sigma, x)
    finally:
        if tenant is not None:
            tenant.send_signal(signal.SIGTERM)
            tenant.wait(60)
        if server is not None:
            server.stop()
    if best[1]:
        print(f"best: LiPF6 {best[1][0]:.4f} mol/mol, EC {best[1][1]:.3f} of the solvent's "
              f"moles: {best[0]:.4f} S/m")


if __name__ == "__main__":
    main()

"""Request -> result wall time through FINALES2, against the run's own duration.

A private FINALES2 server (tests/finales_server.py: its own package copy and database),
`labctl finales serve` on the simulated bench, an optimiser posting N requests one after
the other through FINALES2's endpoints. Prints the medians of the optimiser's
request-posted -> result-seen time and of the labctl run's own started -> ended time (read
from its record) for the same requests, and their ratio: what FINALES2, polling, reserving,
planning and posting add around the bench's work. Figures only, no asserts.

    python bench/finales_roundtrip.py [--n 5] [--time-scale 100] [--poll 0.2]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.finales_server import EXAMPLE_1M, FinalesServer, Optimiser  # noqa: E402


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--time-scale", type=float, default=100.0)
    ap.add_argument("--poll", type=float, default=0.2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="finales-bench-"))
    server = FinalesServer(tmp / "finales")
    server.setup({"opt": "o", "bench": "b"}, [("conductivity", "two_electrode")])
    server.start()
    opt = Optimiser(server.url, "opt", "o")
    desc = json.loads(subprocess.run(
        [sys.executable, "-m", "labctl", "finales", "tenant", "--name", "bench"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    (uuid,) = server.add_tenants([desc], opt)
    (tmp / "pw").write_text("b\n")
    data_dir = tmp / "runs"
    log = open(tmp / "tenant.log", "wb")
    tenant = subprocess.Popen(
        [sys.executable, "-m", "labctl", "finales", "serve", "--server", server.url,
         "--username", "bench", "--password-file", str(tmp / "pw"), "--tenant-uuid", uuid,
         "--data-dir", str(data_dir), "--time-scale", str(args.time_scale),
         "--poll", str(args.poll)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    totals, runs = [], []
    try:
        for _ in range(args.n):
            t0 = time.monotonic()
            rid = opt.request(EXAMPLE_1M, uuid)
            res = opt.wait_result(rid, timeout_s=600)
            totals.append(time.monotonic() - t0)
            run_id = res["result"]["data"]["run_info"]["internal_reference"]
            r = json.loads((data_dir / run_id / "result.json").read_text())
            runs.append(_t(r["ended"]) - _t(r["started"]))
    finally:
        tenant.send_signal(signal.SIGTERM)
        tenant.wait(60)
        log.close()
        opt.close()
        server.stop()
    med_total, med_run = statistics.median(totals), statistics.median(runs)
    print(f"time scale {args.time_scale:g}, poll {args.poll:g} s, {args.n} requests "
          "(1 mol/kg LiPF6 in EC:DMC 1:1 by mass, 25 °C)")
    print(f"request -> result (optimiser's view): median {med_total:.2f} s "
          f"(min {min(totals):.2f}, max {max(totals):.2f})")
    print(f"labctl run started -> ended:          median {med_run:.2f} s")
    print(f"ratio request->result / run: {med_total / med_run:.2f} "
          f"(overhead median {med_total - med_run:.2f} s)")


if __name__ == "__main__":
    main()

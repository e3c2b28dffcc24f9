"""A private, real FINALES2 server for tests (uvicorn on a free loopback port), and an
"optimiser" that talks to it only through FINALES2's own REST endpoints.

FINALES2 keeps its data database inside its package folder, so each server runs from its
own copy of the installed package (first on PYTHONPATH) with its own config and user DB.
Users, capabilities and tenants are added with FINALES2's own admin commands.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent


def peers_dir() -> Path:
    """`shared/peers` beside the repository (CI), or beside one of its parents (worktrees)."""
    for parent in [REPO, *REPO.parents]:
        cand = parent / "shared" / "peers"
        if cand.is_dir():
            return cand
    raise FileNotFoundError("no shared/peers beside the repository: FINALES2 peers missing")


def capability_file(quantity: str, method: str) -> Path:
    """The capability JSON FINALES2_schemas serializes for a quantity and method."""
    return (peers_dir() / "FINALES2_schemas" / "src" / "FINALES2_schemas"
            / "serialized_quantities" / quantity / f"{method}.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FinalesServer:
    def __init__(self, root: Path, *, token_expiration_min: int = 1440):
        spec = importlib.util.find_spec("FINALES2")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("FINALES2 is not installed (make install installs it from "
                               "../shared/peers)")
        self.root = root
        pkg = root / "pkg"
        shutil.copytree(spec.submodule_search_locations[0], pkg / "FINALES2",
                        ignore=shutil.ignore_patterns("__pycache__", "*.db", "*.log",
                                                      "config.json"))
        self.config = root / "finales_config.json"
        self.config.write_text(json.dumps({
            "secret_key": os.urandom(16).hex(), "user_db": str(root / "users.db"),
            "log_path": str(root / "finales.log"), "algorithm": "HS256",
            "token_expiration_min": token_expiration_min}))
        self.env = {**os.environ, "PYTHONPATH": str(pkg), "FINALES_CONFIG_FILEPATH":
                    str(self.config)}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def setup(self, users: dict[str, str], capabilities: list[tuple[str, str]]) -> None:
        """Tables, users and capabilities, with FINALES2's admin commands (one process)."""
        cmds = [["db", "init"]]
        cmds += [["db", "add", "user", u, "--password", pw] for u, pw in users.items()]
        cmds += [["db", "add", "capability", "--input-filepath", str(capability_file(q, m))]
                 for q, m in capabilities]
        self.admin(*cmds)

    def admin(self, *commands: list[str]) -> str:
        """FINALES2's own admin CLI (`finales ...`), several commands in one process."""
        script = ("import json, sys\nfrom FINALES2.cli.main import finales_cli\n"
                  "for args in json.loads(sys.argv[1]):\n"
                  "    finales_cli.main(args, standalone_mode=False)\n")
        out = subprocess.run([sys.executable, "-c", script, json.dumps(list(commands))],
                             env=self.env, cwd=self.root, capture_output=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"finales {commands}: {out.stderr.decode()[-2000:]}")
        return out.stdout.decode()

    def add_tenants(self, descriptions: list[dict[str, Any]],
                    as_user: Optimiser) -> list[str]:
        """Register tenant descriptions (`finales db add tenant`); the uuids FINALES2 gave."""
        cmds = []
        for d in descriptions:
            f = self.root / f"tenant-{d['name']}.json"
            f.write_text(json.dumps(d))
            cmds.append(["db", "add", "tenant", "--input-filepath", str(f)])
        self.admin(*cmds)
        by_name = {t["name"]: str(t["tenant_uuid"]) for t in as_user.get("/tenants/")
                   if t.get("is_active", True)}
        return [by_name[d["name"]] for d in descriptions]

    def status_log(self, request_id: str) -> list[tuple[str, str]]:
        """(status, message) of every status change of a request, oldest first, read from
        the server's own database."""
        import sqlite3

        db = sqlite3.connect(self.root / "pkg" / "FINALES2" / "db" / "sql_app.db")
        try:
            rows = db.execute(
                "SELECT status, status_change_message FROM status_log_request "
                "WHERE request_uuid=? ORDER BY rowid",
                (request_id.replace("-", ""),)).fetchall()
        finally:
            db.close()
        return [(str(a), str(b)) for a, b in rows]

    def start(self) -> None:
        log = open(self.root / "server.out", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from FINALES2.cli.main import finales_cli; finales_cli()",
             "server", "start", "--ip", "127.0.0.1", "--port", str(self.port)],
            env=self.env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("FINALES2 server exited: "
                                   + (self.root / "server.out").read_text()[-2000:])
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 401:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("FINALES2 server did not come up in 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Optimiser:
    """An AI client of FINALES2: logs in and calls its endpoints (sync httpx)."""

    def __init__(self, url: str, username: str, password: str):
        self.http = httpx.Client(base_url=url, timeout=30)
        r = self.http.post("/user_management/authenticate",
                           data={"username": username, "password": password})
        r.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"

    def get(self, path: str, **params: Any) -> Any:
        r = self.http.get(path, params=params)
        r.raise_for_status()
        return r.json()

    def request(self, parameters: dict[str, Any], tenant_uuid: str,
                quantity: str = "conductivity", method: str = "two_electrode") -> str:
        r = self.http.post("/requests/", json={
            "quantity": quantity, "methods": [method], "parameters": {method: parameters},
            "tenant_uuid": tenant_uuid})
        r.raise_for_status()
        return str(r.json())

    def results(self) -> list[dict[str, Any]]:
        return list(self.get("/results_requested/"))

    def wait_result(self, request_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            res = self.get(f"/results_requested/{request_id}")
            if res:
                return dict(res)
            time.sleep(0.1)
        raise TimeoutError(f"no result for request {request_id} in {timeout_s} s")

    def close(self) -> None:
        self.http.close()


LIPF6 = {"SMILES": "[Li+].F[P-](F)(F)(F)(F)F", "InChIKey": "AXPLOJNSKRXQPA-UHFFFAOYSA-N"}
EC = {"SMILES": "C1COC(=O)O1", "InChIKey": "KMTRUDSVKNLOMY-UHFFFAOYSA-N"}
DMC = {"SMILES": "COC(=O)OC", "InChIKey": "IEJIGPNLZYLLBP-UHFFFAOYSA-N"}
EMC = {"SMILES": "CCOC(=O)OC", "InChIKey": "JBTWLSYIZRCDFO-UHFFFAOYSA-N"}


def formulation(*parts: tuple[dict[str, str], float],
                temperature: float | None = 298.15) -> dict[str, Any]:
    return {"formulation": [{"chemical": c, "fraction": f, "fraction_type": "molPerMol"}
                            for c, f in parts],
            "temperature": temperature}


#: 1.0 mol/kg LiPF6 in EC:DMC 1:1 by mass (FINALES2_schemas' example)
EXAMPLE_1M = formulation((LIPF6, 0.08178), (EC, 0.46432), (DMC, 0.45391))

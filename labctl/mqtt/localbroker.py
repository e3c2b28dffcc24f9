"""A private mosquitto broker on a free port, with a generated config in a folder of its
own, optional password file and ACL; it can be stopped (SIGKILL or SIGTERM) and restarted on
the same port. Used by the tests, `bench/bench_mqtt.py` and `examples/closed_loop.py --local`.

When mosquitto is missing this fails loudly (RuntimeError) rather than quietly doing without.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SHIPPED_ACL = ROOT / "config" / "mosquitto" / "acl"
SHIPPED_CONF = ROOT / "config" / "mosquitto" / "mosquitto.conf"


def shipped_lines(conf: Path = SHIPPED_CONF, *, tls: bool = False) -> list[str]:
    """The shipped mosquitto.conf's settings, one per line, comments dropped; with `tls`,
    the commented-out TLS listener block is taken as well (uncommented, as README says)."""
    out: list[str] = []
    in_tls = False
    for raw in conf.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#listener 8883"):
            in_tls = True
        if in_tls and line.startswith("#") and not line.startswith("# "):
            if tls:
                out.append(line[1:])
            continue
        in_tls = False
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _binary(name: str, default: str) -> str:
    found = shutil.which(name) or (default if os.path.exists(default) else None)
    if not found:
        raise RuntimeError(
            f"{name} not found: the MQTT tests need a real mosquitto broker "
            "(apt-get install mosquitto mosquitto-clients; .ci/run does this)"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MosquittoBroker:
    """`b = MosquittoBroker(tmp_path, users={"u": "pw"}, acl=SHIPPED_ACL); b.start()`."""

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        acl: Path | None = None,
        persistence: bool = True,
        nodelay: bool = True,
        port: int | None = None,
        shipped: bool = False,
        tls: dict[str, Path] | None = None,
    ):
        """`shipped`: the settings of config/mosquitto/mosquitto.conf, with only the port,
        file locations and logging changed; `tls`: {"ca", "cert", "key"} files for its TLS
        listener (on `tls_port`)."""
        self.binary = _binary("mosquitto", "/usr/sbin/mosquitto")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.users = users or {}
        self.acl = acl
        self.persistence = persistence
        self.nodelay = nodelay
        self.shipped = shipped
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = self.workdir / "mosquitto.conf"
        self.log = self.workdir / "mosquitto.log"
        self._write_config()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def _write_config(self) -> None:
        if self.shipped:
            self._write_shipped_config()
            return
        lines = [
            "per_listener_settings false",
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if self.users else 'true'}",
            f"set_tcp_nodelay {'true' if self.nodelay else 'false'}",
            "max_queued_messages 10000",
            "max_packet_size 4000000",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # keep write access to the temp folder
        if self.persistence:
            store = self.workdir / "store"
            store.mkdir(exist_ok=True)
            lines += ["persistence true", f"persistence_location {store}/",
                      "autosave_interval 1"]
        if self.users:
            lines.append(f"password_file {self._password_file()}")
        if self.acl is not None:
            lines.append(f"acl_file {self.acl}")
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _password_file(self) -> Path:
        """A password file made with mosquitto_passwd, as config/mosquitto/README.md says."""
        pwfile = self.workdir / "passwd"
        tool = _binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
        pwfile.unlink(missing_ok=True)
        for i, (user, password) in enumerate(self.users.items()):
            args = [tool, "-b", str(pwfile), user, password]
            if i == 0:
                args.insert(1, "-c")
            subprocess.run(args, check=True, capture_output=True)
        pwfile.chmod(0o600)
        return pwfile

    def _write_shipped_config(self) -> None:
        store = self.workdir / "store"
        store.mkdir(exist_ok=True)
        tls = self.tls or {}
        lines: list[str] = []
        for line in shipped_lines(tls=bool(self.tls)):
            key = line.partition(" ")[0]
            if line == "listener 1883 127.0.0.1":
                line = f"listener {self.port} 127.0.0.1"
            elif line == "listener 8883":
                line = f"listener {self.tls_port} 127.0.0.1"
            elif key in ("cafile", "certfile", "keyfile"):
                line = f"{key} {tls[{'cafile': 'ca', 'certfile': 'cert', 'keyfile': 'key'}[key]]}"
            elif key == "password_file":
                line = f"password_file {self._password_file()}"
            elif key == "acl_file":
                line = f"acl_file {self.acl or SHIPPED_ACL}"
            elif key == "persistence_location":
                line = f"persistence_location {store}/"
            elif key == "autosave_interval":
                line = "autosave_interval 1"
            elif key == "log_dest":
                line = f"log_dest file {self.log}"
            lines.append(line)
        lines.append("log_type information")
        if os.geteuid() == 0:
            lines.append("user root")  # keep write access to the temp folder
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGKILL simulates a crash (nothing saved since the last autosave)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()

    def restart(self, sig: int = signal.SIGKILL) -> None:
        self.stop(sig)
        self.start()

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

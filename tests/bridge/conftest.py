"""A real Mosquitto per test, on a free loopback port, built from the shipped config (plain, password+ACL, TLS)."""
from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONF = REPO / "firmware_bridge" / "mosquitto" / "edgegen.conf"
SHIPPED_ACL = REPO / "firmware_bridge" / "mosquitto" / "acl.example"
PASSWORDS = {"dev0": "pw-dev0", "dev1": "pw-dev1", "dev2": "pw-dev2", "alice": "pw-alice"}
READY_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when pytest dies, so no broker or device outlives a killed test run."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tls_files(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl CLI."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=edgegen test CA")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=edgegen-{name}")
        (folder / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return {k: str(folder / f) for k, f in (("cafile", "ca.crt"), ("server_cert", "server.crt"),
                                            ("server_key", "server.key"), ("certfile", "client.crt"),
                                            ("keyfile", "client.key"))}


class Broker:
    """A Mosquitto process; `restart()` keeps its port and persistence folder, so sessions survive."""

    def __init__(self, folder: Path, auth: bool = False, tls: dict[str, str] | None = None):
        self.folder, self.auth, self.tls = folder, auth, tls
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(self._config())

    def _config(self) -> str:
        # The shipped file's settings (nodelay, queue limits, persistence) minus what a test must own.
        owned = ("listener", "persistence_location", "allow_anonymous", "log_dest")
        lines = [line for line in SHIPPED_CONF.read_text().splitlines() if not line.startswith(owned)]
        lines += [f"persistence_location {self.folder}/", "log_dest stderr", f"listener {self.port} 127.0.0.1"]
        if os.geteuid() == 0:
            lines.append("user root")  # else Mosquitto drops to the `mosquitto` user, who cannot write our folder
        if self.auth:
            passwd = self.folder / "passwd"
            passwd.touch()
            for user, password in PASSWORDS.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
            lines += [f"password_file {passwd}", f"acl_file {SHIPPED_ACL}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            lines += [f"cafile {self.tls['cafile']}", f"certfile {self.tls['server_cert']}",
                      f"keyfile {self.tls['server_key']}", "require_certificate true"]
        return "\n".join(lines) + "\n"

    def start(self) -> Broker:
        ready = threading.Event()
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stderr=subprocess.PIPE, text=True,
                                     preexec_fn=die_with_parent)

        def read(stream) -> None:  # noqa: ANN001
            for line in stream:
                self.log.append(line.rstrip())
                if re.search(r"\brunning\b", line):
                    ready.set()

        threading.Thread(target=read, args=(self.proc.stderr,), daemon=True).start()
        if not ready.wait(READY_TIMEOUT_S):
            self.stop()
            raise RuntimeError("mosquitto did not start:\n" + "\n".join(self.log))
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM makes Mosquitto save its persistence file (sessions, queued messages) before exiting."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=READY_TIMEOUT_S)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def broker(tmp_path: Path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def auth_broker(tmp_path: Path):
    b = Broker(tmp_path / "broker", auth=True).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_broker(tmp_path: Path, tls_files: dict[str, str]):
    b = Broker(tmp_path / "broker", tls=tls_files).start()
    yield b
    b.stop()


def spawn(args: list[str], **kwargs) -> subprocess.Popen:  # noqa: ANN003
    """A child Python process that dies with the test process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, preexec_fn=die_with_parent, **kwargs)

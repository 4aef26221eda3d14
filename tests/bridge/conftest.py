"""A real Mosquitto per test, on a free loopback port, built from the shipped config (plain, password+ACL, TLS)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_bridge.local_broker import SHIPPED_ACL, LocalBroker, die_with_parent

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"dev0": "pw-dev0", "dev1": "pw-dev1", "dev2": "pw-dev2", "alice": "pw-alice"}


def make_tls_files(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl CLI."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=edgegen test CA")
    extensions = {"server": "subjectAltName=IP:127.0.0.1,DNS:localhost", "client": "extendedKeyUsage=clientAuth"}
    for name, ext in extensions.items():
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=edgegen-{name}")
        (folder / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return {k: str(folder / f) for k, f in (("cafile", "ca.crt"), ("server_cert", "server.crt"),
                                            ("server_key", "server.key"), ("certfile", "client.crt"),
                                            ("keyfile", "client.key"))}


@pytest.fixture
def broker(tmp_path: Path):
    b = LocalBroker(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def auth_broker(tmp_path: Path):
    """Passwords made with `mosquitto_passwd -b` and the shipped ACL example (users dev0-dev2, alice)."""
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user, password in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True)
    b = LocalBroker(tmp_path / "broker", [f"password_file {passwd}", f"acl_file {SHIPPED_ACL}"],
                    allow_anonymous=False).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_broker(tmp_path: Path, tls_files: dict[str, str]):
    b = LocalBroker(tmp_path / "broker", [f"cafile {tls_files['cafile']}", f"certfile {tls_files['server_cert']}",
                                          f"keyfile {tls_files['server_key']}", "require_certificate true"]).start()
    yield b
    b.stop()


def spawn(args: list[str], **kwargs) -> subprocess.Popen:
    """A child Python process that dies with the test process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(Path(__file__).parent)])}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, preexec_fn=die_with_parent, **kwargs)

"""A real Mosquitto per test, on a free loopback port, built from the shipped config (plain, password+ACL, TLS)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from bridge_helpers import PASSWORDS, make_tls_files
from local_broker import SHIPPED_ACL, LocalBroker


def stop_and_show_log(broker: LocalBroker) -> None:
    """Stop the broker; its log goes to the test's captured output, which pytest shows when the test failed."""
    broker.stop()
    print("\n".join(["mosquitto log:", *broker.log]))


@pytest.fixture
def broker(tmp_path: Path):
    b = LocalBroker(tmp_path / "broker").start()
    yield b
    stop_and_show_log(b)


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
    stop_and_show_log(b)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_broker(tmp_path: Path, tls_files: dict[str, str]):
    b = LocalBroker(tmp_path / "broker", [f"cafile {tls_files['cafile']}", f"certfile {tls_files['server_cert']}",
                                          f"keyfile {tls_files['server_key']}", "require_certificate true"]).start()
    yield b
    stop_and_show_log(b)

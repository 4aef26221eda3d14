"""A throwaway Mosquitto with the shipped settings (firmware_bridge/mosquitto/edgegen.conf) on a loopback port, for
benchmarks and tests (tests/conftest.py puts this folder on sys.path); not shipped: a board runs a real broker.

    broker = LocalBroker(Path("/tmp/mqtt")).start()   # ready once its log says `running` (~15 ms)
    ...
    broker.stop()
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import edgegen.firmware_bridge

_SHIPPED = Path(edgegen.firmware_bridge.__file__).parent / "mosquitto"
SHIPPED_CONF = _SHIPPED / "edgegen.conf"
SHIPPED_ACL = _SHIPPED / "acl.example"
READY_TIMEOUT_S = 10.0
# Debian installs the broker in /usr/sbin, which is not on a normal user's PATH.
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Lines of the shipped file that a throwaway broker sets itself.
_OWNED = ("listener", "persistence_location", "allow_anonymous", "log_dest")


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when its parent dies, so no broker outlives a killed test or benchmark."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalBroker:
    """A Mosquitto process; `restart()` keeps its port and persistence folder, so sessions survive it."""

    def __init__(self, folder: Path, extra_lines: list[str] | None = None, allow_anonymous: bool = True):
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []
        folder.mkdir(parents=True, exist_ok=True)
        lines = [line for line in SHIPPED_CONF.read_text().splitlines() if not line.startswith(_OWNED)]
        lines += [f"listener {self.port} 127.0.0.1", f"persistence_location {folder}/", "log_dest stderr",
                  f"allow_anonymous {str(allow_anonymous).lower()}"]
        if os.geteuid() == 0:
            lines.append("user root")  # else Mosquitto drops to the `mosquitto` user, who cannot write `folder`
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines + list(extra_lines or [])) + "\n")

    def start(self) -> LocalBroker:
        ready = threading.Event()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stderr=subprocess.PIPE, text=True,
                                     preexec_fn=die_with_parent)

        def read(stream) -> None:
            for line in stream:
                self.log.append(line.rstrip())
                if re.search(r"\brunning\b", line):  # needs `log_type information`
                    ready.set()

        threading.Thread(target=read, args=(self.proc.stderr,), daemon=True).start()
        if not ready.wait(READY_TIMEOUT_S):
            self.stop()
            raise RuntimeError("mosquitto did not start:\n" + "\n".join(self.log))
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM makes Mosquitto save its persistence file (sessions, queued messages) before it exits."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=READY_TIMEOUT_S)

    def restart(self) -> None:
        self.stop()
        self.start()

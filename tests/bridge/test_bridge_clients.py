"""The shipped clients against a real broker and device: the shell example, the umqtt client, `edgegen prompt`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bridge_fakes import expected_text
from bridge_helpers import REPO, running_device

from edgegen.firmware_bridge.connection import BrokerOptions

sys.path.insert(0, str(REPO / "firmware_bridge" / "clients"))  # where a board would have the reference client
from umqtt_client import EdgegenClient, EdgegenError

SHELL_CLIENT = REPO / "firmware_bridge" / "clients" / "prompt.sh"


@pytest.fixture
def options(broker) -> BrokerOptions:
    return BrokerOptions("127.0.0.1", broker.port)


def run_shell(options: BrokerOptions, prompt: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOST": options.host, "PORT": str(options.port), "MAX_TOKENS": "5", **env}
    return subprocess.run(["sh", str(SHELL_CLIENT), "dev1", prompt], capture_output=True, text=True, timeout=60,
                          check=False, env=env)


def test_shell_example_streams_and_answers_once(options: BrokerOptions) -> None:
    with running_device(options):
        streamed = run_shell(options, "shell says hi")
        assert streamed.returncode == 0, streamed.stderr
        assert streamed.stdout == expected_text("shell", 5) + "\n"
        oneshot = run_shell(options, "oneshot please", ONESHOT="1")
        assert oneshot.returncode == 0, oneshot.stderr
        answer = json.loads(oneshot.stdout)
        assert answer["type"] == "final" and answer["text"] == expected_text("oneshot", 5) and answer["chunks"] == 0


def test_umqtt_reference_client_over_mqtt_311(options: BrokerOptions) -> None:
    with running_device(options, pool="fleet"):
        client = EdgegenClient(options.host, "esp32-test", port=options.port, timeout_ms=30_000)
        client.connect()
        try:
            assert list(client.generate("tiny board", device="dev1", max_tokens=4)) == \
                [f"tiny-{i} " for i in range(4)]
            assert client.result["text"] == expected_text("tiny", 4)
            assert list(client.generate("pooled", pool="fleet", max_tokens=2, stream=False)) == \
                [expected_text("pooled", 2)]
            with pytest.raises(EdgegenError) as err:
                list(client.generate("too many", device="dev1", max_tokens=0))
            assert err.value.code == "invalid_sampling"
            with pytest.raises(EdgegenError) as err:
                list(client.generate("x" * 70_000, device="dev1"))
            assert err.value.code == "payload_too_large"
        finally:
            client.close()


def edgegen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgegen.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, check=False)


def test_edgegen_prompt_cli(options: BrokerOptions, tmp_path: Path) -> None:
    broker = f"{options.host}:{options.port}"
    with running_device(options):
        done = edgegen("prompt", "--broker", broker, "--device", "dev1", "--max-tokens", "3", "--stats", "cli hello")
        assert done.returncode == 0, done.stderr
        assert done.stdout == expected_text("cli", 3) + "\n"
        assert json.loads(done.stderr.strip().splitlines()[-1])["finish_reason"] == "length"
        image = edgegen("prompt", "--broker", broker, "--device", "dev1", "--image", "7", "-o", str(tmp_path / "x.png"))
        assert image.returncode == 2 and "error: unsupported:" in image.stderr
        bad = edgegen("prompt", "--broker", broker, "--device", "dev1", "--temperature", "-1", "hi")
        assert bad.returncode == 2 and "invalid_sampling" in bad.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--device-id", "dev1", "--broker", "localhost:notaport"], "HOST:PORT"),
    (["--device-id", "dev/1"], "device id 'dev/1'"),
    (["--device-id", "dev1", "--pool", "a+b"], "pool 'a+b'"),
    (["--device-id", "dev1", "--queue-size", "0"], "--queue-size"),
    (["--device-id", "dev1", "--parallel", "0"], "--parallel must be auto or from 1 to 8, got '0'"),
    (["--device-id", "dev1", "--parallel", "9"], "--parallel"),
    (["--device-id", "dev1", "--parallel", "many"], "--parallel"),
    (["--device-id", "dev1", "--http", "nope"], "--http 'nope' must be HOST:PORT"),
    (["--device-id", "dev1", "--http", "127.0.0.1:99999"], "--http '127.0.0.1:99999' must be HOST:PORT"),
])
def test_edgegen_serve_refuses_bad_arguments(args: list[str], message: str) -> None:
    done = edgegen("serve", *args)
    assert done.returncode == 2 and "edgegen serve: error: invalid_request:" in done.stderr and message in done.stderr


@pytest.mark.parametrize("args,message", [
    (["--listen", "nope"], "--listen 'nope' must be HOST:PORT"),
    (["--listen", "no-such-host.invalid:8080"], "cannot listen on no-such-host.invalid:8080"),
])
def test_edgegen_gateway_refuses_a_bad_listen_address(args: list[str], message: str) -> None:
    done = edgegen("gateway", *args, "--broker", "127.0.0.1:1")
    assert done.returncode == 2 and "edgegen gateway: error: invalid_request:" in done.stderr and message in done.stderr


def test_cli_reports_a_missing_broker(options: BrokerOptions) -> None:
    done = edgegen("prompt", "--broker", f"127.0.0.1:{options.port + 1 if options.port < 65535 else 1}",
                   "--device", "dev1", "hi")
    assert done.returncode == 2 and "connection_failed" in done.stderr



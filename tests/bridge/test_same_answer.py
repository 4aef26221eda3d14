"""One answer per input, the way users arrive: `edgegen generate` with the default (hand-written) kernels from an empty
graph cache and again warm, on 1 and 2 threads, on both shipped models; and `edgegen serve` before and after a
SIGKILL and restart. Greedy decoding: the token ids may depend on nothing but the file and the prompt.

Before the kernels summed every row in the same order whatever its batch, a cold run (prefill graph captured) and a
warm one (its check decoded the last prompt position again) answered differently after a few tokens."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from bridge_helpers import ChildProcess, connected_client

from edgegen.firmware_bridge.connection import BrokerOptions

pytestmark = pytest.mark.slow
PROMPTS = ["What is the capital of France?", "Name three things a microcontroller is good at."]
MAX_TOKENS = "24"


def generate(model: str, prompt: str, threads: int, cache: str) -> str:
    env = {**os.environ, "EDGEGEN_CACHE": cache}
    run = subprocess.run([sys.executable, "-m", "edgegen.cli", "generate", "--model", model, "--temperature", "0",
                          "--max-tokens", MAX_TOKENS, "--threads", str(threads), prompt],
                         capture_output=True, text=True, timeout=900, env=env, check=False)
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.parametrize("model", ["default", "gemma3-270m"])
def test_generate_answers_the_same_cold_and_warm_on_any_thread_count(model, tmp_path):
    for prompt in PROMPTS:
        answers = {}
        for threads in (1, 2):
            cache = str(tmp_path / f"cache-{threads}")  # empty for the first run of each thread count
            answers["cold", threads] = generate(model, prompt, threads, cache)
            answers["warm", threads] = generate(model, prompt, threads, cache)
        assert len(set(answers.values())) == 1, answers
        assert answers["cold", 1].strip()


def test_serve_answers_the_same_before_and_after_a_restart(broker, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEGEN_CACHE", str(tmp_path / "cache"))
    options = BrokerOptions("127.0.0.1", broker.port)
    serve = ChildProcess(["-m", "edgegen.cli", "serve", "--broker", f"127.0.0.1:{broker.port}", "--device-id", "same",
                          "--state-dir", str(tmp_path / "state")])
    try:
        texts = []
        for start in range(2):
            serve.wait_for(lambda words: words[:2] == ["edgegen", "serve:"], 900)
            with connected_client(options) as client:
                client.timeout_s = 900
                greedy = {"temperature": 0.0}
                texts.append([client.generate(p, device="same", max_tokens=int(MAX_TOKENS), sampling=greedy).text()
                              for p in PROMPTS])
            if start == 0:
                serve.kill()  # SIGKILL: the restart loads the graphs this run saved
                serve.start()
        assert texts[0] == texts[1] and all(t.strip() for t in texts[0]), texts
        local = [generate("default", p, 2, str(tmp_path / "cli-cache")) for p in PROMPTS]
        assert [t.strip() for t in local] == [t.strip() for t in texts[0]]  # the CLI and MQTT: the same text
    finally:
        serve.stop()

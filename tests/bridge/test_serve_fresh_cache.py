"""`edgegen serve` as a new user starts it: no backend flag, empty tinygrad and edgegen caches, prompts whose lengths
need kernels the warm-up did not compile (so they compile in the service's worker thread). On a fresh install every
request failed with `internal` here (tinygrad's kernel cache refused the worker thread)."""
from __future__ import annotations

import pytest
from bridge_helpers import ChildProcess, connected_client
from fresh_env import skip_unless_distinct

from edgegen.firmware_bridge.connection import BrokerOptions

START_TIMEOUT_S = 900.0
# Raw prompts (chat off) of about 5, 25 and 50 tokens: prefill buckets 16, 32 and 64.
PROMPTS = ["The capital of France is",
           ("Here is a list of the planets of the solar system, from the closest to the sun to the farthest, with a "
            "short note on each:"),
           ("A microcontroller is a small computer on a single integrated circuit. It contains one or more CPUs along "
            "with memory and programmable input and output peripherals. Microcontrollers are designed for embedded "
            "applications. In one sentence, the main advantage is")]


@pytest.mark.slow
@pytest.mark.parametrize("flags", [[], ["--device", "CL"], ["--device", "CPU"]], ids=["default", "CL", "CPU"])
def test_serve_answers_prompts_of_new_lengths_from_empty_caches(broker, tmp_path, monkeypatch, flags):
    if flags:
        skip_unless_distinct(flags[1])
    monkeypatch.delenv("DEV", raising=False)
    monkeypatch.delenv("EDGEGEN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    options = BrokerOptions("127.0.0.1", broker.port)
    serve = ChildProcess(["-m", "edgegen.cli", "serve", "--broker", f"127.0.0.1:{broker.port}", "--device-id", "fresh",
                          "--state-dir", str(tmp_path / "state"), *flags])
    try:
        serve.wait_for(lambda words: words[:2] == ["edgegen", "serve:"], START_TIMEOUT_S)
        with connected_client(options) as client:
            client.timeout_s = START_TIMEOUT_S
            texts = [client.generate(p, device="fresh", max_tokens=4, chat=False).text() for p in PROMPTS]
        assert serve.stop() == 0
    finally:
        serve.stop()
    assert all(t.strip() for t in texts), texts

"""End to end with the real SmolLM2 model behind `edgegen serve`: the answer over MQTT equals the runtime's own."""
from __future__ import annotations

import json
import threading

import pytest
from bridge_helpers import ChildProcess, connected_client

from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.connection import BrokerOptions
from edgegen.firmware_bridge.engines import RuntimeTextEngine
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.schema import TextRequest

PROMPT = "Name three rivers."
MAX_TOKENS = 8
START_TIMEOUT_S = 600.0  # loading the model; kernels compile on first use: minutes on 2 shared cores


@pytest.mark.slow
def test_real_model_round_trip_through_edgegen_serve(broker) -> None:
    options = BrokerOptions("127.0.0.1", broker.port)
    serve = ChildProcess(["-m", "edgegen.cli", "serve", "--broker", f"127.0.0.1:{broker.port}", "--device-id", "smol",
                          "--no-warmup"])
    try:
        serve.wait_for(lambda words: words[:2] == ["edgegen", "serve:"], START_TIMEOUT_S)
        with connected_client(options) as client:
            client.timeout_s = START_TIMEOUT_S
            stream = client.generate(PROMPT, device="smol", max_tokens=MAX_TOKENS)
            pieces = list(stream)
            engine = RuntimeTextEngine.load("default")  # for the direct call and token counts below
            # Too long as text (refused before queueing), and too long only once the chat template wraps it
            # (refused by the runtime before any compute): both are prompt_too_long, and the device goes on.
            context = engine.generator.config.max_context
            for n_tokens in (context + 10, context - 5):
                prompt = " hello" * n_tokens
                assert len(engine.generator.tokenizer.encode(prompt)) == n_tokens
                with pytest.raises(RequestError) as err:
                    client.generate(prompt, device="smol", max_tokens=4).text()
                assert err.value.code == ErrorCode.PROMPT_TOO_LONG
            again = client.generate(PROMPT, device="smol", max_tokens=MAX_TOKENS).text()
        assert serve.stop() == 0  # SIGTERM: a clean stop
    finally:
        serve.stop()
    result = stream.result
    assert len(pieces) >= 2 and all(pieces)
    assert "".join(pieces) == result["text"] == again
    assert result["finish_reason"] in ("stop", "length") and result["stats"]["completion_tokens"] <= MAX_TOKENS
    assert result["stats"]["ttft_ms"] > 0 and result["stats"]["prompt_tokens"] > 0
    # Greedy decoding: the direct call (no MQTT) gives the same text, in the same pieces.
    direct: list[str] = []
    outcome = engine.generate(TextRequest(id="direct", prompt=PROMPT, max_tokens=MAX_TOKENS), threading.Event(),
                              direct.append)
    assert direct == pieces and outcome.text == result["text"]
    assert retained_state(options, "smol") == "offline"


def retained_state(options: BrokerOptions, device: str) -> str:
    states: list[str] = []
    got = threading.Event()
    with connected_client(options) as client:
        def on_status(msg: object) -> None:
            states.append(json.loads(msg.payload)["state"])  # type: ignore[attr-defined]
            got.set()

        client.watch(topics.status(device), on_status)
        assert got.wait(10)
    return states[0]

"""End to end with the real SmolLM2 model: the answer over MQTT equals the runtime's own answer, token for token."""
from __future__ import annotations

import threading

import pytest
from helpers import connected_client

from firmware_bridge.connection import BrokerOptions
from firmware_bridge.engines import RuntimeTextEngine
from firmware_bridge.errors import ErrorCode, RequestError
from firmware_bridge.schema import TextRequest
from firmware_bridge.service import DeviceService, ServiceConfig

PROMPT = "Name three rivers."
MAX_TOKENS = 8


@pytest.mark.slow
def test_real_model_round_trip_over_mqtt(broker) -> None:
    engine = RuntimeTextEngine.load("default")
    options = BrokerOptions("127.0.0.1", broker.port)
    service = DeviceService(ServiceConfig("smol"), options, {"default": engine})
    service.start()
    try:
        assert service.wait_connected(10)
        with connected_client(options) as client:
            client.timeout_s = 600  # kernels compile on first use: minutes on 2 shared cores
            stream = client.generate(PROMPT, device="smol", max_tokens=MAX_TOKENS)
            pieces = list(stream)
            # Too long as text (refused before queueing), and too long only once the chat template wraps it
            # (refused by the runtime before any compute): both are prompt_too_long.
            context = engine.generator.config.max_context
            for n_tokens in (context + 10, context - 5):
                prompt = " hello" * n_tokens
                assert len(engine.generator.tokenizer.encode(prompt)) == n_tokens
                with pytest.raises(RequestError) as err:
                    client.generate(prompt, device="smol", max_tokens=4).text()
                assert err.value.code == ErrorCode.PROMPT_TOO_LONG
    finally:
        service.stop()
    result = stream.result
    assert len(pieces) >= 2 and all(pieces)
    assert "".join(pieces) == result["text"]
    assert result["finish_reason"] in ("stop", "length") and result["stats"]["completion_tokens"] <= MAX_TOKENS
    assert result["stats"]["ttft_ms"] > 0 and result["stats"]["prompt_tokens"] > 0
    # Greedy decoding: the direct call (no MQTT) gives the same text, in the same pieces.
    direct: list[str] = []
    outcome = engine.generate(TextRequest(id="direct", prompt=PROMPT, max_tokens=MAX_TOKENS), threading.Event(),
                              direct.append)
    assert direct == pieces and outcome.text == result["text"]

"""One answer per input, the way users arrive: `edgegen generate` with the default (hand-written) kernels from an empty
graph cache and again warm, on 1 and 2 threads, on both shipped models; and `edgegen serve` (continuous batching,
several slots) before and after a SIGKILL and restart, with requests one at a time and several at once. Greedy
decoding: the token ids may depend on nothing but the file and the prompt.

Before the kernels summed every row in the same order whatever its batch, a cold run (prefill graph captured) and a
warm one (its check decoded the last prompt position again) answered differently after a few tokens."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import jsonschema
import openai
import pytest
from bridge_helpers import ChildProcess, connected_client
from test_http_api import unused_port

from edgegen.firmware_bridge.connection import BrokerOptions

pytestmark = pytest.mark.slow
PROMPTS = ["What is the capital of France?", "Name three things a microcontroller is good at."]
# decoded beside PROMPTS when requests arrive together: other lengths, joining and leaving at other steps
CITY = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                        "country": {"type": "string", "maxLength": 40},
                                        "population": {"type": "integer", "minimum": 0, "maximum": 99999999}},
        "required": ["name", "country", "population"], "additionalProperties": False}
OTHERS = ["Hi", "Write one sentence about rivers and the sea, please.", "Count: one, two,"]
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


def read_together(streams: list) -> list[str]:
    """Each stream's text, every stream read on a thread of its own."""
    got: dict[int, str] = {}
    readers = [threading.Thread(target=lambda i=i, st=st: got.__setitem__(i, st.text()))
               for i, st in enumerate(streams)]
    for r in readers:
        r.start()
    for r in readers:
        r.join(900)
    return [got[i] for i in range(len(streams))]


def test_serve_answers_the_same_before_and_after_a_restart_alone_or_batched(broker, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEGEN_CACHE", str(tmp_path / "cache"))
    options = BrokerOptions("127.0.0.1", broker.port)
    http_port = unused_port()
    serve = ChildProcess(["-m", "edgegen.cli", "serve", "--broker", f"127.0.0.1:{broker.port}", "--device-id", "same",
                          "--state-dir", str(tmp_path / "state"), "--parallel", "4", "--http",
                          f"127.0.0.1:{http_port}"])
    greedy = {"temperature": 0.0}
    try:
        texts = []
        for start in range(2):
            words = serve.wait_for(lambda words: words[:2] == ["edgegen", "serve:"], 900)
            assert words[-3:] == ["4", "at", "once"], words
            with connected_client(options) as client:
                client.timeout_s = 900
                if start == 0:  # one at a time
                    texts.append([client.generate(p, device="same", max_tokens=int(MAX_TOKENS),
                                                  sampling=greedy).text() for p in PROMPTS])
                else:  # all at once, beside others: decoded in one batch of slots
                    streams = [client.generate(p, device="same", max_tokens=int(MAX_TOKENS), sampling=greedy)
                               for p in PROMPTS + OTHERS]
                    texts.append(read_together(streams)[:len(PROMPTS)])
                    api = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="-", timeout=900)
                    over_http = [api.chat.completions.create(model="default", messages=[{"role": "user", "content": p}],
                                                             max_tokens=int(MAX_TOKENS), temperature=0)
                                 for p in PROMPTS]
                    assert [c.choices[0].message.content for c in over_http] == texts[0]  # HTTP or MQTT: the same
                    structured = api.chat.completions.create(
                        model="default", messages=[{"role": "user", "content": "Describe Paris as JSON."}],
                        max_tokens=120, temperature=0, response_format={"type": "json_schema", "json_schema": {
                            "name": "city", "schema": CITY}})
                    jsonschema.validate(json.loads(structured.choices[0].message.content), CITY)  # always parses
                    sampled = [api.chat.completions.create(
                        model="default", messages=[{"role": "user", "content": PROMPTS[1]}], max_tokens=12,
                        temperature=0.9, top_p=0.9, seed=11).choices[0].message.content for _ in range(2)]
                    assert sampled[0] == sampled[1]  # a seed fixes a sampled answer
                    whole = texts[0][1]
                    stop = whole.split()[3]  # a word the greedy answer holds
                    cut = api.completions.create(model="default", prompt=PROMPTS[1], max_tokens=24, temperature=0,
                                                 stop=[stop])
                    assert stop not in cut.choices[0].text and cut.choices[0].finish_reason in ("stop", "length")
            if start == 0:
                serve.kill()  # SIGKILL, then a new process: nothing of the first run but the files on disk
                serve.start()
        assert texts[0] == texts[1] and all(t.strip() for t in texts[0]), texts
        local = [generate("default", p, 2, str(tmp_path / "cli-cache")) for p in PROMPTS]
        assert [t.strip() for t in local] == [t.strip() for t in texts[0]]  # the CLI and MQTT: the same text
    finally:
        serve.stop()

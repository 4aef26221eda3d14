"""Structured output (runtime.constrain): the token table read from the GGUF, and answers that always parse and
validate, driven here by random logits through the real sampler and llguidance (no model needed: any logits must
yield valid JSON), with SmolLM2's and Gemma 3's real tokenizers."""
from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from edgegen.runtime.artifact.reader import open_model
from edgegen.runtime.constrain import Grammars, SchemaError, token_bytes
from edgegen.runtime.errors import GenerationError
from edgegen.runtime.prompt import PromptEncoder
from edgegen.runtime.sampling import SamplingParams
from edgegen.runtime.sequence import Sequence
from edgegen.runtime.tokenizer import load_tokenizer

SCHEMAS = [
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                      "population": {"type": "integer", "minimum": 0, "maximum": 99999}},
     "required": ["city", "population"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "level": {"enum": ["low", "mid", "high"]},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 6},
                                               "maxItems": 3}},
     "required": ["ok", "level", "tags"], "additionalProperties": False},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {"x": {"type": "number"},
                                                                                "y": {"type": "number"}},
                                                "required": ["x", "y"], "additionalProperties": False}},
     "required": ["point"], "additionalProperties": False},
]


@pytest.fixture(scope="module", params=["default", "gemma3-270m"])
def model(request):
    mf = open_model(request.param)
    tok = load_tokenizer(mf)
    prompts = PromptEncoder(mf, tok, 1024)
    return mf, tok, Grammars(mf, tok, prompts.end_ids, len(token_bytes(mf)[0])), prompts.end_ids


def test_token_bytes_are_what_the_tokenizer_decodes(model):
    mf, tok, _, _ = model
    table, special = token_bytes(mf)
    text = "Hello, wörld! {\"a\": [1, 2.5]}  ünïcode ✓"
    ids = tok.encode(text, add_bos=False, add_eos=False)
    assert b"".join(table[i] for i in ids).decode() == text  # the bytes of each token, concatenated
    assert set(special).isdisjoint(ids) and len(table) == tok.vocab_size


@pytest.mark.parametrize("schema", SCHEMAS, ids=["city", "enum-array", "nested"])
def test_any_logits_give_json_that_validates(model, schema):
    mf, tok, grammars, end_ids = model
    rng = np.random.default_rng(0)
    for seed in range(3):
        params = SamplingParams(max_tokens=120, temperature=1.0, seed=seed, json_schema=json.dumps(schema))
        seq = Sequence([1], params, tok, end_ids, 1024, grammars.constraint(params.json_schema))
        text = ""
        while not seq.done:
            text += seq.advance(rng.standard_normal(tok.vocab_size).astype(np.float32) * 4)
            seq.stepped()
        assert seq.finish == "stop", (text, seq.finish)  # ended at the end of turn, the JSON complete
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("schema,needle", [
    ({"type": "object", "properties": {"a": {"type": "string", "format": "weird"}}}, "weird"),
    ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, "if"),
    ({"type": "nonsense"}, "nonsense"),
])
def test_what_cannot_be_enforced_is_refused_by_name(model, schema, needle):
    _, _, grammars, _ = model
    with pytest.raises(SchemaError, match=needle):
        grammars.grammar(json.dumps(schema))


def test_json_schema_must_be_a_json_object():
    for bad in ("[1]", "not json", "3"):
        with pytest.raises(GenerationError, match="json_schema"):
            SamplingParams(json_schema=bad)

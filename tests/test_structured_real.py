"""Structured output on the shipped models (SmolLM2, Gemma 3): 20 schemas, greedy and sampled, every answer parses
and validates (jsonschema), batched beside others as alone."""
from __future__ import annotations

import json

import jsonschema
import pytest

from edgegen.runtime import SamplingParams
from edgegen.runtime.engine import TextGenerator

pytestmark = pytest.mark.slow
# Numbers with ranges, and decimals with a multipleOf: a grammar allows endless digits (1000.000...), and a small
# model decoding greedily loops on them until max_tokens (docs/HTTP.md)
STR, BOOL = {"type": "string", "maxLength": 24}, {"type": "boolean"}
INT = {"type": "integer", "minimum": 0, "maximum": 999}
NUM = {"type": "number", "minimum": -1000, "maximum": 1000, "multipleOf": 0.01}


def obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False}


SCHEMAS: list[tuple[str, dict]] = [
    ("A city and its country.", obj({"city": STR, "country": STR})),
    ("A person.", obj({"name": STR, "age": {"type": "integer", "minimum": 0, "maximum": 120}})),
    ("A product with a price.", obj({"product": STR, "price": {"type": "number", "minimum": 0, "maximum": 1000,
                                                               "multipleOf": 0.01}})),
    ("Is the sky blue?", obj({"answer": BOOL})),
    ("Pick a color.", obj({"color": {"enum": ["red", "green", "blue"]}})),
    ("Three fruits.", obj({"fruits": {"type": "array", "items": STR, "minItems": 3, "maxItems": 3}})),
    ("Up to two hobbies.", obj({"hobbies": {"type": "array", "items": STR, "maxItems": 2}})),
    ("A point.", obj({"point": obj({"x": NUM, "y": NUM})})),
    ("A book with an optional subtitle.", obj({"title": STR, "subtitle": STR}, required=["title"])),
    ("A rating from 1 to 5.", obj({"stars": {"type": "integer", "minimum": 1, "maximum": 5}})),
    ("A temperature reading.", obj({"celsius": {"type": "number", "minimum": -50, "maximum": 60, "multipleOf": 0.1},
                                    "city": STR})),
    ("A shopping list.", obj({"items": {"type": "array", "maxItems": 3, "items": obj({"name": STR, "qty": INT})}})),
    ("A date.", obj({"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}})),
    ("A greeting in a language.", obj({"language": {"enum": ["en", "fr", "de"]}, "text": STR})),
    ("A yes or no with a reason.", obj({"ok": BOOL, "reason": STR})),
    ("A team of people.", obj({"team": STR, "members": {"type": "array", "maxItems": 2, "items": obj({"name": STR})}})),
    ("A version number.", obj({"major": INT, "minor": INT, "patch": INT})),
    ("A list of numbers.", obj({"values": {"type": "array", "items": NUM, "minItems": 1, "maxItems": 4}})),
    ("A nested address.", obj({"name": STR, "address": obj({"street": STR, "zip": {"type": "string",
                                                                                 "pattern": "^[0-9]{5}$"}})})),
    ("A status code.", obj({"code": {"type": "integer", "enum": [200, 404, 500]}, "message": STR})),
]


@pytest.fixture(scope="module", params=["default", "gemma3-270m"])
def gen(request):
    return TextGenerator.load(request.param)


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_every_answer_parses_and_validates(gen, sampled):
    assert len(SCHEMAS) >= 20
    batch = gen.batched(4)
    try:
        streams = [batch.stream(f"{prompt} Answer in JSON.", SamplingParams(
            max_tokens=160, temperature=0.8 if sampled else 0.0, seed=i, json_schema=json.dumps(schema)))
            for i, (prompt, schema) in enumerate(SCHEMAS)]
        results = [s.finish() for s in streams]
    finally:
        batch.close()
    for (prompt, schema), r in zip(SCHEMAS, results):
        assert r.finish_reason == "stop", (prompt, r.text)
        jsonschema.validate(json.loads(r.text), schema)
    if not sampled:  # the same tokens alone as beside 3 others
        prompt, schema = SCHEMAS[7]
        alone = gen.generate(f"{prompt} Answer in JSON.",
                             SamplingParams(max_tokens=160, json_schema=json.dumps(schema)))
        assert alone.text == results[7].text

"""Structured outputs on the HF engine (tiny-llama: random weights, so only the grammar makes
its output well formed): every document valid, each sequence of a batch with its own grammar or
none, grammars compiled once."""

from __future__ import annotations

import asyncio
import json
import random
import re

import jsonschema

from tests.unit.engine_hf.helpers import collect, request

MODEL = "tiny-llama"


def _leaf(rng: random.Random) -> dict:
    kind = rng.choice(["string", "integer", "boolean", "enum"])
    if kind == "string":
        return {"type": "string", "maxLength": rng.randint(1, 8)}
    if kind == "integer":
        return {"type": "integer", "minimum": -50, "maximum": rng.randint(0, 5000)}
    if kind == "boolean":
        return {"type": "boolean"}
    return {"enum": rng.sample(["red", "green", "blue", 1, 2, True, None], rng.randint(1, 4))}


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """Objects (every property required), arrays and bounded leaves, up to three levels."""
    roll = rng.random()
    if depth >= 2 or roll < 0.3:
        return _leaf(rng)
    if roll < 0.5:
        return {
            "type": "array",
            "items": random_schema(rng, depth + 1),
            "minItems": 1,
            "maxItems": 3,
        }
    properties = {f"f{i}_{rng.randint(0, 99)}": random_schema(rng, depth + 1) for i in range(4)}
    properties = dict(list(properties.items())[: rng.randint(1, 4)])
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _json(schema: dict, **options) -> dict:
    return {"structured_outputs": {"json": schema, **options}}


async def test_fifty_random_schemas_all_yield_valid_documents(engine):
    served = await engine(MODEL)
    rng = random.Random(7)
    schemas = [
        {
            "type": "object",
            "properties": {"root": random_schema(rng)},
            "required": ["root"],
            "additionalProperties": False,
        }
        for _ in range(50)
    ]
    # A random-weight model fills free whitespace forever (so would vLLM's); JSON without it.
    generations = await asyncio.gather(
        *(
            collect(
                served,
                request(
                    MODEL,
                    "Give JSON",
                    max_tokens=256,
                    extra=_json(schema, disable_any_whitespace=True),
                ),
            )
            for schema in schemas
        )
    )
    for schema, generation in zip(schemas, generations, strict=True):
        assert generation.finish_reason == "stop", generation.text
        jsonschema.validate(json.loads(generation.text), schema)


async def test_each_sequence_has_its_own_grammar_or_none(engine):
    served = await engine(MODEL)
    alone = await collect(served, request(MODEL, "The sea", max_tokens=12))
    regex = r"[0-9]{3}-[a-z]{2}"
    mixed = await asyncio.gather(
        collect(served, request(MODEL, "The sea", max_tokens=12)),
        collect(served, request(MODEL, "Code:", max_tokens=12, extra={"guided_regex": regex})),
        collect(
            served,
            request(
                MODEL,
                "Pick",
                max_tokens=12,
                extra={"structured_outputs": {"choice": ["yes", "no", "maybe so"]}},
            ),
        ),
    )
    assert mixed[0].ids == alone.ids  # an unconstrained row is untouched by its neighbours
    assert re.fullmatch(regex, mixed[1].text) and mixed[1].finish_reason == "stop"
    assert mixed[2].text in ("yes", "no", "maybe so")


async def test_streamed_deltas_join_to_a_valid_document(engine):
    served = await engine(MODEL)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 6}, "ok": {"type": "boolean"}},
        "required": ["name", "ok"],
    }
    generation = await collect(
        served,
        request(MODEL, "JSON:", max_tokens=60, extra=_json(schema, disable_any_whitespace=True)),
    )
    assert len(generation.deltas) > 1
    jsonschema.validate(json.loads(generation.text), schema)


async def test_a_schema_is_compiled_once(engine):
    served = await engine(MODEL)
    schema = {
        "type": "object",
        "properties": {"cached": {"type": "boolean"}},
        "required": ["cached"],
    }
    await collect(served, request(MODEL, "a", max_tokens=8, extra=_json(schema)))
    compiled = served._grammars.compiled_count
    same = dict(reversed(list(schema.items())))  # the same schema, keys in another order
    await collect(served, request(MODEL, "b", max_tokens=8, extra=_json(same)))
    assert served._grammars.compiled_count == compiled

"""Bad generation requests are InvalidArgument naming what was wrong; LoRA adapters as models."""

from __future__ import annotations

import asyncio

import pytest
import torch

from services.common.errors import InvalidArgument, NotFound
from tests.unit.engine_hf.helpers import collect, request


@pytest.mark.parametrize(
    "sampling,message",
    [
        ({"extra": {"logit_bias": {"1": 2}}}, "'logit_bias' is not supported"),
        ({"extra": {"guided_json": {}, "guided_regex": "a"}}, "exactly one"),
        ({"extra": {"guided_regex": "(["}}, "'structured_outputs.regex' does not compile"),
        ({"extra": {"structured_outputs": {"json": {"type": "objectx"}}}}, "does not compile"),
        ({"extra": {"structured_outputs": {"json": "{"}}}, "not valid JSON"),
        ({"extra": {"structured_outputs": {"choice": []}}}, "'structured_outputs.choice'"),
        ({"extra": {"structured_outputs": {"structural_tag": "x"}}}, "not supported"),
        ({"extra": {"structured_outputs": 3}}, "must be a JSON object"),
        ({"top_k": -3}, "'top_k'"),
        ({"min_p": 1.5}, "'min_p'"),
        ({"repetition_penalty": 0.0}, "'repetition_penalty'"),
        ({"presence_penalty": 3.0}, "'presence_penalty'"),
        ({"logprobs": 50}, "'logprobs'"),
        ({"min_tokens": 9, "max_tokens": 4}, "'min_tokens'"),
        ({"stop_token_ids": [10**7]}, "'stop_token_ids'"),
        ({"n": 1000}, "'n'"),
    ],
)
async def test_unsupported_or_bad_sampling_is_named(engine, sampling, message):
    served = await engine("tiny-llama")
    with pytest.raises(InvalidArgument, match=message):
        await collect(served, request("tiny-llama", "hello", **sampling))


async def test_context_overflow_names_prompt_max_tokens_and_limit(engine):
    served = await engine("tiny-llama")
    with pytest.raises(InvalidArgument) as caught:
        await collect(served, request("tiny-llama", "hello there", max_tokens=600))
    message = caught.value.message
    assert (
        "max_tokens is 600" in message
        and "context length of 512" in message
        and "prompt has" in message
    )
    with pytest.raises(InvalidArgument, match="outside the vocabulary"):
        await collect(served, request("tiny-llama", [1, 2, 10**6]))


async def test_max_tokens_none_fills_the_context(engine):
    served = await engine("tiny-llama")
    got = await collect(served, request("tiny-llama", [1] * 500, max_tokens=None, ignore_eos=True))
    assert got.finish_reason == "length" and len(got.ids) == 12


async def test_min_tokens_bans_stop_tokens_until_reached(engine):
    served = await engine("tiny-llama")
    plain = await collect(served, request("tiny-llama", "x", max_tokens=12, ignore_eos=True))
    first = plain.ids[0]
    stopped = await collect(
        served, request("tiny-llama", "x", max_tokens=12, ignore_eos=True, stop_token_ids=[first])
    )
    assert stopped.ids == [first] and stopped.finish_reason == "stop"
    held = await collect(
        served,
        request(
            "tiny-llama", "x", max_tokens=12, ignore_eos=True, stop_token_ids=[first], min_tokens=4
        ),
    )
    assert len(held.ids) >= 4 and first not in held.ids[:4]


async def test_lora_adapter_is_its_own_model(engine, reference, model_path):
    served = await engine("tiny-llama", max_batch_wait_ms=20.0)
    await served.load_adapter("tiny-lora", model_path("tiny-llama-lora"))
    assert [m.name for m in served.models()] == ["tiny-llama", "tiny-lora"]
    assert served.models()[1].base_model == "tiny-llama"
    loaded, tokenizer = reference("tiny-llama", "AutoModelForCausalLM")
    ids = tokenizer("Hello there", return_tensors="pt")["input_ids"]
    with_adapter = (
        type(loaded).from_pretrained(model_path("tiny-llama"), dtype=torch.float32).eval()
    )
    with_adapter.load_adapter(model_path("tiny-llama-lora"), adapter_name="a")
    with torch.inference_mode():
        expected_lora = with_adapter.generate(
            ids, do_sample=False, max_new_tokens=12, min_new_tokens=12
        )[0, ids.shape[1] :]
        expected_base = loaded.generate(ids, do_sample=False, max_new_tokens=12, min_new_tokens=12)[
            0, ids.shape[1] :
        ]
    base, lora = await asyncio.gather(
        collect(served, request("tiny-llama", "Hello there", max_tokens=12, ignore_eos=True)),
        collect(served, request("tiny-lora", "Hello there", max_tokens=12, ignore_eos=True)),
    )
    assert lora.ids == expected_lora.tolist() and base.ids == expected_base.tolist()
    assert lora.ids != base.ids
    await served.unload_adapter("tiny-lora")
    with pytest.raises(NotFound):
        await collect(served, request("tiny-lora", "Hello there", max_tokens=2))
    with pytest.raises(InvalidArgument, match="adapter_config.json"):
        await served.load_adapter("broken", model_path("tiny-llama"))

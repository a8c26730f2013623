"""Generation in process: parity with `generate`, batching, admission between steps,
cancellation."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tests.helpers.metrics import poll
from tests.unit.engine_hf.helpers import collect, request

PROMPTS = [
    "Hello there, how are",
    "The city of Paris is a wonderful place to visit in the spring when",
    "A",
    "Alice and Bob went to London on Tuesday",
    "Maria Garcia said the food was delicious",
]


def _reference_greedy(
    reference, model: str, auto_class: str, prompt: str, max_new_tokens: int, **kwargs
):
    loaded, tokenizer = reference(model, auto_class)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = loaded.generate(ids, do_sample=False, max_new_tokens=max_new_tokens, **kwargs)
    generated = out[0, 1:] if loaded.config.is_encoder_decoder else out[0, ids.shape[1] :]
    return generated.tolist()


@pytest.mark.parametrize(
    "model,auto_class",
    [("tiny-llama", "AutoModelForCausalLM"), ("tiny-t5", "AutoModelForSeq2SeqLM")],
)
async def test_greedy_tokens_equal_transformers_generate(engine, reference, model, auto_class):
    served = await engine(model)
    for prompt in PROMPTS[:3]:
        expected = _reference_greedy(reference, model, auto_class, prompt, 24)
        got = await collect(served, request(model, prompt, max_tokens=24))
        assert got.ids == expected


async def test_repetition_penalty_equals_transformers(engine, reference):
    served = await engine("tiny-llama")
    expected = _reference_greedy(
        reference, "tiny-llama", "AutoModelForCausalLM", PROMPTS[1], 24, repetition_penalty=1.3
    )
    plain = await collect(served, request("tiny-llama", PROMPTS[1], max_tokens=24))
    got = await collect(
        served, request("tiny-llama", PROMPTS[1], max_tokens=24, repetition_penalty=1.3)
    )
    assert got.ids == expected and got.ids != plain.ids


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-t5"])
async def test_concurrent_and_staggered_requests_equal_their_solo_runs(engine, model):
    served = await engine(model, max_batch_wait_ms=20.0)
    solo = [
        await collect(served, request(model, p, max_tokens=16 + 4 * i))
        for i, p in enumerate(PROMPTS)
    ]
    steps_before = served._scheduler.steps

    async def staggered(i: int, prompt: str):
        await asyncio.sleep(0.002 * i)  # arrival order only; results are checked, not timing
        return await collect(served, request(model, prompt, max_tokens=16 + 4 * i))

    together = await asyncio.gather(*(staggered(i, p) for i, p in enumerate(PROMPTS)))
    assert [g.ids for g in together] == [g.ids for g in solo]
    assert [g.text for g in together] == [g.text for g in solo]
    tokens = sum(len(g.ids) for g in together)
    assert served._scheduler.steps - steps_before < tokens / 2


async def test_new_request_joins_a_running_batch(engine):
    served = await engine("tiny-llama")
    long = served.generate(request("tiny-llama", PROMPTS[1], max_tokens=300, ignore_eos=True))
    first = await long.__anext__()
    assert first.num_output_tokens == 1
    short = await collect(served, request("tiny-llama", PROMPTS[0], max_tokens=5, ignore_eos=True))
    assert short.finish_reason == "length" and len(short.ids) == 5
    rest = [d async for d in long]
    # The short request was admitted and finished while the long one was still decoding.
    assert rest[-1].num_output_tokens == 300
    assert served._scheduler.steps >= 300


async def test_abort_leaves_the_batch_within_one_step(engine):
    served = await engine("tiny-llama")
    scheduler = served._scheduler
    victim = request("tiny-llama", PROMPTS[0], max_tokens=400, ignore_eos=True)
    bystander = asyncio.ensure_future(
        collect(served, request("tiny-llama", PROMPTS[3], max_tokens=60, ignore_eos=True))
    )
    stream = served.generate(victim)
    for _ in range(5):
        await stream.__anext__()
    steps_at_abort = scheduler.steps
    await served.abort(victim.request_id)
    rest = [d async for d in stream]
    assert rest[-1].finish_reason == "abort"
    assert scheduler.steps - steps_at_abort <= 1
    assert rest[-1].num_output_tokens < 10
    survivor = await bystander
    assert survivor.finish_reason == "length" and len(survivor.ids) == 60


async def test_cancelled_consumer_aborts_its_sequences(engine):
    served = await engine("tiny-llama")
    started = asyncio.Event()

    async def consume():
        async for _ in served.generate(
            request("tiny-llama", PROMPTS[2], max_tokens=400, ignore_eos=True, n=2)
        ):
            started.set()

    task = asyncio.ensure_future(consume())
    await started.wait()
    assert await poll(
        lambda: served._scheduler._active_rows() == 2, 10
    )  # deltas can overtake the lane update
    steps_at_cancel = served._scheduler.steps
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await poll(lambda: served._scheduler._active_rows() == 0, 10)
    assert served._scheduler.steps - steps_at_cancel <= 2


async def test_seeded_sampling_is_reproducible_whatever_the_batch(engine):
    served = await engine("tiny-llama", max_batch_wait_ms=20.0)
    params = dict(max_tokens=20, temperature=1.0, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    alone = await collect(served, request("tiny-llama", PROMPTS[0], **params))
    crowd = await asyncio.gather(
        collect(served, request("tiny-llama", PROMPTS[0], **params)),
        *(
            collect(served, request("tiny-llama", p, max_tokens=20, temperature=1.0))
            for p in PROMPTS[1:]
        ),
    )
    other_seed = await collect(served, request("tiny-llama", PROMPTS[0], **{**params, "seed": 99}))
    assert crowd[0].ids == alone.ids
    assert other_seed.ids != alone.ids


async def test_stop_strings_cut_the_text(engine):
    served = await engine("tiny-llama")
    full = await collect(served, request("tiny-llama", PROMPTS[3], max_tokens=30, ignore_eos=True))
    words = [w for w in full.text.split(" ") if len(w) >= 3 and "\ufffd" not in w]
    stop = words[len(words) // 2]
    cut = await collect(
        served, request("tiny-llama", PROMPTS[3], max_tokens=30, ignore_eos=True, stop=[stop])
    )
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    kept = await collect(
        served,
        request(
            "tiny-llama",
            PROMPTS[3],
            max_tokens=30,
            ignore_eos=True,
            stop=[stop],
            include_stop_str_in_output=True,
        ),
    )
    assert kept.text == full.text[: full.text.index(stop) + len(stop)]


async def test_stop_token_ids_and_max_tokens(engine):
    served = await engine("tiny-llama")
    full = await collect(served, request("tiny-llama", PROMPTS[4], max_tokens=20, ignore_eos=True))
    assert full.finish_reason == "length" and len(full.ids) == 20
    target = full.ids[6]
    stopped = await collect(
        served,
        request("tiny-llama", PROMPTS[4], max_tokens=20, ignore_eos=True, stop_token_ids=[target]),
    )
    assert stopped.finish_reason == "stop"
    assert stopped.ids == full.ids[: full.ids.index(target) + 1]


async def test_text_deltas_concatenate_to_the_decoded_output(engine, reference):
    _, tokenizer = reference("tiny-llama", "AutoModelForCausalLM")
    served = await engine("tiny-llama")
    got = await collect(
        served,
        request("tiny-llama", PROMPTS[1], max_tokens=80, temperature=1.0, seed=5, ignore_eos=True),
    )
    assert got.text == tokenizer.decode(got.ids, skip_special_tokens=True)


async def test_logprobs_are_those_of_the_model(engine, reference):
    loaded, tokenizer = reference("tiny-llama", "AutoModelForCausalLM")
    ids = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        expected = torch.log_softmax(loaded(ids).logits[0, -1].float(), -1)
    served = await engine("tiny-llama")
    got = await collect(served, request("tiny-llama", PROMPTS[0], max_tokens=1, logprobs=3))
    delta = got.deltas[0]
    token = delta.token_ids[0]
    assert token == int(expected.argmax())
    assert delta.logprobs[0] == pytest.approx(float(expected[token]), abs=1e-5)
    top = delta.top_logprobs[0]
    assert list(top) == torch.topk(expected, 3).indices.tolist()


async def test_n_sequences_each_finish(engine):
    served = await engine("tiny-llama")
    req = request(
        "tiny-llama", PROMPTS[0], max_tokens=8, temperature=1.0, seed=3, n=3, ignore_eos=True
    )
    deltas = [d async for d in served.generate(req)]
    finals = [d for d in deltas if d.finish_reason]
    assert sorted(d.index for d in finals) == [0, 1, 2]
    assert all(d.num_output_tokens == 8 for d in finals)
    outputs = {i: tuple(t for d in deltas if d.index == i for t in d.token_ids) for i in range(3)}
    assert len(set(outputs.values())) > 1


async def test_input_ids_prompt_matches_text_prompt(engine, reference):
    _, tokenizer = reference("tiny-llama", "AutoModelForCausalLM")
    served = await engine("tiny-llama")
    by_text = await collect(served, request("tiny-llama", PROMPTS[1], max_tokens=10))
    by_ids = await collect(
        served, request("tiny-llama", tokenizer(PROMPTS[1])["input_ids"], max_tokens=10)
    )
    assert (
        by_ids.ids == by_text.ids
        and by_ids.deltas[-1].num_input_tokens == by_text.deltas[-1].num_input_tokens
    )

"""Structured outputs: what constrained decoding costs, on both engines.

    python bench/structured.py [--engines hf,vllm] [--rounds 3] [--batch 8] [--tokens 64]

SmolLM2-135M-Instruct (float32) in process, a batch of `--batch` concurrent chat-style prompts,
`--tokens` new tokens each (temperature 0): without a constraint (ignore_eos, so every sequence
runs to the end) and with a JSON schema whose one long string field lets the model write freely,
so a grammar mask is computed for every token of every sequence and no sequence ends early.
Rounds alternate the two modes, so load from elsewhere on the machine hits both alike. Prints
tokens/s per mode, the ratio, and the grammar compile time of a typical schema (xgrammar, first
compile and cached).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from services.common.engine import GenerateRequest, SamplingParams  # noqa: E402
from services.models.cache import ensure_model  # noqa: E402

# One long string: the grammar is live for every token and no sequence can end early, so both
# modes generate exactly --tokens tokens per sequence.
FREE_TEXT = {
    "type": "object",
    "properties": {"story": {"type": "string", "minLength": 2000}},
    "required": ["story"],
}
TYPICAL = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["city"],
        },
    },
    "required": ["name", "age", "address"],
}
TOPICS = ["the sea", "a robot", "autumn", "a lighthouse", "coffee", "mountains", "a train", "moon"]


def make_engine(kind: str, folder: str):
    if kind == "hf":
        from services.engine_hf.core import HFEngine
        from services.engine_hf.settings import HFEngineSettings

        return HFEngine(HFEngineSettings(model_dir=folder, model_name="smol", max_model_len=1024))
    from services.engine_vllm.core import VLLMEngine
    from services.engine_vllm.settings import build_config

    config = build_config(
        ["--model_dir", folder, "--model_name", "smol", "--max_model_len", "1024"]
    )
    return VLLMEngine(config)


async def one(engine, prompt: str, tokens: int, constrained: bool) -> int:
    extra = {"structured_outputs": {"json": FREE_TEXT}} if constrained else {}
    params = SamplingParams(
        max_tokens=tokens, temperature=0.0, ignore_eos=not constrained, extra=extra
    )
    request = GenerateRequest(uuid.uuid4().hex, "smol", params, prompt=prompt)
    count = 0
    async for delta in engine.generate(request):
        count += len(delta.token_ids)
    return count


async def batch(engine, args: argparse.Namespace, constrained: bool) -> tuple[int, float]:
    prompts = [f"Write a short story about {TOPICS[i % len(TOPICS)]}." for i in range(args.batch)]
    start = time.perf_counter()
    counts = await asyncio.gather(*(one(engine, p, args.tokens, constrained) for p in prompts))
    return sum(counts), time.perf_counter() - start


async def bench_engine(kind: str, folder: str, args: argparse.Namespace) -> list[str]:
    engine = make_engine(kind, folder)
    await engine.start()
    try:
        await batch(engine, args, False)  # warm-up, both modes
        await batch(engine, args, True)
        totals = {False: [0, 0.0], True: [0, 0.0]}
        for _ in range(args.rounds):
            for constrained in (False, True):
                tokens, seconds = await batch(engine, args, constrained)
                totals[constrained][0] += tokens
                totals[constrained][1] += seconds
    finally:
        await engine.shutdown()
    plain = totals[False][0] / totals[False][1]
    schema = totals[True][0] / totals[True][1]
    return [
        f"| {kind} | {args.batch} | {plain:8.1f} | {schema:8.1f} | {schema / plain:5.2f}x | "
        f"{totals[True][0] / (args.rounds * args.batch):5.1f} |"
    ]


def compile_times(folder: str) -> str:
    import xgrammar as xgr
    from transformers import AutoTokenizer

    from services.engine_hf.grammar import xgr_json_grammar

    tokenizer = AutoTokenizer.from_pretrained(folder)
    start = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
    tokenizer_ms = (time.perf_counter() - start) * 1000
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    text = json.dumps(TYPICAL, sort_keys=True)
    start = time.perf_counter()
    compiler.compile_grammar(xgr_json_grammar(text, True, strict=True))
    first_ms = (time.perf_counter() - start) * 1000
    return (
        f"grammar compile (xgrammar, typical 5-field schema): {first_ms:.1f} ms first, "
        f"0 after (cached by the engine); tokenizer table, once per model: {tokenizer_ms:.0f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so that the services this bench started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", default="hf,vllm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args(argv)
    folder = str(ensure_model("smollm2-135m-instruct"))
    print("| engine | batch | tok/s plain | tok/s schema | schema/plain | tokens/seq (schema) |")
    print("|---|---|---|---|---|---|")
    for kind in args.engines.split(","):
        print("\n".join(asyncio.run(bench_engine(kind, folder, args))), flush=True)
    print(compile_times(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

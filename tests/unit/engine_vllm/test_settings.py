"""Command line → settings + vLLM engine args: KServe flags ours, every other flag vLLM's."""

from __future__ import annotations

import pytest

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.engine_vllm.settings import (
    LoraModule,
    build_config,
    parse_lora_module,
    split_argv,
    vllm_dtype_arg,
)

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


def test_split_keeps_our_flags_and_passes_the_rest_through():
    ours, rest = split_argv(
        [
            "--model_dir",
            "/m",
            "--max_length",
            "256",
            "--enable-lora",
            "--max-lora-rank",
            "8",
            "--trust-remote-code",
            "--lora-modules",
            "a=/x",
            "b=/y",
            "--kv-cache-dtype",
            "auto",
            "--port=5",
            "--tokenizer",
            "/tok",
        ]
    )
    assert ours == [
        "--model_dir",
        "/m",
        "--max_length",
        "256",
        "--trust-remote-code",
        "--lora-modules",
        "a=/x",
        "b=/y",
        "--port=5",
    ]
    assert rest == [
        "--enable-lora",
        "--max-lora-rank",
        "8",
        "--kv-cache-dtype",
        "auto",
        "--tokenizer",
        "/tok",
    ]


def test_vllm_prefixes_of_our_flags_are_not_ours():
    # argparse prefix matching would read vLLM's --tokenizer as our --tokenizer_revision.
    ours, rest = split_argv(["--tokenizer", "/tok", "--model", "/m"])
    assert ours == [] and rest == ["--tokenizer", "/tok", "--model", "/m"]


def test_build_config_maps_kserve_flags_and_passes_vllm_args(model_path):
    folder = model_path("tiny-llama")
    config = build_config(
        [
            "--model_dir",
            folder,
            "--model_name",
            "tiny",
            "--max_length",
            "384",
            "--enforce-eager",
            "--max-num-seqs",
            "7",
            "--kv-cache-dtype",
            "auto",
            "--enable-prefix-caching",
            "--disable_log_requests",
        ],
        on_cpu=True,
    )
    args = config.engine_args
    assert config.task is Task.TEXT_GENERATION
    assert config.served_name == "tiny"
    assert args.model == folder and args.served_model_name == ["tiny"]
    assert args.max_model_len == 384
    assert args.dtype == "float32"  # auto on CPU (DESIGN.md §8)
    assert args.enforce_eager is True and args.max_num_seqs == 7
    assert args.enable_prefix_caching is True and args.enable_log_requests is False
    assert args.runner == "generate"
    assert not args.enable_lora


def test_lora_modules_enable_lora(model_path):
    folder, adapter = model_path("tiny-llama"), model_path("tiny-llama-lora")
    config = build_config(
        ["--model_dir", folder, "--lora-modules", f"ad={adapter}", "--max-lora-rank", "8"],
        on_cpu=True,
    )
    assert config.lora_modules == [LoraModule("ad", adapter)]
    assert config.engine_args.enable_lora is True and config.engine_args.max_lora_rank == 8


def test_dash_and_underscore_spellings_both_work(model_path):
    folder = model_path("tiny-llama")
    dashed = build_config(
        ["--model-dir", folder, "--max-model-len", "200", "--dtype", "bfloat16"], on_cpu=True
    )
    assert dashed.engine_args.max_model_len == 200 and dashed.engine_args.dtype == "bfloat16"


def test_dtype_auto_is_float32_on_cpu_only():
    assert vllm_dtype_arg("auto", on_cpu=True) == "float32"
    assert vllm_dtype_arg("auto", on_cpu=False) == "auto"
    assert vllm_dtype_arg("float16", on_cpu=True) == "float16"


def test_task_inferred_for_an_embedding_model(model_path):
    config = build_config(["--model_dir", model_path("all-minilm-l6-v2")], on_cpu=True)
    assert config.task is Task.TEXT_EMBEDDING and config.engine_args.runner == "pooling"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--frobnicate", "3"], "unrecognized arguments: --frobnicate"),
        (["--backend", "huggingface"], "--backend"),
        (["--task", "fill_mask"], "not served by the vLLM engine"),
        (["--task", "nonsense"], "--task"),
        (["--lora-modules", "no-equals-sign"], "expected name=path"),
    ],
)
def test_bad_flags_exit_with_a_message(model_path, capsys, argv, message):
    with pytest.raises(SystemExit) as raised:
        build_config(["--model_dir", model_path("tiny-llama"), *argv], on_cpu=True)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_a_model_is_required(capsys):
    with pytest.raises(SystemExit):
        build_config(["--enforce-eager"], on_cpu=True)
    assert "--model_dir" in capsys.readouterr().err


def test_lora_module_forms():
    assert parse_lora_module("a=/p") == LoraModule("a", "/p")
    assert parse_lora_module('{"name": "b", "path": "/q"}') == LoraModule("b", "/q")
    with pytest.raises(InvalidArgument, match="needs 'name' and 'path'"):
        parse_lora_module('{"name": "b"}')


def test_the_cpu_kv_cache_fits_its_context_length(model_path, monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    folder = model_path("tiny-llama")  # 2 layers, 2 KV heads of 32, float32 on CPU
    per_token = 2 * 2 * 2 * 32 * 4
    sized = build_config(["--model_dir", folder, "--max_model_len", "300"], on_cpu=True)
    # 8 sequences of 300 tokens: 2400 tokens, in whole blocks of 256
    assert sized.engine_args.kv_cache_memory_bytes == 2560 * per_token
    # without --max_model_len: the model's own limit (512)
    limit = build_config(["--model_dir", folder, "--cpu_kv_cache_sequences", "2"], on_cpu=True)
    assert limit.engine_args.kv_cache_memory_bytes == 1024 * per_token
    fixed = build_config(["--model_dir", folder, "--cpu_kv_cache_sequences", "0"], on_cpu=True)
    assert fixed.engine_args.kv_cache_memory_bytes == 2 * 2**30
    given = build_config(["--model_dir", folder, "--kv-cache-memory-bytes", "12345"], on_cpu=True)
    assert given.engine_args.kv_cache_memory_bytes == 12345
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # vLLM's own setting, read by vLLM
    assert (
        build_config(["--model_dir", folder], on_cpu=True).engine_args.kv_cache_memory_bytes is None
    )

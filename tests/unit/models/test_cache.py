"""The model cache: builder mechanics on fake recipes, then every real and tiny model."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from services.models import cache as models
from services.models.cache import MARKER_FILE, MODEL_NAMES, ModelRecipe, ensure_model

ARCHITECTURES = {
    "smollm2-135m-instruct": "LlamaForCausalLM",
    "all-minilm-l6-v2": "BertModel",
    "tiny-llama": "LlamaForCausalLM",
    "tiny-bert-fill-mask": "BertForMaskedLM",
    "tiny-bert-ner": "BertForTokenClassification",
    "tiny-bert-sentiment": "BertForSequenceClassification",
    "tiny-bert-reranker": "BertForSequenceClassification",
    "tiny-t5": "T5ForConditionalGeneration",
}
TINY = [name for name in MODEL_NAMES if name.startswith("tiny-") and name != "tiny-llama-lora"]


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return models.default_cache_dir()


@pytest.fixture(scope="session")
def tiny_models(cache_dir: Path) -> dict[str, Path]:
    return {name: ensure_model(name, cache_dir) for name in [*TINY, "tiny-llama-lora"]}


# --- builder mechanics, on fake recipes -------------------------------------------------


def _fake_recipe(monkeypatch, build, version: int = 1) -> None:
    monkeypatch.setitem(models._RECIPES, "fake", ModelRecipe("fake", build, version=version))


def test_concurrent_builders_build_once(tmp_path, monkeypatch):
    calls = []

    def build(out_dir: Path) -> None:
        calls.append(out_dir)
        time.sleep(0.2)
        (out_dir / "weights").write_text("w")

    _fake_recipe(monkeypatch, build)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_model("fake", tmp_path)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results == [tmp_path / "fake"] * 3
    assert (tmp_path / "fake" / "weights").read_text() == "w"
    assert not list(tmp_path.glob(".fake.tmp-*"))


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def build(out_dir: Path) -> None:
        (out_dir / "half").write_text("x")
        raise RuntimeError("crashed mid-build")

    _fake_recipe(monkeypatch, build)
    with pytest.raises(RuntimeError, match="mid-build"):
        ensure_model("fake", tmp_path)
    assert not (tmp_path / "fake").exists()
    assert not list(tmp_path.glob(".fake.tmp-*"))


def test_leftovers_of_a_killed_build_are_removed(tmp_path, monkeypatch):
    leftover = tmp_path / ".fake.tmp-killed"
    leftover.mkdir(parents=True)
    (leftover / "half").write_text("x")
    _fake_recipe(monkeypatch, lambda out: (out / "w").write_text("w"))
    assert (ensure_model("fake", tmp_path) / "w").is_file()
    assert not leftover.exists()


def test_new_recipe_version_replaces_old_build(tmp_path, monkeypatch):
    _fake_recipe(monkeypatch, lambda out: (out / "v").write_text("1"))
    ensure_model("fake", tmp_path)
    _fake_recipe(monkeypatch, lambda out: (out / "v").write_text("2"), version=2)
    path = ensure_model("fake", tmp_path)
    assert (path / "v").read_text() == "2"
    assert json.loads((path / MARKER_FILE).read_text())["version"] == 2
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".locks")] == ["fake"]


def test_unknown_model_is_named_in_error(tmp_path):
    with pytest.raises(KeyError, match="no-such-model"):
        ensure_model("no-such-model", tmp_path)


# --- the real cache ---------------------------------------------------------------------


def test_ensure_model_is_idempotent(tiny_models):
    path = tiny_models["tiny-bert-ner"]
    before = (path.stat().st_ino, (path / "model.safetensors").stat().st_mtime_ns)
    started = time.monotonic()
    again = ensure_model("tiny-bert-ner", path.parent)
    assert time.monotonic() - started < 0.5
    assert again == path
    assert (path.stat().st_ino, (path / "model.safetensors").stat().st_mtime_ns) == before


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert-ner", "tiny-t5"])
def test_tiny_builds_are_deterministic(name, tiny_models, tmp_path):
    fresh = ensure_model(name, tmp_path)
    cached = tiny_models[name]
    for file in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (fresh / file).read_bytes() == (cached / file).read_bytes(), file


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_loads_and_runs(name, tiny_models):
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    path = tiny_models[name]
    config = AutoConfig.from_pretrained(path)
    assert config.architectures == [ARCHITECTURES[name]]
    assert sum(f.stat().st_size for f in path.rglob("*")) < 5_000_000
    assert (path / "tokenizer.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.is_fast
    model = getattr(transformers, config.architectures[0]).from_pretrained(path).eval()
    assert model.dtype == torch.float32
    inputs = tokenizer(
        ["Maria travelled to Paris.", "The soup was awful."], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        if config.is_encoder_decoder:
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
            assert out.shape[0] == 2
            return
        logits = model(**inputs).logits
    batch, length = inputs["input_ids"].shape
    expected = {
        "LlamaForCausalLM": (batch, length, config.vocab_size),
        "BertForMaskedLM": (batch, length, config.vocab_size),
        "BertForTokenClassification": (batch, length, 5),
        "BertForSequenceClassification": (batch, config.num_labels),
    }[config.architectures[0]]
    assert tuple(logits.shape) == expected
    assert torch.isfinite(logits).all()


def test_tiny_bert_labels_and_pairs(tiny_models):
    from transformers import AutoConfig, AutoTokenizer

    ner = AutoConfig.from_pretrained(tiny_models["tiny-bert-ner"])
    assert ner.id2label == {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
    sentiment = AutoConfig.from_pretrained(tiny_models["tiny-bert-sentiment"])
    assert sentiment.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    assert AutoConfig.from_pretrained(tiny_models["tiny-bert-reranker"]).num_labels == 1
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["tiny-bert-reranker"])
    pair = tokenizer("what is the capital of france?", "Paris is the capital.")
    assert set(pair["token_type_ids"]) == {0, 1}
    assert tokenizer.mask_token == "[MASK]" and tokenizer.pad_token_id == 0


def test_tiny_llama_chat_template(tiny_models):
    from transformers import AutoTokenizer, GenerationConfig

    path = tiny_models["tiny-llama"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False
    )
    assert text.startswith("<|im_start|>system\nBe brief.")
    assert "get_weather" in text.split("<|im_end|>")[0]
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    plain = tokenizer.apply_chat_template(messages[1:], tokenize=False)
    assert plain == "<|im_start|>user\nHi<|im_end|>\n"
    eos = GenerationConfig.from_pretrained(path).eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    assert 1000 <= len(tokenizer) <= 2000


def test_lora_changes_greedy_output(tiny_models):
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, adapter_dir = tiny_models["tiny-llama"], tiny_models["tiny-llama-lora"]
    adapter = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base_dir)
    assert adapter["r"] == 8 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    generate = {"max_new_tokens": 16, "min_new_tokens": 16, "do_sample": False}
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        plain = base.generate(**inputs, **generate)
        tuned = (
            peft.PeftModel.from_pretrained(base, adapter_dir).eval().generate(**inputs, **generate)
        )
    assert plain.shape == tuned.shape
    assert not torch.equal(plain, tuned)


def test_minilm_embeds_sentences(cache_dir):
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = ensure_model("all-minilm-l6-v2", cache_dir)
    assert AutoConfig.from_pretrained(path).architectures == ["BertModel"]
    assert (path / "modules.json").is_file() and (path / "1_Pooling" / "config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
    ]
    inputs = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    vectors = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert vectors.shape == (3, 384)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(0.755, abs=0.01)
    assert float(vectors[0] @ vectors[2]) < 0.1


@pytest.mark.slow
def test_smollm2_answers_paris(cache_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    path = ensure_model("smollm2-135m-instruct", cache_dir)
    assert (path / "tokenizer.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template and tokenizer.is_fast
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert GenerationConfig.from_pretrained(path).eos_token_id in (im_end, [im_end])
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert model.dtype == torch.float32
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_cli_path_prints_the_folder(tiny_models, capsys):
    assert models.main(["path", "tiny-t5", "--cache-dir", str(tiny_models["tiny-t5"].parent)]) == 0
    assert capsys.readouterr().out.strip() == str(tiny_models["tiny-t5"])

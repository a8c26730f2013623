"""In-process `HFEngine`s on the tiny models, loaded once per session, and direct transformers
references."""

from __future__ import annotations

import pytest

from services.engine_hf.core import HFEngine
from services.engine_hf.settings import HFEngineSettings


@pytest.fixture(scope="session")
async def engine(model_path):
    """`await engine("tiny-llama", max_batch_size=4)` → a loaded engine named after the model."""
    made: dict[tuple, HFEngine] = {}

    async def get(model: str, **overrides) -> HFEngine:
        key = (model, tuple(sorted(overrides.items())))
        if key not in made:
            settings = HFEngineSettings(model_dir=model_path(model), model_name=model, **overrides)
            made[key] = HFEngine(settings)
            await made[key].start()
        return made[key]

    yield get
    for loaded in made.values():
        await loaded.shutdown()


@pytest.fixture(scope="session")
def reference(model_path):
    """`reference("tiny-bert-ner", "AutoModelForTokenClassification")` → (model, tokenizer),
    loaded by transformers directly."""
    import torch
    import transformers

    cache: dict[tuple[str, str], tuple] = {}

    def get(model: str, auto_class: str):
        if (model, auto_class) not in cache:
            path = model_path(model)
            loaded = (
                getattr(transformers, auto_class).from_pretrained(path, dtype=torch.float32).eval()
            )
            cache[(model, auto_class)] = (loaded, transformers.AutoTokenizer.from_pretrained(path))
        return cache[(model, auto_class)]

    return get

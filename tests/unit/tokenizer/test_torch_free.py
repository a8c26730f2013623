"""The tokenizer service never imports torch, even where torch is installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from services.launcher.processes import ROOT

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import services.tokenizer.__main__ as main
    from services.tokenizer.settings import TokenizerSettings, model_specs
    settings = TokenizerSettings(model_dir=sys.argv[1:], task=["text_generation", "fill_mask", "text_embedding"])
    models = [main.build_model(spec, settings) for spec in model_specs(settings)]
    from services.tokenizer.core import RenderRequest
    models[0].render(RenderRequest(messages=[{"role": "user", "content": "hi"}]))
    encoded = models[1].preprocess(["a [MASK] b"])
    models[1].postprocess({"logits": __import__("numpy").zeros((1, encoded["input_ids"].shape[1], 8), "float32")}, encoded)
    models[2].preprocess(["x"])
    print(json.dumps(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))))
    """
)


def test_no_torch_in_the_tokenizer_process(model_path):
    folders = [model_path("smollm2-135m-instruct"), model_path("tiny-bert-fill-mask"), model_path("all-minilm-l6-v2")]
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *folders], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"

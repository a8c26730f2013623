"""The gateway and the tokenizer service never import torch, vLLM or transformers'
model code, even where those are installed: their images do without them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import yaml

from services.launcher.processes import ROOT

# What the process must not have loaded, printed as the script's last line.
HEAVY = textwrap.dedent(
    """
    import json, re, sys
    heavy = re.compile(
        r"^(torch|vllm)(\\.|$)|^transformers\\.(modeling_utils$|models\\.[^.]+\\.modeling_)"
    )
    print(json.dumps(sorted(m for m in sys.modules if heavy.match(m))))
    """
)

TOKENIZER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import services.tokenizer.__main__ as main
    import services.tokenizer.servicer
    from services.tokenizer.settings import TokenizerSettings, model_specs
    folders, model_list = sys.argv[1:4], sys.argv[4]
    tasks = ["text_generation", "fill_mask", "text_embedding"]
    settings = TokenizerSettings(model_dir=folders, task=tasks)
    models = [main.build_model(spec, settings) for spec in model_specs(settings)]
    from services.tokenizer.core import RenderRequest
    models[0].render(RenderRequest(messages=[{"role": "user", "content": "hi"}]))
    encoded = models[1].preprocess(["a [MASK] b"])
    logits = np.zeros((1, encoded["input_ids"].shape[1], 8), "float32")
    models[1].postprocess({"logits": logits}, encoded)
    models[2].preprocess(["x"])
    listed = model_specs(TokenizerSettings(model_list=model_list, port=7001))
    main.build_model(listed[0], settings)
    """
)

GATEWAY = textwrap.dedent(
    """
    import sys
    import services.gateway.__main__
    from services.gateway.app import build_app
    from services.gateway.settings import GatewaySettings
    build_app(GatewaySettings(model_list=sys.argv[4]))
    """
)


@pytest.mark.parametrize("script", [TOKENIZER, GATEWAY], ids=["tokenizer", "gateway"])
def test_no_torch_vllm_or_model_code(script, model_path, tmp_path):
    folders = [
        model_path("smollm2-135m-instruct"),
        model_path("tiny-bert-fill-mask"),
        model_path("all-minilm-l6-v2"),
    ]
    model_list = tmp_path / "mesh.yaml"
    model_list.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "chat",
                        "source": folders[0],
                        "task": "text_generation",
                        "backend": "vllm",
                        "fallback": "huggingface",
                        "endpoints": {
                            "tokenizer": ["127.0.0.1:7001"],
                            "vllm": ["127.0.0.1:1"],
                            "huggingface": ["127.0.0.1:2"],
                        },
                    }
                ]
            }
        )
    )
    assert heavy_modules(script, *folders, str(model_list)) == []


def heavy_modules(script: str, *args: str) -> list[str]:
    """Run `script` with `args` in a fresh interpreter; the heavy modules it loaded."""
    result = subprocess.run(
        [sys.executable, "-c", script + HEAVY, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_check_sees_torch():
    result = subprocess.run(
        [sys.executable, "-c", "import torch, transformers.models.bert.modeling_bert" + HEAVY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert "torch" in loaded and "transformers.models.bert.modeling_bert" in loaded
    assert all(re.match(r"torch|transformers", m) for m in loaded)

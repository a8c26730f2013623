"""Load a model folder's tokenizer without torch.

`transformers.AutoTokenizer` imports the model registry, which imports torch.
The tokenizer classes themselves do not: we resolve the class named in
`tokenizer_config.json` through the `transformers` top-level lazy module (as
`AutoTokenizer` would) and fall back to the generic `tokenizers` backend.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.errors import InvalidArgument

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    """What the tokenizer service needs from a model's `config.json`."""

    architectures: tuple[str, ...]
    model_type: str
    max_position_embeddings: int | None
    id2label: dict[int, str]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as error:
        raise InvalidArgument(f"{path}: not valid JSON ({error})") from None


def read_model_config(model_dir: Path) -> ModelConfig:
    config = _read_json(model_dir / "config.json")
    labels = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    return ModelConfig(
        architectures=tuple(config.get("architectures") or ()),
        model_type=str(config.get("model_type") or ""),
        max_position_embeddings=config.get("max_position_embeddings") or config.get("n_positions"),
        id2label=labels,
    )


def _tokenizer_class(name: str | None) -> type[PreTrainedTokenizerBase]:
    import transformers
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    if not name:
        return TokenizersBackend
    for candidate in (name, name.removesuffix("Fast")):
        try:
            found = getattr(transformers, candidate)
        except (AttributeError, ImportError):
            continue
        if isinstance(found, type) and hasattr(found, "from_pretrained"):
            return found
    logger.warning(
        "tokenizer class %s not found in transformers; using the tokenizers backend", name
    )
    return TokenizersBackend


def load_tokenizer(model_dir: str | Path, *, lower_case: bool | None = None) -> Any:
    """The folder's tokenizer. `lower_case=False` is KServe's `--disable_lower_case`."""
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise InvalidArgument(f"model folder {folder} does not exist")
    config = _read_json(folder / "tokenizer_config.json")
    if not config and not (folder / "tokenizer.json").exists():
        raise InvalidArgument(
            f"{folder} holds no tokenizer (tokenizer.json / tokenizer_config.json)"
        )
    cls = _tokenizer_class(config.get("tokenizer_class"))
    kwargs: dict[str, Any] = {"trust_remote_code": False}
    if lower_case is not None:
        kwargs["do_lower_case"] = lower_case
    tokenizer = cls.from_pretrained(str(folder), **kwargs)
    if lower_case is False and hasattr(tokenizer, "do_lower_case"):
        tokenizer.do_lower_case = False
    return tokenizer

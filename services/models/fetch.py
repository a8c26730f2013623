"""The storage initializer: fetch a model source into a folder, once.

`python -m services.models fetch SOURCE [DEST]` (and `fetch_source` here) takes any source of
`services.common.model_source`. Remote ones land in `DEST`, by default
`<cache>/sources/<source.cache_name()>`, the path every engine, tokenizer and replica of the
model then reads (the launcher, compose's `models` service and the Kubernetes init containers
all fetch to it). Local and `pvc://` sources are read in place and never copied.

Contract:
- **Atomic.** Files are written under `.<DEST>.partial/` beside the destination and the folder
  is renamed into place only when every file is complete and verified, with a marker
  (`.hfmesh_source.json`) naming the source. A folder without the marker is never taken.
- **Idempotent.** A destination whose marker names the same source (revision included) is
  used as it is: nothing is listed or downloaded.
- **Resumable.** An interrupted run (Ctrl-C, a killed container, a dropped connection after
  retries) keeps `.partial/`; the next run continues each file from the bytes it has.
- **Verified.** Every file's size, and its MD5 or SHA-256 where the store gives one.
- **Serving files only** (`services.models.files.serving_files`); archives unpacked safely.
- **Clear failures.** Bad credentials, a missing bucket or repository, a corrupt archive or an
  unsafe name end the fetch with a message saying what to fix, and `.partial/` is removed.
- **One fetcher at a time** per destination (a file lock): concurrent replicas wait.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from services.common.model_source import ARCHIVE_SUFFIXES, ModelSource, parse_source
from services.models.cache import default_cache_dir, model_lock
from services.models.files import (
    FetchError,
    TransientFetchError,
    keep_serving_files,
    model_root,
    serving_files,
    unpack,
)
from services.models.stores import RemoteFile, Store, open_store

logger = logging.getLogger(__name__)

SOURCE_MARKER = ".hfmesh_source.json"
SOURCES_DIR = "sources"
RETRIES = 4


def default_destination(source: ModelSource, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / SOURCES_DIR / source.cache_name()


def _source_id(source: ModelSource) -> str:
    """What the marker compares: a digest of the canonical source (a URL's query, which may
    carry a signature, never lands on disk in clear)."""
    return hashlib.sha256(source.uri.encode()).hexdigest()


def is_fetched(source: ModelSource, dest: Path) -> bool:
    try:
        marker = json.loads((dest / SOURCE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return bool(marker.get("source_id") == _source_id(source))


def _bar(total: int, initial: int, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label[:40],
        file=sys.stderr,
        mininterval=1.0,
    )  # TQDM_DISABLE=1 hides it (tqdm reads its TQDM_* variables itself)


def _verify(part: Path, file: RemoteFile, label: str) -> None:
    size = part.stat().st_size
    if file.size is not None and size != file.size:
        if size > file.size:
            part.unlink()
        # Short: the connection ended early; the next attempt resumes from here.
        raise TransientFetchError(f"{label}: {file.name} has {size} bytes, expected {file.size}")
    for algorithm, expected in (("md5", file.md5), ("sha256", file.sha256)):
        if expected is None:
            continue
        digest = hashlib.new(algorithm)
        with open(part, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != expected.lower():
            part.unlink()
            raise FetchError(f"{label}: {file.name} failed its {algorithm} check; removed")


def _download_one(store: Store, file: RemoteFile, folder: Path, bar: Any, label: str) -> None:
    target = folder / file.name
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, RETRIES + 1):
        offset = part.stat().st_size if part.exists() else 0
        if file.size is not None and offset > file.size:
            part.unlink()
            offset = 0
        if offset:
            logger.info("%s: resuming %s at %d of %s bytes", label, file.name, offset, file.size)
        try:
            with open(part, "ab") as out:
                for chunk in store.read(file, offset):
                    out.write(chunk)
                    bar.update(len(chunk))
            _verify(part, file, label)
            break
        except TransientFetchError as error:
            if attempt == RETRIES:
                raise
            logger.warning("%s (attempt %d of %d; resuming)", error, attempt, RETRIES)
            time.sleep(min(2.0**attempt / 4, 4.0))
    os.replace(part, target)


def _download(store: Store, files: list[RemoteFile], folder: Path, label: str) -> None:
    """Each file into `folder`; a file already complete there (an earlier run) is kept."""
    missing = [f for f in files if not _complete(folder / f.name, f)]
    have = sum((folder / f"{f.name}.part").stat().st_size for f in missing if _has_part(folder, f))
    total = sum(f.size or 0 for f in missing)
    size = sum(f.size or 0 for f in files)
    logger.info(
        "%s: %d file(s), %.1f MB (%d to download)", label, len(files), size / 1e6, len(missing)
    )
    with _bar(total, have, label) as bar:
        for file in missing:
            _download_one(store, file, folder, bar, label)


def _has_part(folder: Path, file: RemoteFile) -> bool:
    return (folder / f"{file.name}.part").is_file()


def _complete(path: Path, file: RemoteFile) -> bool:
    return path.is_file() and (file.size is None or path.stat().st_size == file.size)


def _fetch_store(source: ModelSource, staging: Path) -> None:
    store = open_store(source)
    label = source.display
    listing = store.list()
    if not listing:
        raise FetchError(f"{label}: nothing under this prefix")
    files_dir = staging / "files"
    if len(listing) == 1 and listing[0].name.lower().endswith(ARCHIVE_SUFFIXES):
        download = staging / "download"
        _download(store, listing, download, label)
        unpacked = staging / "unpacked"
        shutil.rmtree(unpacked, ignore_errors=True)
        unpack(download / listing[0].name, unpacked, f"{label} ({listing[0].name})")
        root = model_root(unpacked)
        keep_serving_files(root)
        shutil.rmtree(files_dir, ignore_errors=True)
        os.rename(root, files_dir)
        return
    wanted = set(serving_files(file.name for file in listing))
    skipped = len(listing) - len(wanted)
    if skipped:
        logger.info("%s: skipping %d file(s) a server does not load", label, skipped)
    _download(store, [file for file in listing if file.name in wanted], files_dir, label)


def _prepare_staging(staging: Path, source: ModelSource) -> None:
    """Keep a `.partial/` of the same source (resume); clear one of another."""
    stamp = staging / ".source_id"
    with contextlib.suppress(OSError):
        if stamp.read_text() == _source_id(source):
            logger.info("%s: resuming an interrupted fetch (%s)", source.display, staging)
            return
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    stamp.write_text(_source_id(source))


def _finish(source: ModelSource, staging: Path, dest: Path, revision: str | None) -> None:
    files_dir = staging / "files"
    files = sorted(p for p in files_dir.rglob("*") if p.is_file())
    marker = {
        "source": source.display,
        "source_id": _source_id(source),
        "revision": revision,
        "files": {str(p.relative_to(files_dir)): p.stat().st_size for p in files},
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (files_dir / SOURCE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    for path in [files_dir, *files_dir.rglob("*")]:
        with contextlib.suppress(OSError):  # a hard-linked hub blob may belong to another user
            path.chmod(0o755 if path.is_dir() else 0o644)
    if dest.exists():  # empty, or another source's fetch: replaced whole
        shutil.rmtree(dest)
    os.rename(files_dir, dest)
    shutil.rmtree(staging, ignore_errors=True)


def fetch_source(
    source: str | ModelSource, dest: Path | None = None, *, cache_dir: Path | None = None
) -> Path:
    """The local folder (or file) of `source`, fetched into `dest` first if it is remote."""
    parsed = parse_source(source) if isinstance(source, str) else source
    if not parsed.remote:
        path = Path(parsed.location)
        if dest is not None:
            raise FetchError(f"{parsed.display}: a {parsed.kind} source is read in place")
        if not path.exists():
            raise FetchError(f"{parsed.display}: no such file or folder")
        return path
    dest = Path(dest or default_destination(parsed, cache_dir)).expanduser().absolute()
    if is_fetched(parsed, dest):
        logger.info("%s: ready in %s (fetched before)", parsed.display, dest)
        return dest
    if dest.exists() and not (dest / SOURCE_MARKER).is_file() and any(dest.iterdir()):
        raise FetchError(
            f"{parsed.display}: {dest} exists and was not written by a fetch; give a new or "
            "empty folder (its content would be replaced)"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with model_lock(dest.parent, dest.name):
        if is_fetched(parsed, dest):
            logger.info("%s: ready in %s (fetched by another process)", parsed.display, dest)
            return dest
        staging = dest.parent / f".{dest.name}.partial"
        _prepare_staging(staging, parsed)
        started = time.monotonic()
        logger.info("%s: fetching into %s", parsed.display, dest)
        try:
            revision = None
            if parsed.kind == "hf":
                from services.models.hub import fetch_hub

                (staging / "files").mkdir(exist_ok=True)
                revision = fetch_hub(parsed, staging / "files")
            else:
                _fetch_store(parsed, staging)
            _finish(parsed, staging, dest, revision)
        except TransientFetchError as error:
            raise FetchError(
                f"{error}; the partial download stays in {staging}: run the same fetch again "
                "to resume"
            ) from None
        except FetchError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    logger.info("%s: ready in %s (%.1f s)", parsed.display, dest, time.monotonic() - started)
    return dest

"""A Hugging Face hub cache laid out as `huggingface_hub` writes it (blobs, snapshots, refs),
filled from local folders: what `hf download` leaves on a machine that reached the hub."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def add_snapshot(
    hub_cache: Path, repo_id: str, commit: str, folder: Path, refs: tuple[str, ...] = ()
) -> Path:
    """`folder`'s files as snapshot `commit` of model `repo_id`; each of `refs` (branches,
    tags) points at it. Returns the snapshot folder."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot

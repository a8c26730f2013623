"""`hf://org/name[@revision]` through `huggingface_hub`: its own resume, checksums and cache.

With the hub reachable, the repository's file list (at the pinned revision) decides what is
downloaded (`serving_files`), into the usual hub cache (`HF_HOME`/`HF_HUB_CACHE`, token from
`HF_TOKEN`). Offline (`HF_HUB_OFFLINE=1`, or the hub not answering), the revision is resolved
in that cache alone: a branch or tag through its `refs/`, a commit directly. Either way the
chosen files are hard-linked (copied across file systems) from the snapshot into the model
folder, so the hub cache and the model cache share their bytes.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from services.common.model_source import ModelSource
from services.models.files import FetchError, TransientFetchError, safe_name, serving_files

logger = logging.getLogger(__name__)


def _unreachable(source: ModelSource, why: str) -> FetchError:
    from huggingface_hub import constants

    revision = f" --revision {source.revision}" if source.revision else ""
    return FetchError(
        f"{source.display}: the Hugging Face hub is unreachable ({why}) and this model"
        f"{' revision' if source.revision else ''} is not in the hub cache "
        f"({constants.HF_HUB_CACHE}). Provide it: on a machine that reaches the hub run "
        f"`hf download {source.location}{revision}` and copy its hub cache here (HF_HOME or "
        "HF_HUB_CACHE), or name a local folder, s3://, gs:// or https:// source instead"
    )


def _snapshot(source: ModelSource) -> Path:
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = source.location, source.revision
    unreachable = "HF_HUB_OFFLINE=1"
    try:
        if not constants.HF_HUB_OFFLINE:
            try:
                info = HfApi().model_info(repo, revision=revision)
            except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError):
                raise
            except Exception as error:  # the hub's HTTP client raises its own connection errors
                logger.warning("%s: hub not reachable (%s); using the hub cache", repo, error)
                unreachable = f"{type(error).__name__}: {error}"
            else:
                allow = serving_files(sibling.rfilename for sibling in info.siblings or [])
                try:
                    return Path(snapshot_download(repo, revision=info.sha, allow_patterns=allow))
                except (HfHubHTTPError, LocalEntryNotFoundError):
                    raise
                except Exception as error:
                    raise TransientFetchError(
                        f"{source.display}: download interrupted ({type(error).__name__}: "
                        f"{error}); the hub cache keeps the partial files"
                    ) from None
        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except GatedRepoError:
        raise FetchError(
            f"{source.display}: the repository is gated; accept its terms on the hub and set "
            "HF_TOKEN to a token of that account"
        ) from None
    except RevisionNotFoundError:
        raise FetchError(f"{source.display}: revision {revision!r} does not exist") from None
    except RepositoryNotFoundError:
        raise FetchError(
            f"{source.display}: no such repository (or it is private: set HF_TOKEN)"
        ) from None
    except LocalEntryNotFoundError:
        raise _unreachable(source, unreachable) from None


def fetch_hub(source: ModelSource, files_dir: Path) -> str:
    """Place the serving files of `source` in `files_dir`; returns the resolved commit."""
    snapshot = _snapshot(source)
    names = sorted(
        str(path.relative_to(snapshot)) for path in snapshot.rglob("*") if not path.is_dir()
    )
    chosen = serving_files(names)
    if not chosen:
        raise FetchError(f"{source.display}: the snapshot in the hub cache holds no files")
    for name in chosen:
        target = files_dir / safe_name(name, f"{source.display}: file")
        target.parent.mkdir(parents=True, exist_ok=True)
        blob = (snapshot / name).resolve()
        target.unlink(missing_ok=True)
        try:
            os.link(blob, target)
        except OSError:
            shutil.copyfile(blob, target)
    logger.info("%s: %d files from snapshot %s", source.display, len(chosen), snapshot.name)
    return snapshot.name

"""What a fetched model folder may hold: safe relative names, serving files only, safe unpacking.

Names come from outside (object keys, archive members, hub file lists), so each is checked
before anything is written: no absolute path, no `..` segment, no empty or `.` segment, no link
pointing out of the destination — refused with a `FetchError` naming the entry, never
silently rewritten (`zipfile` would strip a `../` on its own; we refuse it instead).

Serving files: a checkpoint folder often holds more than a server loads. Weights in
`safetensors` win over the same weights as `.bin`/`.pt`/`.pth`/`.ckpt`/`.gguf` (the pickle
formats are skipped whenever a `.safetensors` file exists), other frameworks' weights
(`.h5`, `.msgpack`, `.onnx`, ...) and training state (optimizer, scheduler, RNG state,
trainer state, `checkpoint-*/` folders) are never taken, nor hidden files.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath


class FetchError(Exception):
    """A fetch that cannot succeed as asked (bad credentials, missing bucket, corrupt data,
    an unsafe name): the message says what and how to fix it; nothing half-written is kept."""


class TransientFetchError(FetchError):
    """A network failure: retried, and when retries run out the partial download is kept
    so the next run resumes it."""


_PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".gguf")
_OTHER_FRAMEWORKS = (".h5", ".msgpack", ".onnx", ".onnx_data", ".tflite", ".ot", ".mlmodel")
_TRAINING_STATE = ("optimizer", "scheduler", "rng_state", "training_args", "trainer_state")


def safe_name(name: str, what: str) -> str:
    """`name` as a relative POSIX path inside the destination, or `FetchError`."""
    path = PurePosixPath(name.replace("\\", "/"))
    if not name or path.is_absolute() or name.startswith(("/", "\\")) or ":" in path.parts[0]:
        raise FetchError(f"{what} {name!r} is an absolute path; refused")
    if any(part in ("..", ".", "") for part in name.replace("\\", "/").rstrip("/").split("/")):
        raise FetchError(f"{what} {name!r} leaves the destination folder ('..' or empty part)")
    return str(path)


def serving_files(names: Iterable[str]) -> list[str]:
    """The names a server needs, in their order (see the module docstring)."""
    names = list(names)
    has_safetensors = any(name.endswith(".safetensors") for name in names)
    has_pickle = any(name.endswith(_PICKLE_WEIGHTS) for name in names)
    kept = []
    for name in names:
        parts = PurePosixPath(name).parts
        base = parts[-1].lower()
        if any(part.startswith(".") or part.startswith("checkpoint-") for part in parts):
            continue
        if base.startswith(_TRAINING_STATE) or base.endswith(_OTHER_FRAMEWORKS):
            continue
        if has_safetensors and base.endswith(_PICKLE_WEIGHTS):
            continue
        if has_safetensors and base.endswith(".bin.index.json"):
            continue
        if has_pickle and base.endswith(".gguf") and any(n.endswith(".bin") for n in names):
            continue
        kept.append(name)
    return kept


def _check_tar(archive: tarfile.TarFile, label: str) -> None:
    for member in archive.getmembers():
        safe_name(member.name, f"{label}: member")
        if member.issym() or member.islnk():
            target = PurePosixPath(member.linkname)
            base = PurePosixPath(member.name).parent if member.issym() else PurePosixPath()
            depth = 0
            for part in (base / target).parts if not target.is_absolute() else ("..",):
                depth += -1 if part == ".." else 0 if part == "." else 1
                if depth < 0:
                    raise FetchError(
                        f"{label}: link {member.name!r} -> {member.linkname!r} points out of "
                        "the destination folder; refused"
                    )
        elif not (member.isfile() or member.isdir()):
            raise FetchError(f"{label}: member {member.name!r} is not a file or folder; refused")


def _check_zip(archive: zipfile.ZipFile, label: str) -> None:
    for info in archive.infolist():
        safe_name(info.filename, f"{label}: member")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise FetchError(f"{label}: member {info.filename!r} is a symbolic link; refused")


def unpack(archive_path: Path, out_dir: Path, label: str) -> None:
    """Unpack a `.tar.gz`/`.tgz`/`.tar`/`.zip` into `out_dir`, every member checked first;
    a corrupt archive or an unsafe member is a `FetchError` and nothing is unpacked."""
    name = archive_path.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(archive_path) as archive:
                _check_zip(archive, label)
                bad = archive.testzip()
                if bad is not None:
                    raise FetchError(f"{label}: member {bad!r} is corrupt (CRC mismatch)")
                archive.extractall(out_dir)
        else:
            with tarfile.open(archive_path, "r:*") as archive:
                _check_tar(archive, label)
                archive.extractall(out_dir, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise FetchError(f"{label} is not a valid {archive_path.suffix} archive: {error}") from None


def model_root(folder: Path) -> Path:
    """An archive that holds one top-level folder (`model/config.json`) is that folder."""
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def keep_serving_files(folder: Path) -> None:
    """Delete what `serving_files` leaves out, in place (an unpacked archive)."""
    names = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()]
    keep = set(serving_files(names))
    for name in names:
        if name not in keep:
            (folder / name).unlink()

"""Where a model or a LoRA adapter comes from: one source syntax, parsed in one place.

Every place that names a model (a model list's `source:`, an adapter's `source:`, the storage
initializer `python -m services.models fetch`) parses it here, so a typo is the same clear
`InvalidArgument` everywhere, before anything is downloaded:

- `hf://org/name[@revision]` (kind `hf`): a Hugging Face hub repository; the revision is a
  branch, tag or commit. A bare `org/name[@revision]` is the same (KServe's `--model_id`)
  unless a local folder of that relative name exists.
- `s3://bucket/prefix`, `gs://bucket/prefix` (`s3`, `gs`): every object under `prefix/`, or
  the one object `prefix` (a single file or an archive).
- `https://host/path` (also `http://`; kind `https`): one file, or a `.tar.gz`/`.tgz`/`.tar`/
  `.zip` archive that is unpacked.
- `/abs/path`, `./rel`, `~/x`, `file:///abs` (`local`): a folder or file on this machine.
- `pvc://claim/path` (`pvc`): a mounted volume, `$HFMESH_PVC_ROOT/claim/path` (default root
  `/mnt/pvc`, where KServe mounts claims).

Remote kinds (`hf`, `s3`, `gs`, `https`) are fetched into the model cache once and shared by
every engine, tokenizer and replica; `local` and `pvc` are read where they are.
`ModelSource.display` is the source without user info or query string (a pre-signed URL's
signature), the only form that may be logged.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from services.common.errors import InvalidArgument

#: The volume root `pvc://` paths are read under (KServe mounts PVCs at /mnt/pvc).
PVC_ROOT_ENV = "HFMESH_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"
REMOTE_KINDS = ("hf", "s3", "gs", "https")
SCHEMES = ("hf", "s3", "gs", "https", "http", "file", "pvc")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

_HUB_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_HUB_ID = re.compile(rf"^(?:{_HUB_PART}/)?{_HUB_PART}$")
_BARE_HUB_ID = re.compile(rf"^{_HUB_PART}/{_HUB_PART}(?:@[^\s@]+)?$")
_BUCKET = {
    "s3": re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"),
    "gs": re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"),
}
_PVC_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class ModelSource:
    """A parsed source. `location` is the repo id (hf), bucket (s3, gs), URL (https) or
    absolute path (local, pvc); `key` the object prefix (s3, gs); `revision` hf's only."""

    kind: str
    location: str
    key: str = ""
    revision: str | None = None

    @property
    def remote(self) -> bool:
        return self.kind in REMOTE_KINDS

    @property
    def uri(self) -> str:
        """The canonical form, credentials included (a URL's query): never log it."""
        if self.kind == "hf":
            return f"hf://{self.location}" + (f"@{self.revision}" if self.revision else "")
        if self.kind in ("s3", "gs"):
            return f"{self.kind}://{self.location}/{self.key}".rstrip("/")
        return self.location

    @property
    def display(self) -> str:
        """The form that may be logged: a URL without user info and query string."""
        if self.kind != "https":
            return self.uri
        parts = urlsplit(self.location)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))

    @property
    def file_name(self) -> str:
        """The last path segment: the file an `https` source (or a one-object prefix) names."""
        path = urlsplit(self.location).path if self.kind == "https" else self.key
        return path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def is_archive(self) -> bool:
        return self.file_name.lower().endswith(ARCHIVE_SUFFIXES)

    def cache_name(self) -> str:
        """The folder name this source is fetched into under the cache's `sources/`: readable,
        and unique per source (a hash of the canonical form, revision included)."""
        readable = re.sub(r"[^A-Za-z0-9._-]+", "--", self.display.split("://", 1)[-1]).strip("-.")
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        return f"{self.kind}--{readable[:80]}--{digest}"


def _fail(text: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"model source {text!r}: {why} (expected hf://org/name[@revision], org/name, "
        "s3://bucket/prefix, gs://bucket/prefix, https://host/file-or-archive, a local path "
        "or pvc://claim/path)"
    )


def _hub(text: str, rest: str) -> ModelSource:
    repo, _, revision = rest.partition("@")
    if not _HUB_ID.match(repo):
        raise _fail(text, f"{repo!r} is not a hub repository id (org/name)")
    if "@" in rest and not revision:
        raise _fail(text, "the revision after '@' is empty")
    if revision and not re.match(r"^[A-Za-z0-9._/-]+$", revision):
        raise _fail(text, f"revision {revision!r} is not a branch, tag or commit")
    return ModelSource("hf", repo, revision=revision or None)


def _bucket(text: str, scheme: str, rest: str) -> ModelSource:
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise _fail(text, "no bucket")
    if not _BUCKET[scheme].match(bucket):
        raise _fail(text, f"{bucket!r} is not a valid bucket name")
    key = key.strip("/")
    if any(part in ("..", ".") for part in key.split("/")):
        raise _fail(text, "the prefix must not contain '.' or '..' segments")
    return ModelSource(scheme, bucket, key=key)


def _url(text: str) -> ModelSource:
    parts = urlsplit(text)
    if not parts.hostname:
        raise _fail(text, "no host")
    if not parts.path.strip("/"):
        raise _fail(text, "no file path after the host")
    return ModelSource("https", text)


def _pvc(text: str, rest: str) -> ModelSource:
    claim, _, path = rest.partition("/")
    if not _PVC_NAME.match(claim):
        raise _fail(text, f"{claim!r} is not a volume claim name")
    if any(part == ".." for part in path.split("/")):
        raise _fail(text, "the path must not contain '..'")
    root = os.environ.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT
    return ModelSource("pvc", str(Path(root, claim, path.strip("/"))), key=f"{claim}/{path}")


def parse_source(text: str) -> ModelSource:
    """A model source as written; `InvalidArgument` naming what is wrong otherwise.

    A bare `org/name` is a hub id unless a local folder of that relative name exists.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidArgument(f"model source must be a non-empty string, got {text!r}")
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        if _BARE_HUB_ID.match(text) and not Path(text.split("@")[0]).exists():
            return _hub(text, text)
        if "@" in text and _BARE_HUB_ID.match(text):
            raise _fail(text, "a local folder of that name exists; write hf://… for the hub")
        return ModelSource("local", str(Path(text).expanduser().absolute()))
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise _fail(text, f"unknown scheme {scheme!r}")
    if scheme == "hf":
        return _hub(text, rest)
    if scheme in ("s3", "gs"):
        return _bucket(text, scheme, rest)
    if scheme in ("https", "http"):
        return _url(text)
    if scheme == "pvc":
        return _pvc(text, rest)
    if not rest.startswith("/"):
        raise _fail(text, "a file:// URI needs an absolute path (file:///path)")
    return ModelSource("local", str(Path(rest)))

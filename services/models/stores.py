"""Object stores and plain URLs behind one small interface: list the files, read one from an
offset (the resume point). `services.models.fetch` does the rest (selection, resume, verify,
atomic rename) once for all of them.

- S3 and S3-compatible stores through `boto3`: credentials and endpoint from the usual
  environment (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `AWS_PROFILE`,
  `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`), resolved by botocore.
  The ETag of a single-part upload is the object's MD5 and is verified.
- Google Cloud Storage through `gcsfs` (fsspec): credentials from
  `GOOGLE_APPLICATION_CREDENTIALS` or the machine's default credentials; MD5 verified.
- `https://` through `httpx`: one file, resumed with a `Range` request; its length verified,
  and its SHA-256 when the URL ends in `#sha256=<hex>` (as pip's URLs do).

Errors are `FetchError` (permanent: the message names the fix) or `TransientFetchError`
(network: retried, then resumed by the next run). Credentials never appear in a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from services.common.model_source import ModelSource
from services.models.files import FetchError, TransientFetchError, safe_name

CHUNK = 1 << 20
_MD5 = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source: `name` relative to the model folder, `ref` where the store reads it."""

    name: str
    ref: str
    size: int | None
    md5: str | None = None
    sha256: str | None = None


class Store(Protocol):
    def list(self) -> list[RemoteFile]: ...

    def read(self, file: RemoteFile, offset: int) -> Iterator[bytes]: ...


def _relative(key: str, prefix: str, label: str) -> str:
    """An object key as a name inside the model folder (the prefix cut off), checked."""
    rest = key[len(prefix) :] if prefix and key.startswith(prefix) else key
    return safe_name(rest, f"{label}: object key {key!r} →")


class S3Store:
    def __init__(self, source: ModelSource) -> None:
        import boto3
        from botocore.config import Config

        self.source = source
        self.bucket = source.location
        config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10)
        session = boto3.session.Session()
        region = session.region_name or "us-east-1"
        self.client: Any = session.client("s3", region_name=region, config=config)

    def _error(self, error: Exception) -> FetchError:
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        where = self.source.display
        if isinstance(error, NoCredentialsError | PartialCredentialsError):
            return FetchError(
                f"{where}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE)"
            )
        if isinstance(error, ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return FetchError(f"{where}: bucket {self.bucket!r} does not exist")
            if code in ("NoSuchKey", "404"):
                return FetchError(f"{where}: no such object")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or (
                status in (401, 403)
            ):
                return FetchError(
                    f"{where}: access denied ({code}); check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and, for an S3-compatible store, "
                    "AWS_ENDPOINT_URL_S3"
                )
            if status is not None and status >= 500:
                return TransientFetchError(f"{where}: the store answered {status} ({code})")
            return FetchError(f"{where}: the store answered {status} ({code})")
        return TransientFetchError(f"{where}: {type(error).__name__}: {error}")

    def list(self) -> list[RemoteFile]:
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = self.source.key
        label = self.source.display
        files: list[RemoteFile] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{prefix}/" if prefix else ""
            )
            for page in pages:
                for item in page.get("Contents", []):
                    if item["Key"].endswith("/"):
                        continue  # a zero-byte "folder" marker, not a file
                    etag = item.get("ETag", "").strip('"')
                    files.append(
                        RemoteFile(
                            name=_relative(item["Key"], f"{prefix}/" if prefix else "", label),
                            ref=item["Key"],
                            size=int(item["Size"]),
                            md5=etag if _MD5.match(etag) else None,
                        )
                    )
            if not files and prefix:
                try:
                    head = self.client.head_object(Bucket=self.bucket, Key=prefix)
                except ClientError as error:
                    if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                        return []  # neither a folder nor one object: "nothing under the prefix"
                    raise
                etag = head.get("ETag", "").strip('"')
                name = safe_name(self.source.file_name, f"{label}: object")
                size = int(head["ContentLength"])
                files.append(RemoteFile(name, prefix, size, etag if _MD5.match(etag) else None))
        except (ClientError, BotoCoreError) as error:
            raise self._error(error) from None
        return files

    def read(self, file: RemoteFile, offset: int) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError
        from urllib3.exceptions import HTTPError

        extra = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=file.ref, **extra)["Body"]
            yield from body.iter_chunks(CHUNK)
        except (ClientError, BotoCoreError, HTTPError, OSError) as error:
            raise self._error(error) from None


class GCSStore:
    def __init__(self, source: ModelSource) -> None:
        try:
            import gcsfs
        except ImportError:
            raise FetchError(
                f"{source.display}: gs:// sources need gcsfs (pip install 'hfmesh[models-gcs]')"
            ) from None
        self.source = source
        self.fs = gcsfs.GCSFileSystem()

    def _error(self, error: Exception) -> FetchError:
        where = self.source.display
        if isinstance(error, FileNotFoundError):
            return FetchError(f"{where}: no such bucket or object")
        if isinstance(error, PermissionError):
            return FetchError(f"{where}: access denied; check GOOGLE_APPLICATION_CREDENTIALS")
        return TransientFetchError(f"{where}: {type(error).__name__}: {error}")

    def list(self) -> list[RemoteFile]:
        root = f"{self.source.location}/{self.source.key}".rstrip("/")
        label = self.source.display
        try:
            if self.fs.isfile(root):
                info = self.fs.info(root)
                name = safe_name(self.source.file_name, f"{label}: object")
                return [RemoteFile(name, root, int(info["size"]), _gcs_md5(info))]
            found = self.fs.find(root, detail=True)
        except Exception as error:  # gcsfs raises its own and OSError subclasses
            raise self._error(error) from None
        return [
            RemoteFile(_relative(path, root + "/", label), path, int(info["size"]), _gcs_md5(info))
            for path, info in sorted(found.items())
            if info.get("type") != "directory"
        ]

    def read(self, file: RemoteFile, offset: int) -> Iterator[bytes]:
        try:
            with self.fs.open(file.ref, "rb", block_size=CHUNK) as handle:
                handle.seek(offset)
                while chunk := handle.read(CHUNK):
                    yield chunk
        except Exception as error:
            raise self._error(error) from None


def _gcs_md5(info: dict[str, Any]) -> str | None:
    import base64

    encoded = info.get("md5Hash")
    return base64.b64decode(encoded).hex() if encoded else None


class HTTPStore:
    """One file at a URL; its name is the URL's last path segment."""

    def __init__(self, source: ModelSource) -> None:
        import httpx

        self.source = source
        self.url, _, fragment = source.location.partition("#")
        digest = re.match(r"^sha256=([0-9a-fA-F]{64})$", fragment)
        self.sha256 = digest.group(1).lower() if digest else None
        self.client = httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0))

    def _error(self, error: Exception) -> FetchError:
        import httpx

        where = self.source.display
        if isinstance(error, httpx.HTTPStatusError):
            status = error.response.status_code
            if status in (401, 403):
                return FetchError(f"{where}: access denied ({status})")
            if status == 404:
                return FetchError(f"{where}: not found (404)")
            if status >= 500 or status == 429:
                return TransientFetchError(f"{where}: the server answered {status}")
            return FetchError(f"{where}: the server answered {status}")
        return TransientFetchError(f"{where}: {type(error).__name__}: {error}")

    def list(self) -> list[RemoteFile]:
        import httpx

        name = safe_name(self.source.file_name, f"{self.source.display}: file")
        try:
            with self.client.stream("GET", self.url) as response:
                response.raise_for_status()
                length = response.headers.get("content-length")
                encoded = response.headers.get("content-encoding", "identity") != "identity"
        except httpx.HTTPError as error:
            raise self._error(error) from None
        size = int(length) if length and not encoded else None
        return [RemoteFile(name, self.url, size, sha256=self.sha256)]

    def read(self, file: RemoteFile, offset: int) -> Iterator[bytes]:
        import httpx

        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with self.client.stream("GET", self.url, headers=headers) as response:
                response.raise_for_status()
                skip = offset if offset and response.status_code != 206 else 0
                for chunk in response.iter_bytes(CHUNK):  # no Range support: skip what we have
                    if skip >= len(chunk):
                        skip -= len(chunk)
                        continue
                    yield chunk[skip:]
                    skip = 0
        except httpx.HTTPError as error:
            raise self._error(error) from None


def open_store(source: ModelSource) -> Store:
    if source.kind == "s3":
        return S3Store(source)
    if source.kind == "gs":
        return GCSStore(source)
    if source.kind == "https":
        return HTTPStore(source)
    raise FetchError(f"{source.display}: {source.kind} sources are not fetched from a store")

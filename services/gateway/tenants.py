"""Tenants: who a request's API key belongs to, which models it may use, and its budgets.

The tenants file (`--tenants_file`, YAML or JSON) lists each tenant with the SHA-256 of its
keys (never the keys themselves), the models it may use and its budgets per minute:

    tenants:
      - name: team-a
        keys: ["sha256:9f86d081…"]          # `python -m services.gateway hash-key`
        models: ["llm", "embed"]            # or "*" (the default): every model
        requests_per_minute: 60             # absent or 0: no request budget
        tokens_per_minute: 20000            # absent or 0: no token budget

`--api_key` stays what it was: its key is one more tenant, `default`, with every model and no
budget. A request's key is `Authorization: Bearer <key>`; the given key is hashed and compared
with every stored hash with `hmac.compare_digest` (the time taken does not depend on which
hash, if any, matched). A key is case-sensitive.

The file is re-read when its modification time changes (`watch`, every `--tenants_reload`
seconds; a mounted Kubernetes secret changes this way too). A file that does not parse at
start fails the start; one that stops parsing later is logged and the tenants already loaded
stay in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.common.errors import InvalidArgument

logger = logging.getLogger(__name__)

HASH_PREFIX = "sha256:"
_HEX = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_TENANT = "default"


def hash_key(key: str) -> str:
    """The stored form of an API key: `sha256:` and the hex digest of its UTF-8 bytes."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Tenant:
    name: str
    #: None: every model the mesh serves.
    models: frozenset[str] | None = None
    requests_per_minute: int = 0
    tokens_per_minute: int = 0

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    @property
    def limited(self) -> bool:
        return self.requests_per_minute > 0 or self.tokens_per_minute > 0


class TenantEntry(BaseModel):
    """One tenant as the file writes it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    keys: list[str] = Field(min_length=1)
    models: list[str] | str = "*"
    requests_per_minute: int = Field(0, ge=0)
    tokens_per_minute: int = Field(0, ge=0)

    @field_validator("keys")
    @classmethod
    def _hashed(cls, keys: list[str]) -> list[str]:
        out = []
        for key in keys:
            digest = key.removeprefix(HASH_PREFIX).lower()
            if not _HEX.match(digest):
                raise ValueError(
                    "keys are SHA-256 hex digests ('sha256:<64 hex digits>', from "
                    "`python -m services.gateway hash-key`), not plain keys"
                )
            out.append(digest)
        return out

    @field_validator("models")
    @classmethod
    def _models(cls, models: list[str] | str) -> list[str] | str:
        if isinstance(models, str) and models != "*":
            raise ValueError('models is a list of model names, or "*" for every model')
        return models

    def tenant(self) -> Tenant:
        models = None if self.models == "*" or "*" in self.models else frozenset(self.models)
        return Tenant(self.name, models, self.requests_per_minute, self.tokens_per_minute)


class TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: list[TenantEntry]


def parse_tenants(text: str, source: str) -> list[tuple[str, Tenant]]:
    """(key digest, tenant) pairs of a tenants file's text; `InvalidArgument` naming what is
    wrong otherwise."""
    try:
        data: Any = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as error:
        raise InvalidArgument(f"tenants file {source} is not YAML/JSON: {error}") from None
    try:
        parsed = TenantsFile.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in error.errors()
        )
        raise InvalidArgument(f"tenants file {source}: {problems}") from None
    pairs: list[tuple[str, Tenant]] = []
    names: set[str] = set()
    owners: dict[str, str] = {}
    for entry in parsed.tenants:
        if entry.name in names:
            raise InvalidArgument(f"tenants file {source}: tenant '{entry.name}' appears twice")
        names.add(entry.name)
        tenant = entry.tenant()
        for digest in entry.keys:
            if digest in owners:
                raise InvalidArgument(
                    f"tenants file {source}: one key is given to both '{owners[digest]}' and "
                    f"'{entry.name}'"
                )
            owners[digest] = entry.name
            pairs.append((digest, tenant))
    return pairs


class TenantDirectory:
    """The tenants in force: the file's and `--api_key`'s."""

    def __init__(self, path: str | None, api_key: str | None = None) -> None:
        self.path = Path(path) if path else None
        self._fixed: list[tuple[bytes, Tenant]] = []
        if api_key:
            digest = hash_key(api_key).removeprefix(HASH_PREFIX)
            self._fixed.append((digest.encode(), Tenant(DEFAULT_TENANT)))
        self._entries: list[tuple[bytes, Tenant]] = list(self._fixed)
        self._stamp: tuple[int, int] | None = None
        if self.path is not None:
            self._load(self._read_stamp())

    @property
    def tenants(self) -> dict[str, Tenant]:
        return {tenant.name: tenant for _, tenant in self._entries}

    def identify(self, authorization: str | None) -> Tenant | None:
        """The tenant of an `Authorization` header's bearer key; None for no or a wrong key."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            return None
        # the header's own bytes (ASGI headers are read as latin-1): a UTF-8 key hashes as
        # `hash_key` hashes it
        given = hashlib.sha256(key.encode("latin-1")).hexdigest().encode()
        found = None
        for digest, tenant in self._entries:
            if hmac.compare_digest(digest, given) and found is None:
                found = tenant
        return found

    def _read_stamp(self) -> tuple[int, int]:
        assert self.path is not None
        try:
            stat = self.path.stat()
        except OSError as error:
            raise InvalidArgument(f"tenants file {self.path}: {error.strerror}") from None
        return stat.st_mtime_ns, stat.st_size

    def _load(self, stamp: tuple[int, int]) -> None:
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidArgument(f"tenants file {self.path}: {error}") from None
        pairs = parse_tenants(text, str(self.path))
        clash = {digest.decode() for digest, _ in self._fixed} & {d for d, _ in pairs}
        if clash:
            raise InvalidArgument(
                f"tenants file {self.path}: a tenant's key is also --api_key's (tenant "
                f"'{DEFAULT_TENANT}')"
            )
        self._entries = [*self._fixed, *((d.encode(), t) for d, t in pairs)]
        self._stamp = stamp
        logger.info("tenants from %s: %s", self.path, ", ".join(sorted(self.tenants)) or "none")

    def reload(self) -> bool:
        """Re-read the file if it changed since the last read; True when new tenants apply.
        A changed file that does not parse is logged and the tenants in force stay."""
        if self.path is None:
            return False
        try:
            stamp = self._read_stamp()
        except InvalidArgument as error:
            logger.warning("%s; keeping the tenants in force", error.message)
            return False
        if stamp == self._stamp:
            return False
        try:
            self._load(stamp)
        except InvalidArgument as error:
            self._stamp = stamp  # reported once per change
            logger.warning("%s; keeping the tenants in force", error.message)
            return False
        return True

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.reload()

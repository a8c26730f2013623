"""The endpoint store: what every source publishes, merged into one view of the mesh.

A source (`static`, `registration`, `kubernetes`) publishes `(service, address, draining)`
entries under its own name; the same address published by two sources is one endpoint, draining
when any of them says so. The health checker marks addresses unhealthy; those are left out of
the view until they are healthy again. Every change bumps `version` and calls the subscribers
(the xDS snapshot cache), on the event loop: sources running in threads hand their updates over
with `loop.call_soon_threadsafe`.

Fallback sources: a source named in `fallback_sources` stands in for a service only while no
other source publishes any endpoint of it. The control plane makes the model list's static
endpoints a fallback in Kubernetes (`--kubernetes`): there they name Services (`hf-m:8081`), and
a Service's ClusterIP spreads calls over the very pods that the EndpointSlices and the pods'
registrations publish by pod IP. Published side by side, one pod would be two replicas (N pods,
N+1), and the one that is a Service would land on any pod, which defeats admission counts and
prefix affinity. Outside Kubernetes every static endpoint is a process of its own (the
launcher's replicas; a compose service, which registers under its service name, the same
address): all sources are merged as equals. A withheld fallback address is still in
`addresses()`, so its health is known by the time it stands in.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

TOKENIZER = "tokenizer"
ENGINE_BACKENDS = ("vllm", "huggingface")
ROLES = (TOKENIZER, *ENGINE_BACKENDS)
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$")


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) → (host, port); ValueError says what is wrong."""
    host, sep, port_text = address.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"address '{address}' is not host:port")
    if not _HOST.match(host):
        raise ValueError(f"address '{address}' has an invalid host")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"address '{address}': port must be in 1..65535")
    return host.strip("[]"), int(port_text)


@dataclass(frozen=True, order=True)
class ServiceKey:
    """One model's tokenizers or one model's engines of one backend."""

    model: str
    role: str

    @property
    def name(self) -> str:
        return f"{self.model}.{self.role}"


@dataclass(frozen=True)
class Publication:
    key: ServiceKey
    address: str
    draining: bool = False


@dataclass(frozen=True, order=True)
class Endpoint:
    host: str
    port: int
    draining: bool = False


class EndpointStore:
    """`models` maps each known model to its backends in order of preference.

    With no known models (no model list), any model name is accepted and prefers vLLM.
    `fallback_sources`: sources whose endpoints of a service count only while no other source
    publishes that service (see the module docstring).
    """

    def __init__(
        self,
        models: Mapping[str, Iterable[str]] | None = None,
        fallback_sources: Iterable[str] = (),
    ) -> None:
        self._models = {name: tuple(backends) for name, backends in (models or {}).items()}
        self._fallback = frozenset(fallback_sources)
        self._sources: dict[str, dict[tuple[ServiceKey, str], bool]] = {}
        self._unhealthy: set[str] = set()
        self._subscribers: list[Callable[[], None]] = []
        self.version = 0

    def is_known_model(self, model: str) -> bool:
        return model in self._models if self._models else bool(model)

    def backends(self, model: str) -> tuple[str, ...]:
        return self._models.get(model) or ENGINE_BACKENDS

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)

    def put(self, source: str, publication: Publication) -> None:
        entries = self._sources.setdefault(source, {})
        slot = (publication.key, publication.address)
        if entries.get(slot) != publication.draining:
            entries[slot] = publication.draining
            self._changed()

    def remove(self, source: str, key: ServiceKey, address: str) -> None:
        if self._sources.get(source, {}).pop((key, address), None) is not None:
            self._changed()

    def replace(self, source: str, publications: Iterable[Publication]) -> None:
        """Set everything `source` publishes at once (a model list, a Kubernetes resync)."""
        entries = {(p.key, p.address): p.draining for p in publications}
        if self._sources.get(source, {}) != entries:
            self._sources[source] = entries
            self._changed()

    def set_healthy(self, address: str, healthy: bool) -> None:
        if healthy == (address not in self._unhealthy):
            return
        if healthy:
            self._unhealthy.discard(address)
        else:
            self._unhealthy.add(address)
        logger.info("endpoint %s is %s", address, "healthy again" if healthy else "withdrawn")
        self._changed()

    def forget(self, address: str) -> None:
        """Drop the health verdict of an address no source publishes any more."""
        self._unhealthy.discard(address)

    def addresses(self) -> set[str]:
        """Every published address, healthy or not (what the health checker probes)."""
        return {address for entries in self._sources.values() for _, address in entries}

    def models(self) -> list[str]:
        published = {key.model for entries in self._sources.values() for key, _ in entries}
        return sorted(set(self._models) | published)

    def services(self) -> dict[ServiceKey, list[Endpoint]]:
        """Every service with its usable endpoints; known models' services appear even empty."""
        merged: dict[ServiceKey, dict[str, bool]] = {}
        for model in self._models:
            for role in (TOKENIZER, *self._models[model]):
                merged.setdefault(ServiceKey(model, role), {})
        covered = {
            key
            for source, entries in self._sources.items()
            if source not in self._fallback
            for key, _ in entries
        }
        for source, entries in self._sources.items():
            for (key, address), draining in entries.items():
                if source in self._fallback and key in covered:
                    continue
                slot = merged.setdefault(key, {})
                slot[address] = slot.get(address, False) or draining
        view: dict[ServiceKey, list[Endpoint]] = {}
        for key, addresses in sorted(merged.items()):
            endpoints = []
            for address, draining in addresses.items():
                if address not in self._unhealthy:
                    host, port = parse_address(address)
                    endpoints.append(Endpoint(host, port, draining))
            view[key] = sorted(endpoints)
        return view

    def _changed(self) -> None:
        self.version += 1
        for callback in self._subscribers:
            callback()

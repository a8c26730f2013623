"""Kubernetes EndpointSlices as an endpoint source (the official `kubernetes` client).

A slice is published when it carries the labels `hfmesh.io/role` (`tokenizer`, `vllm`,
`huggingface`) and `hfmesh.io/model` — put them on the Service; the EndpointSlice controller
copies a Service's labels onto its slices. The port named `grpc` is used, else the slice's
first. Endpoints that are not ready are left out; terminating ones still serving are published
as draining.

The source lists the slices, then watches from the list's resourceVersion. A watch that ends
(the server's timeout) is resumed from the last version seen; one that answers 410 Gone is
followed by a fresh list (a resync); other errors are retried with backoff. It runs in a
thread (the client is synchronous) and hands each new set of publications to the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable
from typing import Any

from kubernetes import client, config, watch

from services.common.errors import InvalidArgument
from services.control_plane.store import ROLES, EndpointStore, Publication, ServiceKey

logger = logging.getLogger(__name__)

SOURCE = "kubernetes"
ROLE_LABEL = "hfmesh.io/role"
MODEL_LABEL = "hfmesh.io/model"
PORT_NAME = "grpc"
HTTP_GONE = 410


def publications_of(slices: Iterable[Any], store: EndpointStore) -> list[Publication]:
    out = []
    for item in slices:
        labels = item.metadata.labels or {}
        role, model = labels.get(ROLE_LABEL), labels.get(MODEL_LABEL, "")
        if role not in ROLES or not store.is_known_model(model):
            logger.debug(
                "skipping EndpointSlice %s (role %s, model %s)", item.metadata.name, role, model
            )
            continue
        ports = [p for p in item.ports or [] if p.port]
        named = [p for p in ports if p.name == PORT_NAME]
        if not ports:
            continue
        port = (named or ports)[0].port
        for endpoint in item.endpoints or []:
            conditions = endpoint.conditions
            ready = conditions is None or conditions.ready is not False
            draining = bool(conditions and conditions.terminating and conditions.serving)
            if not ready and not draining:
                continue
            for host in endpoint.addresses or []:
                address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                out.append(Publication(ServiceKey(model, role), address, draining))
    return out


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def api_client(host: str | None) -> client.ApiClient:
    """`host` given: that API server, no credentials (tests, `kubectl proxy`); else in-cluster."""
    if host is None:
        try:
            config.load_incluster_config()
        except config.ConfigException as error:
            raise InvalidArgument(
                f"--kubernetes needs a pod's service account or --kubernetes_host URL ({error})"
            ) from None
        return client.ApiClient()
    configuration = client.Configuration()
    configuration.host = host
    return client.ApiClient(configuration)


class EndpointSliceSource:
    def __init__(
        self,
        store: EndpointStore,
        api: client.ApiClient,
        *,
        namespace: str,
        watch_timeout: int = 300,
        retry_seconds: float = 1.0,
    ) -> None:
        self._store = store
        self._api = client.DiscoveryV1Api(api)
        self.namespace = namespace
        self.watch_timeout = watch_timeout
        self.retry_seconds = retry_seconds
        self._stopped = threading.Event()
        self._watch: watch.Watch | None = None
        self.lists = 0  # how many times it (re)listed: 1 + resyncs

    async def run(self) -> None:
        """Follow the slices until cancelled.

        The client blocks in reads of a watch for up to `watch_timeout`: the thread is a daemon
        so that it never holds the process at exit, and `stop()` lets it end at its next event.
        """
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def follow() -> None:
            try:
                self._follow(loop)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    loop.call_soon_threadsafe(_settle, finished)

        self._stopped.clear()
        threading.Thread(target=follow, name="endpointslices", daemon=True).start()
        try:
            await finished
        finally:
            self.stop()

    def stop(self) -> None:
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()

    def _follow(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._stopped.is_set():
            try:
                slices, version = self._list(loop)
                self._watch_from(loop, slices, version)
            except client.ApiException as error:
                if error.status == HTTP_GONE:
                    logger.info("EndpointSlice watch expired (410): listing again")
                    continue
                logger.warning("EndpointSlice API error %s: retrying", error.status)
            except Exception as error:  # noqa: BLE001 - the API server may be restarting
                logger.warning("EndpointSlice source failed (%s): retrying", error)
            self._stopped.wait(self.retry_seconds)

    def _list(self, loop: asyncio.AbstractEventLoop) -> tuple[dict[str, Any], str]:
        answer: Any = self._api.list_namespaced_endpoint_slice(
            self.namespace, label_selector=ROLE_LABEL
        )
        self.lists += 1
        slices = {item.metadata.name: item for item in answer.items}
        self._publish(loop, slices)
        return slices, answer.metadata.resource_version

    def _watch_from(
        self, loop: asyncio.AbstractEventLoop, slices: dict[str, Any], version: str
    ) -> None:
        while not self._stopped.is_set():
            self._watch = watch.Watch()
            for event in self._watch.stream(
                self._api.list_namespaced_endpoint_slice,
                self.namespace,
                label_selector=ROLE_LABEL,
                resource_version=version,
                timeout_seconds=self.watch_timeout,
            ):
                item = event["object"]
                if event["type"] == "DELETED":
                    slices.pop(item.metadata.name, None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    slices[item.metadata.name] = item
                self._publish(loop, slices)
            version = self._watch.resource_version or version

    def _publish(self, loop: asyncio.AbstractEventLoop, slices: dict[str, Any]) -> None:
        publications = publications_of(slices.values(), self._store)
        loop.call_soon_threadsafe(self._store.replace, SOURCE, publications)

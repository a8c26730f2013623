"""The store's view rendered as xDS resources (Listener → RouteConfiguration → Cluster → EDS).

Pure functions: `render(store)` returns, per type URL, each resource's name and packed `Any`.
What proxyless gRPC needs and silently breaks without (measured, DESIGN.md §8): the
HttpConnectionManager carries the router filter (a listener without it is NACKed) and every
locality is present and carries `load_balancing_weight` (otherwise each RPC fails with "contains no
localities"). Draining endpoints are listed with `health_status: DRAINING`.
"""

from __future__ import annotations

from typing import Any as AnyMessage

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2, wrappers_pb2

from services.control_plane.store import TOKENIZER, Endpoint, EndpointStore, ServiceKey

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPE_URLS = (LISTENER, ROUTE, CLUSTER, ENDPOINT)

Resources = dict[str, dict[str, any_pb2.Any]]


def _pack(message: AnyMessage) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def listener(name: str) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        rds=hcm_pb2.Rds(config_source=_ads_source(), route_config_name=name),
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=_pack(router_pb2.Router())
            )
        ],
    )
    return listener_pb2.Listener(
        name=name, api_listener=api_listener_pb2.ApiListener(api_listener=_pack(manager))
    )


def route(name: str, cluster: str) -> route_pb2.RouteConfiguration:
    host = route_components_pb2.VirtualHost(
        name=name,
        domains=["*"],
        routes=[
            route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(prefix=""),
                route=route_components_pb2.RouteAction(cluster=cluster),
            )
        ],
    )
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[host])


def cluster(name: str) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads_source()),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
    )


def load_assignment(name: str, endpoints: list[Endpoint]) -> endpoint_pb2.ClusterLoadAssignment:
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    if not endpoints:
        return assignment
    locality = assignment.endpoints.add(
        locality=base_pb2.Locality(), load_balancing_weight=wrappers_pb2.UInt32Value(value=1)
    )
    for item in endpoints:
        lb_endpoint = locality.lb_endpoints.add(
            health_status=(
                health_check_pb2.HealthStatus.DRAINING
                if item.draining
                else health_check_pb2.HealthStatus.HEALTHY
            ),
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(
                        address=item.host, port_value=item.port
                    )
                )
            ),
        )
        lb_endpoint.load_balancing_weight.value = 1
    return assignment


def clusters_of(store: EndpointStore) -> dict[str, list[Endpoint]]:
    """Cluster name → endpoints: one per service, plus `tokenizer`, the union of tokenizers."""
    services = store.services()
    out = {key.name: endpoints for key, endpoints in services.items()}
    union = {e for key, endpoints in services.items() if key.role == TOKENIZER for e in endpoints}
    out[TOKENIZER] = sorted(union)
    return out


def alias_target(store: EndpointStore, model: str, clusters: dict[str, list[Endpoint]]) -> str:
    """The cluster `<model>` routes to: the first backend with an endpoint not draining."""
    names = [ServiceKey(model, backend).name for backend in store.backends(model)]
    names = [name for name in names if name in clusters] or names
    for name in names:
        if any(not e.draining for e in clusters.get(name, [])):
            return name
    return names[0]


def render(store: EndpointStore) -> Resources:
    clusters = clusters_of(store)
    routes = {name: name for name in clusters}
    for model in store.models():
        routes[model] = alias_target(store, model, clusters)
    return {
        LISTENER: {name: _pack(listener(name)) for name in routes},
        ROUTE: {name: _pack(route(name, target)) for name, target in routes.items()},
        CLUSTER: {name: _pack(cluster(name)) for name in clusters},
        ENDPOINT: {name: _pack(load_assignment(name, eps)) for name, eps in clusters.items()},
    }

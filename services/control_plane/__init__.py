"""hfmesh's xDS control plane: service discovery for proxyless gRPC clients (and Envoy).

`python -m services.control_plane --model_list mesh.yaml` serves the Aggregated Discovery
Service (ADS, state of the world) and hfmesh's own `Registration` service on one gRPC port.

Names (one Listener, one RouteConfiguration and, except for aliases, one Cluster and one
ClusterLoadAssignment per service; a client dials `xds:///<service>`):

| service               | what it reaches                                                  |
|-----------------------|------------------------------------------------------------------|
| `tokenizer`           | every tokenizer endpoint of the mesh                             |
| `<model>.tokenizer`   | the tokenizers that serve `<model>`                              |
| `<model>.vllm`        | `<model>`'s vLLM engines                                         |
| `<model>.huggingface` | `<model>`'s HF engines                                           |
| `<model>`             | alias: the route points at `<model>.<backend>` for the first     |
|                       | backend in the model's preference order (resolved backend, then  |
|                       | fallback) that has a usable endpoint; it moves back when the     |
|                       | preferred one recovers                                           |

Endpoint sources, all feeding one `EndpointStore`: the mesh model list (static), the
`Registration` service (leases), Kubernetes EndpointSlices (labels `hfmesh.io/model` and
`hfmesh.io/role`). With `--kubernetes` the model list's endpoints (there: Service names) are a
fallback, published for a service only while no other source publishes one of its pods, so a
pod is one endpoint and never also reached through its Service (`store.py`). Published
endpoints are health-checked over `grpc.health.v1`: one that stops answering SERVING is
withdrawn until it does again; a draining one stays in its ClusterLoadAssignment with
`health_status: DRAINING`, which gRPC clients send no new calls to.
"""

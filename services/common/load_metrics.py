"""The per-model load the gateway exports and the launcher's autoscaler reads.

Engines report their own load to the gateway on every `ModelStreamInfer` call: the initial
metadata `ENGINE_IN_FLIGHT` carries the requests the engine had in flight when the call opened,
from every client (other gateways, direct tritonclient users), so the gateway's routing sees
load it did not send itself.

One gauge, `hfmesh_gateway_model_requests{model, state}`: `running` counts the requests in
flight at the model's engine replicas (queued inside an engine included), `waiting` those the
gateway holds until a replica appears (a model scaled to zero). A model's load is their sum,
what KubeAI's autoscaler counts as active requests. The gateway exports every routed model,
idle ones at 0, so a model missing from a reading is one the gateway does not route.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

MODEL_REQUESTS = "hfmesh_gateway_model_requests"
ENGINE_IN_FLIGHT = "hfmesh-engine-in-flight"
RUNNING, WAITING = "running", "waiting"


def parse_model_load(text: str) -> dict[str, float]:
    """Model → running + waiting requests, from a Prometheus text exposition.

    Raises ValueError on text that is not the Prometheus format.
    """
    loads: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != MODEL_REQUESTS:
            continue
        for sample in family.samples:
            model = sample.labels.get("model")
            if model is not None:
                loads[model] = loads.get(model, 0.0) + sample.value
    return loads

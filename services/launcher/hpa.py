"""A model's `scaling` block as a Kubernetes HorizontalPodAutoscaler (autoscaling/v2).

The same knobs the local autoscaler acts on (`services.launcher.autoscaler`), in the HPA's
terms: `minReplicas`/`maxReplicas`; a `Pods` metric, `hfmesh_engine_requests` (requests running
plus queued in one engine pod), with an `AverageValue` target of `target_requests`; and the
delays as the scale-up and scale-down stabilization windows, which are the same rule (scale to
the least extreme recommendation of the window).

The HPA reads Pods metrics from the custom metrics API, so the cluster needs an adapter that
serves `hfmesh_engine_requests` from the engines' `/metrics` (both engines export vLLM's
`vllm:num_requests_running` and `vllm:num_requests_waiting`). With prometheus-adapter:

```yaml
rules:
  - seriesQuery: 'vllm:num_requests_running{namespace!="",pod!=""}'
    resources: {overrides: {namespace: {resource: namespace}, pod: {resource: pod}}}
    name: {as: hfmesh_engine_requests}
    metricsQuery: >-
      sum by (<<.GroupBy>>) (vllm:num_requests_running{<<.LabelMatchers>>})
      + sum by (<<.GroupBy>>) (vllm:num_requests_waiting{<<.LabelMatchers>>})
```

Scale to zero is not the HPA's: `minReplicas` must be at least 1 (0 needs the alpha
`HPAScaleToZero` gate and an Object or External metric), so `min_replicas: 0` renders as 1;
scaling a Deployment to zero on Kubernetes is KEDA's or KubeAI's job.
"""

from __future__ import annotations

import math
import re
from typing import Any

from services.common.errors import InvalidArgument
from services.common.model_list import ModelEntry

POD_METRIC = "hfmesh_engine_requests"
MAX_STABILIZATION_SECONDS = 3600  # the HPA API's limit


def engine_deployment_name(entry: ModelEntry) -> str:
    """`<backend>-<model>` (the launcher's engine process name) as a DNS-1123 label."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"{entry.backend}-{entry.name}".lower())
    return name.strip("-")[:63].rstrip("-")


def _quantity(value: float) -> str:
    """A Kubernetes quantity: whole numbers as such, fractions in milli-units."""
    if float(value).is_integer():
        return str(int(value))
    return f"{math.ceil(value * 1000)}m"


def _window(seconds: float, key: str) -> int:
    window = math.ceil(seconds)
    if window > MAX_STABILIZATION_SECONDS:
        raise InvalidArgument(
            f"scaling.{key} ({seconds:g}s) exceeds the HPA's "
            f"{MAX_STABILIZATION_SECONDS}s stabilization window limit"
        )
    return window


def hpa_for(entry: ModelEntry, *, deployment: str | None = None) -> dict[str, Any]:
    """The HPA of `entry`'s engine Deployment (named `deployment`, by default
    `engine_deployment_name(entry)`). The entry must carry a `scaling` block."""
    scaling = entry.scaling
    if scaling is None:
        raise InvalidArgument(f"model '{entry.name}' has no scaling block to render as an HPA")
    target = deployment or engine_deployment_name(entry)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": target, "annotations": {"hfmesh.io/model": entry.name}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": max(1, scaling.min_replicas),
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": POD_METRIC},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": _quantity(scaling.target_requests),
                        },
                    },
                }
            ],
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": _window(scaling.scale_up_delay, "scale_up_delay")
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": _window(
                        scaling.scale_down_delay, "scale_down_delay"
                    )
                },
            },
        },
    }

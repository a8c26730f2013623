"""Transformer mode through the control plane: `--predictor_host xds:///<service>` with
`GRPC_XDS_BOOTSTRAP` reaches the replica the control plane publishes (grpcio's xDS resolver)."""

from __future__ import annotations

import numpy as np

from services.common.engine import Task
from services.control_plane.app import ControlPlane
from services.control_plane.bootstrap import write_bootstrap
from services.control_plane.settings import ControlPlaneSettings
from services.control_plane.store import Publication, ServiceKey
from services.tokenizer.predictor import PredictorClient
from tests.fakes import FakeEngine, ready
from tests.unit.gateway.conftest import start_engine


async def test_the_predictor_channel_dials_an_xds_target(tmp_path, monkeypatch):
    engine = FakeEngine([ready("sentiment", Task.SEQUENCE_CLASSIFICATION)])
    engine_runner = await start_engine(engine)
    plane = ControlPlane(ControlPlaneSettings(host="127.0.0.1", port=0, health_interval=0))
    await plane.start()
    address = f"127.0.0.1:{engine_runner.bound_port}"
    plane.store.put("test", Publication(ServiceKey("sentiment", "huggingface"), address))
    bootstrap = tmp_path / "bootstrap.json"
    write_bootstrap(bootstrap, f"127.0.0.1:{plane.runner.bound_port}", "test-tokenizer")
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP", str(bootstrap))
    predictor = PredictorClient("xds:///sentiment.huggingface", timeout=10)
    try:
        tensors = {"input_ids": np.array([[101, 7, 102]]), "attention_mask": np.ones((1, 3))}
        outputs = await predictor.infer("sentiment", tensors, request_id="xds-1")
        assert "logits" in outputs
        assert engine.encodes[-1].request_id.startswith("xds-1")
    finally:
        await predictor.close()
        await plane.stop(None)
        await engine_runner.server.stop(0)

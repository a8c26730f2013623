"""Calls a server with the `kserve` SDK's `InferenceRESTClient`, unmodified, V1 and V2.

Run by the interpreter of a separate virtual environment that holds `kserve` (installing it into
the project's environment would move pinned packages; see docs/protocol.md), so this file imports
only the standard library, numpy and kserve. Reads `{"url": ..., "cases": [...]}` on stdin, each
case `{"model", "protocol": "v1"|"v2", "instances"}` (V1) or `{"model", "protocol": "v2",
"inputs": [{"name", "datatype", "shape", "data"}], "parameters"}` (V2, every input sent with
`set_data_from_numpy`, i.e. binary; outputs asked binary); prints one JSON answer per case:
V1 the predictions, V2 `{output name: {"shape", "datatype", "data"}}`, or `{"error": ...}`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

NUMPY = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "BOOL": np.bool_}


def _array(spec: dict) -> np.ndarray:
    if spec["datatype"] == "BYTES":
        flat = np.array([v.encode() for v in spec["data"]], dtype=np.object_)
        return flat.reshape(spec["shape"])
    return np.array(spec["data"], dtype=NUMPY[spec["datatype"]]).reshape(spec["shape"])


def _plain(value: np.ndarray) -> list:
    flat = value.ravel()
    if value.dtype == np.object_:
        return [v if isinstance(v, str) else bytes(v).decode() for v in flat]
    return flat.tolist()


async def _v2(client: InferenceRESTClient, url: str, case: dict) -> dict:
    inputs = []
    for spec in case["inputs"]:
        tensor = InferInput(spec["name"], spec["shape"], spec["datatype"])
        tensor.set_data_from_numpy(_array(spec))
        inputs.append(tensor)
    parameters = {"binary_data_output": True, **case.get("parameters", {})}
    request = InferRequest(case["model"], inputs, parameters=parameters)
    response = await client.infer(url, request, model_name=case["model"])
    return {
        o.name: {"shape": list(o.shape), "datatype": o.datatype, "data": _plain(o.as_numpy())}
        for o in response.outputs
    }


async def _v1(client: InferenceRESTClient, url: str, case: dict) -> dict:
    response = await client.infer(url, {"instances": case["instances"]}, model_name=case["model"])
    return {"predictions": response["predictions"]}


async def main() -> None:
    job = json.load(sys.stdin)
    answers = []
    clients = {p: InferenceRESTClient(RESTConfig(protocol=p, timeout=120)) for p in ("v1", "v2")}
    for case in job["cases"]:
        client = clients[case["protocol"]]
        call = _v1 if case["protocol"] == "v1" else _v2
        try:
            answer = await call(client, job["url"], case)
            answer["ready"] = await client.is_model_ready(job["url"], case["model"])
        except Exception as error:  # noqa: BLE001 - reported to the test as data
            answer = {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()}
        answers.append(answer)
    live = {p: await c.is_server_live(job["url"]) for p, c in clients.items()}
    ready = await clients["v2"].is_server_ready(job["url"])
    for client in clients.values():
        await client.close()
    json.dump({"answers": answers, "live": live, "ready": ready}, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main())

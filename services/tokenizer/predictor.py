"""The client of the predictor behind the tokenizer in transformer mode.

Any OIP v2 gRPC server works (the HF engine's tensor path, Triton, MLServer):
one `ModelInfer` per request, raw tensors, the request id as metadata, and a
deadline on every call: what is left of the caller's, at most `--predictor_timeout`. The
channel speaks the tokenizer's `--tls_*` (mutual TLS to a mesh engine) when they are set.
"""

from __future__ import annotations

import logging

import grpc
import numpy as np

from services.common import tracing
from services.common.codec import InferRequest, Tensor
from services.common.converters import infer_request_to_pb, infer_response_from_pb
from services.common.errors import from_rpc_error
from services.common.logs import REQUEST_ID_HEADER
from services.common.pb import inference_pb2_grpc as pb_grpc
from services.common.server import MAX_MESSAGE_BYTES, time_left
from services.common.tls import TlsConfig, aio_channel

logger = logging.getLogger(__name__)


class PredictorClient:
    """A long-lived channel to one OIP v2 predictor."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 60.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        tls: TlsConfig | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = aio_channel(
            address,
            tls,
            [
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)

    async def infer(
        self,
        model_name: str,
        tensors: dict[str, np.ndarray],
        *,
        request_id: str,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        request = InferRequest(
            model_name=model_name,
            id=request_id,
            inputs=[
                Tensor(name, "INT64", array.astype(np.int64)) for name, array in tensors.items()
            ],
        )
        try:
            reply = await self._stub.ModelInfer(
                infer_request_to_pb(request, raw=True),
                timeout=time_left(timeout or self.timeout),
                metadata=tracing.with_trace_context(((REQUEST_ID_HEADER, request_id),)),
            )
        except grpc.aio.AioRpcError as error:
            logger.info(
                "predictor %s answered %s: %s", self.address, error.code().name, error.details()
            )
            raise from_rpc_error(error) from None
        response = infer_response_from_pb(reply)
        return {tensor.name: tensor.data for tensor in response.outputs}

    async def close(self) -> None:
        await self._channel.close()

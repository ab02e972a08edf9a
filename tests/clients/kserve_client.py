"""KServe's Python SDK against a live lockgate, as KServe's docs use it; run by
tests/integration/test_ecosystem_clients.py with .venv-clients' interpreter (kserve 0.21 pins
what the server's environment does not). Prints one JSON document of what it got.

Usage: python kserve_client.py BASE_URL GRPC_ADDRESS [API_KEY]
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse, ServerMetadataResponse


async def main(base: str, grpc_address: str, key: str | None) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30, auth=None))
    found: dict = {
        "server_live": await client.is_server_live(base, headers=headers),
        "server_ready": await client.is_server_ready(base, headers=headers),
        "model_ready": await client.is_model_ready(base, "mlp", headers=headers),
    }
    # The SDK's REST client has no metadata call: the answers are read with KServe's own v2 data models.
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        server = ServerMetadataResponse.model_validate((await http.get(f"{base}/v2")).json())
        model = ModelMetadataResponse.model_validate((await http.get(f"{base}/v2/models/mlp")).json())
    found["server_metadata"] = server.model_dump(mode="json")
    found["model_metadata"] = model.model_dump(mode="json")
    x = np.random.default_rng(11).standard_normal((2, 64)).astype(np.float32)
    for binary in (False, True):
        tensor = InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        request = InferRequest(model_name="mlp", infer_inputs=[tensor], request_id=f"kserve-{binary}")
        response = await client.infer(base, request, model_name="mlp", headers=dict(headers or {}))
        out = response.outputs[0]
        found["binary" if binary else "json"] = {
            "id": response.id,
            "model_version": response.model_version,
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.shape),
            "data": out.as_numpy().astype(np.float64).reshape(-1).tolist(),
        }
    found["input"] = x.astype(np.float64).reshape(-1).tolist()
    bad = InferInput("petals", [1, 4], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 4), np.float32), binary_data=False)
    try:
        await client.infer(base, InferRequest(model_name="iris", infer_inputs=[bad]), model_name="iris", headers=headers)
        found["error"] = None
    except httpx.HTTPStatusError as e:
        found["error"] = {"status": e.response.status_code, "message": str(e)}
    await client.close()
    found["grpc"] = await over_grpc(grpc_address, x, key)
    return found


async def over_grpc(address: str, x: np.ndarray, key: str | None) -> dict:
    """KServe's gRPC client (InferenceGRPCClient): readiness and infer, as KServe's docs show."""
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    client = InferenceGRPCClient(address, timeout=30)
    found: dict = {
        "server_ready": await client.is_server_ready(headers=metadata),
        "model_ready": await client.is_model_ready("mlp", headers=metadata),
    }
    tensor = InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    response = await client.infer(
        InferRequest(model_name="mlp", infer_inputs=[tensor], request_id="kserve-grpc"), headers=metadata
    )
    out = response.outputs[0]
    found.update(
        id=response.id,
        model_version=response.model_version,
        name=out.name,
        shape=list(out.shape),
        data=out.as_numpy().astype(np.float64).reshape(-1).tolist(),
    )
    await client.close()
    return found


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))))

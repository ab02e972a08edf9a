"""The OIP JSON response the peers give, so every system answers with the same body."""

from __future__ import annotations


def response(name: str, output_names: list[str], results: list) -> dict:
    return {
        "model_name": name,
        "model_version": "1",
        "outputs": [
            {"name": n, "datatype": "FP32", "shape": list(r.shape), "data": r.reshape(-1).tolist()}
            for n, r in zip(output_names, results)
        ],
    }

"""v2 inference: client mistakes answer 400 with {"error": ...}, never 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import Settings, create_app

URL = "/v2/models/tiny_mfdv/infer"
SHAPE = [1, 1, 14, 14]


@pytest.fixture(scope="module")
def client(hand_checkpoint: Path) -> Iterator[TestClient]:
    app = create_app(Settings(model_dir=hand_checkpoint, device="cpu", max_batch=8, max_wait_ms=1, max_inputs=8))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _image(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "image", "datatype": "FP32", "shape": SHAPE, "data": [0.5] * 196}
    spec.update(overrides)
    return spec


def _req(**overrides: Any) -> dict[str, Any]:
    return {"inputs": [_image()], **overrides}


def _error(r: Any, *fragments: str) -> str:
    assert r.status_code == 400, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    for f in fragments:
        assert f in body["error"], body["error"]
    return body["error"]


def test_datatype_not_a_string(client: TestClient) -> None:
    r = client.post(URL, json={"inputs": [_image(datatype=["FP32"])]})
    _error(r, "datatype", "FP32")


def test_output_name_not_a_string(client: TestClient) -> None:
    _error(client.post(URL, json=_req(outputs=[{"name": ["probs"]}])), "unknown output", "probs")


@pytest.mark.parametrize("oparams", ["x", [1], 3])
def test_output_parameters_not_an_object(client: TestClient, oparams: Any) -> None:
    _error(client.post(URL, json=_req(outputs=[{"name": "probs", "parameters": oparams}])), "parameters", "object")


@pytest.mark.parametrize(
    ("shape", "data"),
    [([4294967296, 4294967296], []), ([2**62, 4, 1, 28, 28], []), ([2**62, 4, 1, 14, 14], [0.5] * 196)],
)
def test_huge_shapes_do_not_wrap(client: TestClient, shape: list[int], data: list[float]) -> None:
    _error(client.post(URL, json={"inputs": [_image(shape=shape, data=data)]}), "shape")


def test_huge_shape_with_binary_size(client: TestClient) -> None:
    spec = _image(shape=[4294967296, 4294967296], parameters={"binary_data_size": 0})
    del spec["data"]
    head = json.dumps({"inputs": [spec]}).encode()
    r = client.post(URL, content=head, headers={"Inference-Header-Content-Length": str(len(head))})
    _error(r, "binary_data_size")


def test_zero_sized_shape_with_too_many_dims(client: TestClient) -> None:
    _error(client.post(URL, json={"inputs": [_image(shape=[0] + [1] * 40, data=[])]}), "dimensions")


@pytest.mark.parametrize("bad", [300, -1, 0.5, 256, 1e300])
def test_uint8_out_of_range_or_fractional(client: TestClient, bad: float) -> None:
    data = [10] * 195 + [bad]
    _error(client.post(URL, json={"inputs": [_image(datatype="UINT8", data=data)]}), "UINT8", "0..255")


def test_uint8_in_range_still_works(client: TestClient) -> None:
    data = [0] * 98 + [255] * 97 + [128.0]
    r = client.post(URL, json={"inputs": [_image(datatype="UINT8", data=data)], "parameters": {"seed": 1}})
    assert r.status_code == 200, r.text


def test_deeply_nested_json(client: TestClient) -> None:
    body = '{"inputs":[' + "[" * 100000 + "]" * 100000 + "]}"
    r = client.post(URL, content=body.encode(), headers={"Content-Type": "application/json"})
    _error(r, "JSON")


@pytest.mark.parametrize("value", ["false", 0, 1, "true"])
def test_binary_data_output_must_be_boolean(client: TestClient, value: Any) -> None:
    r = client.post(URL, json=_req(parameters={"binary_data_output": value}))
    _error(r, "binary_data_output", "boolean")


def test_output_binary_data_must_be_boolean(client: TestClient) -> None:
    r = client.post(URL, json=_req(outputs=[{"name": "probs", "parameters": {"binary_data": "false"}}]))
    _error(r, "binary_data", "boolean")


def test_boolean_flags_still_work(client: TestClient) -> None:
    r = client.post(URL, json=_req(parameters={"binary_data_output": False}, outputs=[{"name": "probs"}]))
    assert r.status_code == 200 and r.json()["outputs"][0]["name"] == "probs"
    r = client.post(URL, json=_req(outputs=[{"name": "label", "parameters": {"binary_data": True}}]))
    assert r.status_code == 200 and "Inference-Header-Content-Length" in r.headers

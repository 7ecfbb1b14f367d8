"""JSON bodies are validated strictly: no silent coercion, no 500 on pathological nesting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings

IMG = [[[0.5] * 14] * 14]


@pytest.fixture(scope="module")
def client(hand_checkpoint: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=hand_checkpoint, device="cpu"))) as c:
        yield c


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("samples", True, "samples: Input should be a valid integer"),
        ("samples", "4", "samples: Input should be a valid integer"),
        ("seed", "5", "seed: Input should be a valid integer"),
        ("seed", False, "seed: Input should be a valid integer"),
        ("return_samples", "yes", "return_samples: Input should be a valid boolean"),
        ("resize", 1, "resize: Input should be a valid boolean"),
    ],
)
def test_predict_rejects_coerced_types(client: TestClient, field: str, value: object, message: str) -> None:
    r = client.post("/v1/predict", json={"inputs": IMG, field: value})
    assert r.status_code == 422
    assert message in r.json()["error"]


def test_predict_still_takes_form_fields_as_text(client: TestClient) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (14, 14), 128).save(buf, format="PNG")
    r = client.post(
        "/v1/predict",
        files={"file": ("a.png", buf.getvalue(), "image/png")},
        data={"samples": "4", "seed": "2", "return_samples": "true"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["samples"] == 4 and r.json()["seed"] == 2


def test_probe_rejects_coerced_types(client: TestClient) -> None:
    r = client.post(
        "/v1/attack-probe", json={"inputs": IMG, "judge_samples": True, "attacks": [{"name": "fgsm", "eps": "0.1"}]}
    )
    assert r.status_code == 422
    err = r.json()["error"]
    assert "judge_samples: Input should be a valid integer" in err
    assert "attacks.0.fgsm.eps: Input should be a valid number" in err


@pytest.mark.parametrize("route", ["/v1/predict", "/v1/attack-probe"])
def test_deeply_nested_json_is_a_400_not_a_500(client: TestClient, route: str) -> None:
    body = b'{"inputs":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    r = client.post(route, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "nests JSON arrays/objects too deeply" in r.json()["error"]


def test_an_integral_number_is_an_integer(client: TestClient) -> None:
    """JSON has one number type: ``5.0`` is the integer 5 (JSON Schema's ``integer``), ``5.5`` is not."""
    r = client.post("/v1/predict", json={"inputs": IMG, "samples": 4.0, "seed": 7.0})
    assert r.status_code == 200, r.text
    assert r.json()["samples"] == 4 and r.json()["seed"] == 7
    assert client.post("/v1/predict", json={"inputs": IMG, "samples": 4.5}).status_code == 422


def test_a_boolean_among_pixels_is_a_400(client: TestClient) -> None:
    img = [[[0.5] * 14] * 13 + [[False] + [0.5] * 13]]
    r = client.post("/v1/predict", json={"inputs": [img]})
    assert r.status_code == 400 and "inputs[0] holds booleans" in r.json()["error"]


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (14, 14), 128).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"resize": "0"}, "resize: Input should be a valid boolean"),
        ({"samples": "4.5"}, "samples: Input should be a valid integer"),
        ({"samples": "null"}, "samples: a form field needs a value"),
    ],
)
def test_form_fields_are_json_scalars(client: TestClient, data: dict[str, str], message: str) -> None:
    r = client.post("/v1/predict", files={"file": ("a.png", _png(), "image/png")}, data=data)
    assert r.status_code == 422 and message in r.json()["error"], r.text


def test_probe_form_fields_need_a_value(client: TestClient) -> None:
    r = client.post("/v1/attack-probe", files={"file": ("a.png", _png(), "image/png")}, data={"attacks": "null"})
    assert r.status_code == 422 and "attacks: a form field needs a value" in r.json()["error"]


@pytest.mark.parametrize(
    ("tensor", "request_id", "message"),
    [
        ({"data": [0.5] * 195 + [True]}, None, "must be numbers"),
        ({"data": [0.5] * 195 + ["0.5"]}, None, "must be numbers"),
        ({}, 5, "`id` must be a string"),
    ],
)
def test_v2_bodies_are_what_the_schema_says(client: TestClient, tensor: dict, request_id: object, message: str) -> None:
    body: dict = {"inputs": [{"name": "image", "shape": [1, 1, 14, 14], "datatype": "FP32", "data": [0.5] * 196}]}
    body["inputs"][0].update(tensor)
    if request_id is not None:
        body["id"] = request_id
    r = client.post("/v2/models/tiny_mfdv/infer", json=body)
    assert r.status_code == 400 and message in r.json()["error"], r.text
    body["inputs"][0]["shape"] = [1.0, 1, 14, 14]  # an integral number is an integer
    body["inputs"][0]["data"] = [0.5] * 196
    body.pop("id", None)
    assert client.post("/v2/models/tiny_mfdv/infer", json=body).status_code == 200


HUGE = "9" * 5000  # over Python's int-string conversion limit (4300 digits)
IMG_JSON = "[[" + ",".join(["[" + ",".join(["0.5"] * 14) + "]"] * 14) + "]]"


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/predict", f'{{"inputs": {IMG_JSON}, "samples": {HUGE}}}'),
        ("/v1/predict", f'{{"inputs": {IMG_JSON}, "seed": -{HUGE}}}'),
        ("/v1/attack-probe", f'{{"inputs": {IMG_JSON}, "labels": [{HUGE}]}}'),
        ("/v1/attack-probe", f'{{"inputs": {IMG_JSON}, "attacks": [{{"name": "pgd", "steps": {HUGE}}}]}}'),
        (
            "/v2/models/tiny_mfdv/infer",
            f'{{"inputs": [{{"name": "image", "shape": [1, 1, 14, 14], "datatype": "FP32", "data": [{HUGE}]}}]}}',
        ),
        (
            "/v2/models/tiny_mfdv/infer",
            '{"inputs": [{"name": "image", "shape": [1, 1, 14, 14], "datatype": "FP32", "data": [0.5]}], '
            f'"parameters": {{"samples": {HUGE}}}}}',
        ),
    ],
)
def test_an_integer_too_long_to_convert_is_a_400_not_a_500(client: TestClient, route: str, body: str) -> None:
    """Python refuses int() of a literal over 4300 digits with a ValueError: no field takes such a number."""
    r = client.post(route, content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert "more than 4300 digits" in r.json()["error"]


@pytest.mark.parametrize(
    ("route", "data"),
    [
        ("/v1/predict", {"samples": HUGE}),
        ("/v1/attack-probe", {"labels": HUGE}),
        ("/v1/attack-probe", {"labels": f"1,{HUGE}"}),
        ("/v1/attack-probe", {"labels": f"[{HUGE}]"}),
        ("/v1/attack-probe", {"attacks": f'[{{"name": "square", "queries": {HUGE}}}]'}),
    ],
)
def test_an_integer_too_long_in_a_form_field_is_a_4xx(client: TestClient, route: str, data: dict[str, str]) -> None:
    r = client.post(route, files={"file": ("a.png", _png(), "image/png")}, data=data)
    assert r.status_code == 400, r.text
    assert "more than 4300 digits" in r.json()["error"]

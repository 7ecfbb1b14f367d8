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

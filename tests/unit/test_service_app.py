"""The app through TestClient: health, readiness, /v1 predict, /v1/models, v2 protocol, metrics, errors."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from models import predict_label, seeded_noise
from service import Settings, create_app
from service.deps import ApiKeyDep
from tests.support.hand_model import expected_logits

SIZE = 14


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def bar_image(cls: int) -> np.ndarray:
    """A clean example of the tiny dataset's class ``cls`` (uint8 [14, 14])."""
    x = np.full((SIZE, SIZE), 20, np.uint8)
    h = SIZE // 2
    region = [np.s_[:h, :], np.s_[h:, :], np.s_[:, :h], np.s_[:, h:]][cls]
    x[region] = 200
    return x


def without_timing(content: bytes) -> bytes:
    head, sep, _ = content.partition(b',"timing":')
    assert sep, "timing must be the last top-level field"
    return head


@pytest.fixture(scope="module")
def app(hand_checkpoint: Path) -> FastAPI:
    return create_app(Settings(model_dir=hand_checkpoint, device="cpu", max_batch=8, max_wait_ms=1, max_inputs=8))


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


# -- health, readiness, metadata ---------------------------------------------------------


def test_not_ready_before_the_lifespan_has_loaded_the_model(hand_checkpoint: Path) -> None:
    app = create_app(Settings(model_dir=hand_checkpoint, device="cpu"))
    c = TestClient(app)  # no `with`: the lifespan does not run
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert r.status_code == 503 and "not loaded" in r.json()["error"] and r.headers["retry-after"]
    assert c.post("/v1/predict", json={"inputs": []}).status_code == 503
    assert c.get("/v2/health/ready").status_code == 503
    assert c.get("/v2/health/live").status_code == 200
    # every route that uses a model: 503 until the lifespan has loaded the repository (AppState.repository)
    assert app.state.mfdv.repository is None
    for method, path in [
        ("GET", "/v1/models"),
        ("GET", "/v1/models/tiny_mfdv"),
        ("POST", "/v1/models/tiny_mfdv/predict"),
        ("POST", "/v1/attack-probe"),
        ("POST", "/v1/models/tiny_mfdv/attack-probe"),
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/repository/models/tiny_mfdv/load"),
        ("POST", "/v2/repository/models/tiny_mfdv/unload"),
        ("GET", "/v2/models/tiny_mfdv"),
        ("GET", "/v2/models/tiny_mfdv/versions/1"),
        ("GET", "/v2/models/tiny_mfdv/ready"),
        ("GET", "/v2/models/tiny_mfdv/versions/1/ready"),
        ("POST", "/v2/models/tiny_mfdv/infer"),
        ("POST", "/v2/models/tiny_mfdv/versions/1/infer"),
    ]:
        r = c.request(method, path, json={"inputs": []} if method == "POST" else None)
        assert r.status_code == 503 and "not loaded" in r.json()["error"], (method, path)


def test_ready_after_startup_and_not_after_shutdown(hand_checkpoint: Path) -> None:
    app = create_app(Settings(model_dir=hand_checkpoint, device="cpu"))
    with TestClient(app) as c:
        assert c.get("/readyz").json()["model"] == "tiny_mfdv"
    assert TestClient(app).get("/readyz").status_code == 503


def test_a_broken_checkpoint_fails_startup(tmp_path: Path) -> None:
    app = create_app(Settings(model_dir=tmp_path / "missing", device="cpu"))
    with pytest.raises(Exception, match="does not exist"), TestClient(app):
        pass
    assert "does not exist" in TestClient(app).get("/readyz").json()["error"]


def test_models_endpoint_describes_the_checkpoint(client: TestClient, hand_checkpoint: Path) -> None:
    info = client.get("/v1/models").json()["models"][0]
    manifest = json.loads((hand_checkpoint / "manifest.json").read_text())
    assert info["name"] == "tiny_mfdv" and len(info["id"]) == 64
    assert info["class_names"] == ["top", "bottom", "left", "right"]
    assert info["input_shape"] == [1, SIZE, SIZE]
    assert info["mi_threshold"] == pytest.approx(0.05)
    assert info["metrics"] == manifest["metrics"] and info["sigma"] == manifest["sigma"]
    assert info["lambda"] == 0.1 and info["method"] == "mfdv" and info["arch"] == "tiny_cnn"
    assert info["backend"] == "onnx" and info["device"] == "cpu"  # MFDV_BACKEND=auto on a CPU
    assert info["samples"] == {"default": 32, "max": 256}


def test_openapi_documents_both_body_types(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/PredictRequest"}
    assert body["multipart/form-data"]["schema"] == {"$ref": "#/components/schemas/PredictForm"}
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/InferenceRequest")


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_openapi_is_valid_and_every_ref_resolves(client: TestClient) -> None:
    from openapi_spec_validator import validate

    spec = client.get("/openapi.json").json()
    validate(spec)
    for ref in set(_refs(spec)):
        target: object = spec
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, f"{ref} does not resolve"
            target = target[part]
    # every error response has the one error shape, 422 included
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for code, response in op["responses"].items():
                if code.startswith("4") or code.startswith("5"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, method, code)


def test_openapi_states_this_deployments_limits(client: TestClient) -> None:
    """Settings (max_inputs=8, max_samples=256) and the model (1x14x14, 4 classes) are in the schema."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]

    def prop(model: str, name: str) -> dict:
        p = schemas[model]["properties"][name]
        return next((b for b in p.get("anyOf", [p]) if b.get("type") != "null"), p)

    for model in ("PredictRequest", "PredictForm"):
        assert prop(model, "samples")["minimum"] == 1 and prop(model, "samples")["maximum"] == 256
        assert (prop(model, "seed")["minimum"], prop(model, "seed")["maximum"]) == (0, 2**63 - 1)
    assert prop("PredictForm", "file")["maxItems"] == 8 and prop("PredictForm", "file")["minItems"] == 1
    inputs = prop("PredictRequest", "inputs")
    assert inputs["maxItems"] == 8
    pixels = inputs["items"]["anyOf"][0]
    assert [pixels["maxItems"], pixels["items"]["maxItems"], pixels["items"]["items"]["maxItems"]] == [1, 14, 14]
    assert pixels["items"]["items"]["items"] == {"type": "number", "minimum": 0, "maximum": 1}
    assert prop("ProbeRequest", "judge_samples")["maximum"] == 256
    assert prop("ProbeRequest", "labels")["items"] == {"type": "integer", "minimum": 0, "maximum": 3}
    assert prop("ProbeRequest", "inputs")["maxItems"] == 64  # MFDV_MAX_PROBE_INPUTS
    assert prop("PGD", "eps")["maximum"] == 0.3 and prop("MinEps", "hi")["maximum"] == 0.3
    assert prop("Square", "samples")["maximum"] == 256


def test_a_limit_is_one_type_validated_with_the_apps_settings() -> None:
    """``samples`` is ``Samples`` in /v1 and v2 alike: the default filled in, the range from the settings
    given as validation context (a 400 naming the setting), and no silent pass without them."""
    from pydantic import BaseModel

    from service.schemas.limits import OutOfRange, validation_context
    from service.schemas.predict import PredictOptions
    from service.schemas.v2 import RequestParameters

    s = Settings(default_samples=4, max_samples=8)
    models: tuple[type[BaseModel], ...] = (PredictOptions, RequestParameters)
    for model in models:
        assert model.model_validate({}, context=validation_context(s)).samples == 4  # type: ignore[attr-defined]
        assert model.model_validate({"samples": 8}, context=validation_context(s)).samples == 8  # type: ignore[attr-defined]
        with pytest.raises(OutOfRange, match=r"between 1 and 8 \(MFDV_MAX_SAMPLES\); got 9"):
            model.model_validate({"samples": 9}, context=validation_context(s))
        with pytest.raises(RuntimeError, match="without the app's settings"):
            model.model_validate({"samples": 2})


# -- /v1/predict ------------------------------------------------------------------------------


def test_predict_json_arrays_classifies_and_reports_uncertainty(client: TestClient) -> None:
    inputs = [(bar_image(c)[None] / 255.0).tolist() for c in range(4)]
    r = client.post("/v1/predict", json={"inputs": inputs, "samples": 16, "seed": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["samples"] == 16 and body["seed"] == 3 and body["model"] == "tiny_mfdv"
    assert [p["label"] for p in body["predictions"]] == [0, 1, 2, 3]
    for p in body["predictions"]:
        assert p["class_name"] == ["top", "bottom", "left", "right"][p["label"]]
        assert sum(p["probs"]) == pytest.approx(1.0, abs=1e-5)
        u = p["uncertainty"]
        assert u["predictive_entropy"] >= u["expected_entropy"] - 1e-6
        assert u["mutual_information"] >= 0 and 0 < u["vote_agreement"] <= 1 and u["top_prob_stderr"] >= 0
        assert p["flagged"] == (u["mutual_information"] > 0.05)
        assert "draws" not in p
    assert set(body["timing"]) == {"queue_ms", "compute_ms", "total_ms", "batch_size"}


def test_predict_matches_the_hand_computed_answer(client: TestClient) -> None:
    """The hand-set model's logits are ``SCALE * (region means) + SCALE * SIGMA * noise``, noise from the seed."""
    x = torch.from_numpy(bar_image(2)[None, None] / 255.0).float()
    r = client.post("/v1/predict", json={"inputs": [x[0].tolist()], "samples": 8, "seed": 11})
    logits = expected_logits(x, seeded_noise(8, 4, 11))  # (8, 1, 4)
    probs = torch.softmax(logits.double(), -1).mean(0)[0]
    p = r.json()["predictions"][0]
    assert p["probs"] == pytest.approx(probs.tolist(), abs=1e-6)
    assert p["label"] == 2 == int(predict_label(logits)[0]) and p["class_name"] == "left"


def test_same_seed_same_bytes_other_seed_other_answer(client: TestClient) -> None:
    req = {"inputs": [np.full((SIZE, SIZE), 0.5).tolist()], "samples": 8, "seed": 5}
    a, b = client.post("/v1/predict", json=req), client.post("/v1/predict", json=req)
    assert without_timing(a.content) == without_timing(b.content)
    c = client.post("/v1/predict", json={**req, "seed": 6})
    assert c.json()["predictions"][0]["probs"] != a.json()["predictions"][0]["probs"]


def test_missing_seed_is_chosen_and_returned(client: TestClient) -> None:
    req = {"inputs": [np.full((SIZE, SIZE), 0.3).tolist()], "samples": 4}
    first = client.post("/v1/predict", json=req)
    seed = first.json()["seed"]
    again = client.post("/v1/predict", json={**req, "seed": seed})
    assert without_timing(first.content) == without_timing(again.content)


def test_default_samples_and_return_samples(client: TestClient) -> None:
    r = client.post("/v1/predict", json={"inputs": [np.zeros((SIZE, SIZE)).tolist()], "return_samples": True})
    body = r.json()
    assert body["samples"] == 32
    draws = np.array(body["predictions"][0]["draws"])
    assert draws.shape == (32, 4)
    assert draws.mean(0) == pytest.approx(body["predictions"][0]["probs"], abs=1e-5)


def test_predict_png_base64_and_multipart_agree_with_arrays(client: TestClient) -> None:
    img = bar_image(1)
    arr = (img.astype(np.float32) / 255)[None].tolist()  # the float32 pixels a PNG decodes to
    b64 = base64.b64encode(png(img)).decode()
    opts = {"samples": 8, "seed": 9}
    by_array = client.post("/v1/predict", json={"inputs": [arr], **opts}).json()["predictions"]
    by_b64 = client.post("/v1/predict", json={"inputs": [b64, f"data:image/png;base64,{b64}"], **opts}).json()
    files = [("file", ("a.png", png(img), "image/png")), ("file", ("b.png", png(img), "image/png"))]
    by_form = client.post("/v1/predict", files=files, data={"samples": "8", "seed": "9"}).json()
    assert by_b64["predictions"][0] == by_b64["predictions"][1] == by_array[0]
    assert by_form["predictions"] == by_b64["predictions"] and by_form["samples"] == 8


def test_colour_jpeg_and_resize_on_request(client: TestClient) -> None:
    rgb = np.stack([bar_image(3)] * 3, axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    r = client.post("/v1/predict", files=[("file", ("a.jpg", buf.getvalue(), "image/jpeg"))])
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] == 3
    big = np.asarray(Image.fromarray(bar_image(0)).resize((56, 56), Image.Resampling.NEAREST))
    rejected = client.post("/v1/predict", json={"inputs": [base64.b64encode(png(big)).decode()]})
    assert rejected.status_code == 400 and "14x14" in rejected.json()["error"]
    r = client.post("/v1/predict", json={"inputs": [base64.b64encode(png(big)).decode()], "resize": True})
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] == 0
    r = client.post("/v1/predict", files=[("file", ("a.png", png(big), "image/png"))], data={"resize": "true"})
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] == 0


def test_vanilla_model_has_no_uncertainty(hand_vanilla_checkpoint: Path) -> None:
    app = create_app(Settings(model_dir=hand_vanilla_checkpoint, device="cpu"))
    with TestClient(app) as c:
        r = c.post("/v1/predict", json={"inputs": [(bar_image(0) / 255.0).tolist()], "samples": 8})
    u = r.json()["predictions"][0]["uncertainty"]
    assert u["mutual_information"] == pytest.approx(0.0, abs=1e-6) and u["vote_agreement"] == 1.0


# -- Open Inference Protocol v2 -----------------------------------------------------------------


def test_v2_server_and_model_metadata(client: TestClient) -> None:
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "model_repository"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/tiny_mfdv/ready").json() == {"name": "tiny_mfdv", "ready": True}
    assert client.get("/v2/models/tiny_mfdv/versions/1/ready").json() == {"name": "tiny_mfdv", "ready": True}
    meta = client.get("/v2/models/tiny_mfdv").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, SIZE, SIZE]}]
    assert {o["name"] for o in meta["outputs"]} >= {"probs", "label", "mutual_information", "flagged"}
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/tiny_mfdv/versions/7"):
        r = client.get(path)
        assert r.status_code == 404 and set(r.json()) == {"error"}


def _v2_json(client: TestClient, x: np.ndarray, **params: object) -> dict:
    req = {
        "id": "r1",
        "inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        "parameters": params,
    }
    r = client.post("/v2/models/tiny_mfdv/infer", json=req)
    assert r.status_code == 200, r.text
    return r.json()


def test_v2_json_infer_matches_v1(client: TestClient) -> None:
    x = np.stack([bar_image(c)[None] / 255.0 for c in range(4)]).astype(np.float32)
    v2 = _v2_json(client, x, samples=8, seed=4)
    assert v2["id"] == "r1" and v2["model_name"] == "tiny_mfdv"
    assert v2["parameters"]["samples"] == 8 and v2["parameters"]["seed"] == 4
    out = {o["name"]: o for o in v2["outputs"]}
    v1 = client.post("/v1/predict", json={"inputs": x.tolist(), "samples": 8, "seed": 4}).json()["predictions"]
    assert out["probs"]["shape"] == [4, 4]
    assert out["probs"]["data"] == [v for p in v1 for v in p["probs"]]
    assert out["label"]["data"] == [0, 1, 2, 3] and out["label"]["datatype"] == "INT64"
    assert out["class_name"]["data"] == ["top", "bottom", "left", "right"]
    assert out["mutual_information"]["data"] == [p["uncertainty"]["mutual_information"] for p in v1]
    assert out["flagged"]["data"] == [p["flagged"] for p in v1]


def test_v2_binary_tensors_in_and_out(client: TestClient) -> None:
    x = np.stack([bar_image(c)[None] / 255.0 for c in (3, 0)]).astype(np.float32)
    header = {
        "inputs": [
            {
                "name": "image",
                "shape": [2, 1, SIZE, SIZE],
                "datatype": "FP32",
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "outputs": [
            {"name": "probs", "parameters": {"binary_data": True}},
            {"name": "class_name", "parameters": {"binary_data": True}},
            {"name": "flagged", "parameters": {"binary_data": True}},
            {"name": "label", "parameters": {"binary_data": False}},
        ],
        "parameters": {"samples": 8, "seed": 4},
    }
    head = json.dumps(header).encode()
    r = client.post(
        "/v2/models/tiny_mfdv/infer",
        content=head + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    blob = r.content[n:]
    outs = {o["name"]: o for o in meta["outputs"]}
    assert outs["label"]["data"] == [3, 0]
    size_p = outs["probs"]["parameters"]["binary_data_size"]
    probs = np.frombuffer(blob[:size_p], dtype="<f4").reshape(2, 4)
    json_probs = _v2_json(client, x, samples=8, seed=4)["outputs"][0]["data"]
    np.testing.assert_allclose(probs.ravel(), json_probs, rtol=1e-6)
    size_c = outs["class_name"]["parameters"]["binary_data_size"]
    names, off = [], size_p
    while off < size_p + size_c:
        (length,) = struct.unpack_from("<I", blob, off)
        names.append(blob[off + 4 : off + 4 + length].decode())
        off += 4 + length
    assert names == ["right", "top"]
    assert len(blob) == size_p + size_c + outs["flagged"]["parameters"]["binary_data_size"] == size_p + size_c + 2


def test_v2_uint8_and_gzip_bodies(client: TestClient) -> None:
    import gzip

    img = bar_image(2)[None, None]
    req = {
        "inputs": [{"name": "image", "shape": [1, 1, SIZE, SIZE], "datatype": "UINT8", "data": img.ravel().tolist()}]
    }
    req["parameters"] = {"seed": 1, "samples": 4}
    body = gzip.compress(json.dumps(req).encode())
    r = client.post("/v2/models/tiny_mfdv/infer", content=body, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    fp32 = _v2_json(client, (img / 255.0).astype(np.float32), seed=1, samples=4)
    assert r.json()["outputs"] == fp32["outputs"]


# -- metrics, errors, extension points ------------------------------------------------------------


def test_metrics_are_exposed_with_their_labels(client: TestClient) -> None:
    client.post("/v1/predict", json={"inputs": [np.zeros((SIZE, SIZE)).tolist()], "samples": 4})
    client.post("/v1/predict", json={"inputs": [[0.5]]})
    text = client.get("/metrics").text
    assert 'mfdv_requests_total{method="POST",route="/v1/predict",status="200"}' in text
    assert 'mfdv_requests_total{method="POST",route="/v1/predict",status="400"}' in text
    assert 'mfdv_request_latency_seconds_count{route="/v1/predict"}' in text
    for name in ("mfdv_queue_seconds", "mfdv_compute_seconds", "mfdv_batch_size", "mfdv_samples"):
        assert f"{name}_count" in text and f"{name}_bucket" in text
    assert "mfdv_mutual_information_bucket" in text and "mfdv_inflight_requests" in text
    assert 'mfdv_model_info{arch="tiny_cnn",backend="onnx",dataset="tiny",device="cpu",method="mfdv"' in text
    for name in ("mfdv_attack_total", "mfdv_attack_success_total", "mfdv_attack_duration_seconds"):
        assert f"# TYPE {name.removesuffix('_total')}" in text
    client.get("/no/such/path")
    assert 'route="unmatched"' in client.get("/metrics").text


def test_two_apps_in_one_process_keep_separate_metrics(hand_checkpoint: Path, client: TestClient) -> None:
    other = create_app(Settings(model_dir=hand_checkpoint, device="cpu"))
    with TestClient(other) as c:
        text = c.get("/metrics").text
    assert 'route="/v1/predict"' not in text


def test_unexpected_errors_are_a_generic_500_without_internals(hand_checkpoint: Path) -> None:
    app = create_app(Settings(model_dir=hand_checkpoint, device="cpu"))
    boom = APIRouter()

    @boom.get("/boom")
    async def explode() -> None:
        raise RuntimeError("secret internal detail")

    app.include_router(boom)
    with TestClient(app) as c:
        r = c.get("/boom")
        assert r.status_code == 500
        assert "secret" not in r.text and "Traceback" not in r.text and set(r.json()) == {"error"}
        assert 'route="/boom",status="500"' in c.get("/metrics").text


def test_api_key_dependency_for_protected_routes(hand_checkpoint: Path) -> None:
    probe = APIRouter()

    @probe.get("/protected")
    async def protected(_: ApiKeyDep) -> dict[str, bool]:
        return {"ok": True}

    for key, headers, status in [
        (None, {}, 200),
        ("", {}, 200),
        ("s3cret", {}, 401),
        ("s3cret", {"X-API-Key": "wrong"}, 401),
        ("s3cret", {"X-API-Key": "s3cret"}, 200),
    ]:
        app = create_app(Settings(model_dir=hand_checkpoint, device="cpu", api_key=key))
        app.include_router(probe)
        r = TestClient(app).get("/protected", headers=headers)
        assert r.status_code == status, (key, headers)
        if status == 401:
            assert "X-API-Key" in r.json()["error"]
            assert r.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'  # RFC 9110: a 401 names its scheme


@pytest.mark.parametrize("route", ["/v1/predict", "/v2/models/tiny_mfdv/infer"])
def test_responses_are_built_off_the_event_loop(
    hand_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    """A big response (``return_samples``: megabytes) is rendered in the compute thread: while one is held
    half-built, the event loop still answers ``/healthz``."""
    from service.routes import predict as predict_route
    from service.routes import v2 as v2_route

    rendering, release = threading.Event(), threading.Event()

    def held(real: Any) -> Any:
        def render(*args: Any, **kwargs: Any) -> Any:
            rendering.set()
            assert release.wait(60), "the test never released the render"
            return real(*args, **kwargs)

        return render

    monkeypatch.setattr(predict_route, "render_prediction", held(predict_route.render_prediction))
    monkeypatch.setattr(v2_route, "infer_response", held(v2_route.infer_response))
    img = bar_image(0).astype(np.float32) / 255
    body = (
        {"inputs": [img.tolist()], "samples": 256, "return_samples": True}
        if route == "/v1/predict"
        else {
            "inputs": [{"name": "image", "shape": [1, 1, SIZE, SIZE], "datatype": "FP32", "data": img.ravel().tolist()}]
        }
    )
    app = create_app(Settings(model_dir=hand_checkpoint, device="cpu", max_wait_ms=0))
    with TestClient(app) as c:
        result: dict[str, Any] = {}
        t = threading.Thread(target=lambda: result.setdefault("r", c.post(route, json=body)))
        t.start()
        try:
            assert rendering.wait(60), "the response was never rendered"
            health: dict[str, Any] = {}
            h = threading.Thread(target=lambda: health.setdefault("r", c.get("/healthz")))
            h.start()
            h.join(60)  # a render on the event loop would block this until the release below
            assert health.get("r") is not None and health["r"].status_code == 200
            assert not result  # ...while the response was still being built
        finally:
            release.set()
            t.join(60)
    assert result["r"].status_code == 200

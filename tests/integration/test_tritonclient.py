"""The Open Inference Protocol v2 routes driven by a stock client: ``tritonclient.http`` (binary and JSON)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.server import ServerProcess

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")
from tritonclient.utils import InferenceServerException  # noqa: E402

SIZE = 14
MODEL = "tiny_mfdv"
OUTPUTS = ["probs", "label", "class_name", "predictive_entropy", "mutual_information", "flagged"]


@pytest.fixture(scope="module")
def server(hand_checkpoint: Path) -> Iterator[ServerProcess]:
    with ServerProcess(hand_checkpoint, args=["--device", "cpu", "--no-access-log"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(url=f"{server.host}:{server.port}")
    yield c
    c.close()


def bars() -> np.ndarray:
    """One clean image per class of the tiny dataset: [4, 1, 14, 14] float32."""
    x = np.full((4, 1, SIZE, SIZE), 0.08, np.float32)
    h = SIZE // 2
    x[0, :, :h, :] = x[1, :, h:, :] = x[2, :, :, :h] = x[3, :, :, h:] = 0.8
    return x


def infer(
    client: httpclient.InferenceServerClient, x: np.ndarray, binary: bool, **params: int
) -> httpclient.InferResult:
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]
    return client.infer(MODEL, [inp], outputs=outputs, parameters=params or None)


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("other")
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["inputs"][0]["shape"] == [-1, 1, SIZE, SIZE]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_classifies_and_reports_uncertainty(client: httpclient.InferenceServerClient, binary: bool) -> None:
    result = infer(client, bars(), binary, samples=16, seed=7)
    probs = result.as_numpy("probs")
    assert probs.shape == (4, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert result.as_numpy("label").tolist() == [0, 1, 2, 3]
    assert [s.decode() if isinstance(s, bytes) else s for s in result.as_numpy("class_name")] == [
        "top",
        "bottom",
        "left",
        "right",
    ]
    assert result.as_numpy("flagged").dtype == np.bool_
    assert (result.as_numpy("mutual_information") >= 0).all()
    assert result.get_response()["parameters"]["seed"] == 7


def test_binary_and_json_modes_agree_with_v1(client: httpclient.InferenceServerClient, server: ServerProcess) -> None:
    x = bars()
    b = infer(client, x, True, samples=8, seed=3)
    j = infer(client, x, False, samples=8, seed=3)
    np.testing.assert_array_equal(b.as_numpy("probs"), j.as_numpy("probs"))
    v1 = httpx.post(f"{server.url}/v1/predict", json={"inputs": x.tolist(), "samples": 8, "seed": 3}).json()
    np.testing.assert_array_equal(b.as_numpy("probs"), np.array([p["probs"] for p in v1["predictions"]], np.float32))


def test_default_outputs_and_gzip_request(client: httpclient.InferenceServerClient) -> None:
    inp = httpclient.InferInput("image", [4, 1, SIZE, SIZE], "FP32")
    inp.set_data_from_numpy(bars())
    result = client.infer(MODEL, [inp], parameters={"seed": 1}, request_compression_algorithm="gzip")
    names = {o["name"] for o in result.get_response()["outputs"]}
    assert {"probs", "label", "expected_entropy", "vote_agreement", "top_prob_stderr"} <= names
    assert result.as_numpy("label").tolist() == [0, 1, 2, 3]


def test_errors_reach_the_client_as_messages(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        inp = httpclient.InferInput("image", [1, 1, SIZE, SIZE], "FP32")
        inp.set_data_from_numpy(bars()[:1])
        client.infer("nope", [inp])
    with pytest.raises(InferenceServerException, match=r"expects \[B, 1, 14, 14\]"):
        infer(client, np.zeros((1, 1, 7, 7), np.float32), True)
    with pytest.raises(InferenceServerException, match="must be in"):
        infer(client, bars() * 3, True)
    with pytest.raises(InferenceServerException, match="'samples' must be in"):
        infer(client, bars(), True, samples=100000)

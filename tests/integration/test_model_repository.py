"""The model repository against real ``python -m service`` processes: two worker processes kept in step,
load/unload/reload under concurrent traffic, a corrupted version refused, and tritonclient's repository calls.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.server import REPO, ServerProcess

SIZE = 14
SAMPLE = sorted((REPO / "samples").glob("*.png"))[0]
# Admission's expected-wait refusals off (they are tested in test_overload.py): on a loaded test machine they
# would shed some of the traffic with 503s whatever the repository does; here a non-200 can only come from it.
ENV = {"MFDV_WORKERS": "2", "MFDV_MAX_QUEUE_DELAY_MS": "0"}


def v2_body(size: int, value: float = 0.5) -> dict:
    return {
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, size, size], "data": [value] * size * size}]
    }


def copy_as(src: Path, dst: Path, name: str) -> Path:
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["name"] = name
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


async def hammer(url: str, body: dict, stop: asyncio.Event, clients: int = 32) -> Counter[object]:
    """``clients`` closed-loop clients posting ``body`` until ``stop``; the statuses they got (and the
    model versions of the 200s as ``("version", v)``)."""
    seen: Counter[object] = Counter()

    async def one() -> None:
        async with httpx.AsyncClient(timeout=60) as c:
            while not stop.is_set():
                try:
                    r = await c.post(url, json=body)
                except httpx.HTTPError as e:
                    seen[type(e).__name__] += 1
                    continue
                seen[r.status_code] += 1
                if r.status_code == 200 and "model_version" in r.json():
                    seen["version", r.json()["model_version"]] += 1

    await asyncio.gather(*(one() for _ in range(clients)))
    return seen


def post(url: str, **kw: object) -> httpx.Response:
    return httpx.post(url, timeout=120, **kw)  # type: ignore[arg-type]


# -- the committed checkpoints, two workers (what scripts/serve runs) ---------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[ServerProcess]:
    args = ["--device", "cpu", "--no-access-log"]
    with ServerProcess(REPO / "checkpoints", repository=True, env=ENV, args=args) as s:
        yield s


def test_both_committed_checkpoints_are_listed_and_answer_differently(served: ServerProcess) -> None:
    index = post(f"{served.url}/v2/repository/index").json()
    assert [(e["name"], e["state"]) for e in index] == [
        ("fashion_mnist_mfdv", "READY"),
        ("fashion_mnist_vanilla", "READY"),
    ]
    image = base64.b64encode(SAMPLE.read_bytes()).decode()
    answers = {
        name: post(f"{served.url}/v1/models/{name}/predict", json={"inputs": [image], "seed": 5}).json()
        for name in ("fashion_mnist_mfdv", "fashion_mnist_vanilla")
    }
    mfdv, vanilla = answers["fashion_mnist_mfdv"], answers["fashion_mnist_vanilla"]
    assert mfdv["model"] == "fashion_mnist_mfdv" and vanilla["model"] == "fashion_mnist_vanilla"
    assert mfdv["predictions"][0]["probs"] != vanilla["predictions"][0]["probs"]
    default = post(f"{served.url}/v1/predict", json={"inputs": [image], "seed": 5}).json()
    assert default["predictions"] == mfdv["predictions"]  # the stochastic one is the default


def test_unload_and_load_of_one_model_under_traffic_on_the_other(served: ServerProcess) -> None:
    """32 clients on the default model while the other is unloaded and loaded three times: every answer 200.
    While it is unloaded, every worker answers its requests 404 (new connections reach both workers)."""
    url = served.url
    other = f"{url}/v2/models/fashion_mnist_vanilla/infer"

    async def scenario() -> tuple[Counter[object], list[list[int]]]:
        stop = asyncio.Event()
        traffic = asyncio.create_task(hammer(f"{url}/v2/models/fashion_mnist_mfdv/infer", v2_body(28), stop))
        cycles = []
        async with httpx.AsyncClient(timeout=120) as c:
            for _ in range(3):
                r = await c.post(f"{url}/v2/repository/models/fashion_mnist_vanilla/unload")
                assert r.status_code == 200, r.text
                statuses = []
                for _ in range(6):
                    async with httpx.AsyncClient(timeout=60) as fresh:  # a new connection each: both workers
                        r = await fresh.post(other, json=v2_body(28))
                        statuses.append(r.status_code)
                        assert "error" in r.json()
                r = await c.post(f"{url}/v2/repository/models/fashion_mnist_vanilla/load")
                assert r.status_code == 200, r.text
                for _ in range(6):
                    async with httpx.AsyncClient(timeout=60) as fresh:
                        statuses.append((await fresh.post(other, json=v2_body(28))).status_code)
                cycles.append(statuses)
        stop.set()
        return await traffic, cycles

    seen, cycles = asyncio.run(scenario())
    print(f"traffic on the other model: {dict(seen)}; vanilla per cycle: {cycles}")
    statuses = {k for k in seen if not isinstance(k, tuple)}
    assert statuses == {200}, seen
    assert seen[200] > 100
    for statuses_of_cycle in cycles:
        assert statuses_of_cycle == [404] * 6 + [200] * 6, cycles


# -- a repository of its own: versions, a corrupted one, tritonclient --------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, hand_checkpoint: Path, hand_vanilla_checkpoint: Path) -> Path:
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(hand_checkpoint, root / "tiny_mfdv")
    shutil.copytree(hand_vanilla_checkpoint, root / "tiny_vanilla" / "1")
    return root


@pytest.fixture(scope="module")
def own(repo: Path) -> Iterator[ServerProcess]:
    args = ["--device", "cpu", "--no-access-log"]
    with ServerProcess(repo, repository=True, env=ENV, args=args) as s:
        yield s


def test_reload_to_a_new_version_under_traffic_and_a_corrupted_version_refused(
    own: ServerProcess, repo: Path, hand_checkpoint: Path
) -> None:
    """Traffic on ``tiny_vanilla`` while it moves from version 1 to 2, then a corrupted version 3 is offered:
    no request fails; after the load answers, every worker serves version 2; version 3 is refused with its reason
    and version 2 keeps serving."""
    url = f"{own.url}/v2/models/tiny_vanilla/infer"

    async def scenario() -> tuple[Counter[object], Counter[object], str, Counter[object]]:
        async with httpx.AsyncClient(timeout=120) as c:
            stop = asyncio.Event()
            traffic = asyncio.create_task(hammer(url, v2_body(SIZE), stop, clients=16))
            await asyncio.sleep(1.0)
            copy_as(hand_checkpoint, repo / "tiny_vanilla" / "2", "tiny_vanilla")
            r = await c.post(f"{own.url}/v2/repository/models/tiny_vanilla/load")
            assert r.status_code == 200 and r.json()["version"] == "2", r.text
            stop.set()
            during = await traffic
            stop = asyncio.Event()
            traffic = asyncio.create_task(hammer(url, v2_body(SIZE), stop, clients=16))
            await asyncio.sleep(1.0)
            stop.set()
            after = await traffic
            bad = copy_as(hand_checkpoint, repo / "tiny_vanilla" / "3", "tiny_vanilla")
            raw = bytearray((bad / "model.onnx").read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            (bad / "model.onnx").write_bytes(bytes(raw))
            stop = asyncio.Event()
            traffic = asyncio.create_task(hammer(url, v2_body(SIZE), stop, clients=16))
            refused = await c.post(f"{own.url}/v2/repository/models/tiny_vanilla/load")
            assert refused.status_code == 400, refused.text
            await asyncio.sleep(1.0)
            stop.set()
            return during, after, refused.json()["error"], await traffic

    during, after, why, later = asyncio.run(scenario())
    print(f"during the reload: {dict(during)}; after: {dict(after)}; after the refused load: {dict(later)}")
    assert {k for k in during if not isinstance(k, tuple)} == {200}, during
    assert {k for k in after if not isinstance(k, tuple)} == {200} and set(after) == {200, ("version", "2")}, after
    assert "version 3" in why and "sha256" in why and "version 2 keeps serving" in why
    assert set(later) == {200, ("version", "2")}, later
    index = {e["name"]: e for e in post(f"{own.url}/v2/repository/index").json()}
    assert (index["tiny_vanilla"]["version"], index["tiny_vanilla"]["state"]) == ("2", "READY")
    shutil.rmtree(repo / "tiny_vanilla" / "3")


def test_tritonclient_repository_calls(own: ServerProcess) -> None:
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is a dev dependency")
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=f"{own.host}:{own.port}")
    try:
        index = {e["name"]: e for e in client.get_model_repository_index()}
        assert set(index) == {"tiny_mfdv", "tiny_vanilla"} and index["tiny_mfdv"]["state"] == "READY"
        client.unload_model("tiny_mfdv")
        assert not client.is_model_ready("tiny_mfdv")
        assert client.is_model_ready("tiny_vanilla")
        client.load_model("tiny_mfdv")
        assert client.is_model_ready("tiny_mfdv")
        x = np.full((1, 1, SIZE, SIZE), 0.5, np.float32)
        inp = httpclient.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        assert client.infer("tiny_mfdv", [inp]).as_numpy("probs").shape == (1, 4)
        with pytest.raises(InferenceServerException, match="no model 'nope'"):
            client.load_model("nope")
    finally:
        client.close()

"""The model repository in one process (``service.compute.repository``, ``/v2/repository/*``, ``/v1/models``).

The real-server tests (several worker processes, traffic during load/unload, tritonclient) are in
``tests/integration/test_model_repository.py``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import create_app
from service.compute.repository import read_source, scan
from service.config import Settings

SIZE = 14
KEY = "repository-test-key"
AUTH = {"X-API-Key": KEY}


def copy_as(src: Path, dst: Path, name: str | None = None) -> Path:
    """``src`` copied to ``dst``; with ``name``, its manifest renamed (a new version of another model)."""
    shutil.copytree(src, dst)
    if name is not None:
        m = json.loads((dst / "manifest.json").read_text())
        m["name"] = name
        (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.fixture
def repo(tmp_path: Path, hand_checkpoint: Path, hand_vanilla_checkpoint: Path) -> Path:
    """``tiny_mfdv`` (one checkpoint, version 1) and ``tiny_vanilla`` as version folder ``1``, plus a folder
    that is not a model."""
    root = tmp_path / "repo"
    copy_as(hand_checkpoint, root / "tiny_mfdv")
    copy_as(hand_vanilla_checkpoint, root / "tiny_vanilla" / "1")
    (root / "notes").mkdir()
    (root / "notes" / "README.md").write_text("not a model")
    return root


def client_for(repo: Path, **kw: object) -> TestClient:
    settings = Settings(model_repository=repo, device="cpu", api_key=KEY, **kw)  # type: ignore[arg-type]
    return TestClient(create_app(settings))


def predict(c: TestClient, path: str = "/v1/predict", seed: int = 3) -> dict:
    x = np.full((SIZE, SIZE), 0.08)
    x[: SIZE // 2] = 0.8
    r = c.post(path, json={"inputs": [x.tolist()], "samples": 16, "seed": seed})
    assert r.status_code == 200, r.text
    return r.json()


def test_scan_names_models_by_manifest_and_says_why_a_folder_is_not_one(repo: Path, hand_checkpoint: Path) -> None:
    copy_as(hand_checkpoint, repo / "zz_copy", name="tiny_mfdv")  # a second folder with the same name, later in order
    sources, skipped = scan(sorted(p for p in repo.iterdir()))
    assert sorted(sources) == ["tiny_mfdv", "tiny_vanilla"]
    assert sources["tiny_vanilla"].versions == {"1": repo / "tiny_vanilla" / "1"}
    assert any("notes is not a model" in s for s in skipped)
    assert any("zz_copy is left out" in s and "'tiny_mfdv'" in s for s in skipped)
    copy_as(hand_checkpoint, repo / "tiny_vanilla" / "10", name="tiny_vanilla")
    copy_as(hand_checkpoint, repo / "tiny_vanilla" / "9", name="tiny_vanilla")
    assert list(read_source(repo / "tiny_vanilla").versions) == ["1", "9", "10"]  # numeric order: 10 is newest
    assert read_source(repo / "tiny_vanilla").latest == "10"
    with pytest.raises(Exception, match="does not exist"):
        read_source(repo / "missing")


def test_both_models_serve_and_the_unnamed_routes_go_to_the_default(repo: Path) -> None:
    with client_for(repo) as c:
        listed = c.get("/v1/models").json()
        assert listed["default"] == "tiny_mfdv"  # first in name order (no MFDV_DEFAULT_MODEL)
        assert [(m["name"], m["version"], m["default"]) for m in listed["models"]] == [
            ("tiny_mfdv", "1", True),
            ("tiny_vanilla", "1", False),
        ]
        default, mfdv, vanilla = (
            predict(c),
            predict(c, "/v1/models/tiny_mfdv/predict"),
            predict(c, "/v1/models/tiny_vanilla/predict"),
        )
        assert default["predictions"] == mfdv["predictions"] and default["model"] == "tiny_mfdv"
        assert vanilla["model"] == "tiny_vanilla" and vanilla["model_id"] != mfdv["model_id"]
        assert vanilla["predictions"][0]["probs"] != mfdv["predictions"][0]["probs"]
        detail = c.get("/v1/models/tiny_vanilla").json()
        assert detail["manifest"]["name"] == "tiny_vanilla" and detail["method"] == "vanilla"
        r = c.get("/v1/models/nope")
        assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    with client_for(repo, default_model="tiny_vanilla") as c:
        assert predict(c)["model"] == "tiny_vanilla"
    with (
        pytest.raises(Exception, match="default model 'nope' is not in the repository"),
        client_for(repo, default_model="nope"),
    ):
        pass


def test_index_unload_load_and_the_api_key(repo: Path) -> None:
    with client_for(repo) as c:
        assert c.post("/v2/repository/index").status_code == 401  # the key guards the repository routes
        index = c.post("/v2/repository/index", headers=AUTH).json()
        assert [(e["name"], e["version"], e["state"]) for e in index] == [
            ("tiny_mfdv", "1", "READY"),
            ("tiny_vanilla", "1", "READY"),
        ]
        r = c.post("/v2/repository/models/tiny_vanilla/unload", headers=AUTH)
        assert r.status_code == 200 and r.json()["state"] == "UNAVAILABLE"
        for path in ["/v1/models/tiny_vanilla/predict", "/v2/models/tiny_vanilla/infer"]:
            r = c.post(path, json={"inputs": []})
            assert r.status_code == 404 and "is not loaded (unloaded)" in r.json()["error"], (path, r.text)
        assert c.get("/v2/models/tiny_vanilla/ready").status_code == 404
        assert predict(c, "/v1/models/tiny_mfdv/predict")["model"] == "tiny_mfdv"  # the other keeps serving
        assert [m["name"] for m in c.get("/v1/models").json()["models"]] == ["tiny_mfdv"]
        ready = c.post("/v2/repository/index", headers=AUTH, json={"ready": True}).json()
        assert [e["name"] for e in ready] == ["tiny_mfdv"]
        assert c.post("/v2/repository/models/tiny_vanilla/load", headers=AUTH).status_code == 200
        assert predict(c, "/v1/models/tiny_vanilla/predict")["model"] == "tiny_vanilla"
        r = c.post("/v2/repository/models/nope/load", headers=AUTH)
        assert r.status_code == 404 and "no model 'nope' in the repository" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{", "JSON"),
        (b'{"parameters": {"config": "{}"}}', "config"),
        (b'{"parameters": {"version": [2]}}', "version"),
        (b"[]", "object"),
    ],
)
def test_a_bad_load_body_is_a_400_that_says_what_to_send(repo: Path, body: bytes, fragment: str) -> None:
    with client_for(repo) as c:
        r = c.post("/v2/repository/models/tiny_vanilla/load", headers=AUTH, content=body)
        assert r.status_code == 400 and fragment in r.json()["error"], r.text


def test_a_new_version_replaces_the_old_and_a_corrupted_one_is_refused(repo: Path, hand_checkpoint: Path) -> None:
    with client_for(repo) as c:
        before = predict(c, "/v1/models/tiny_vanilla/predict")
        copy_as(hand_checkpoint, repo / "tiny_vanilla" / "2", name="tiny_vanilla")  # the mfdv weights as version 2
        r = c.post("/v2/repository/models/tiny_vanilla/load", headers=AUTH)
        assert r.status_code == 200 and r.json()["version"] == "2"
        after = predict(c, "/v1/models/tiny_vanilla/predict")
        assert after["model_id"] != before["model_id"] and after["predictions"] != before["predictions"]
        v2 = c.post("/v2/models/tiny_vanilla/versions/2/infer", json=v2_body()).json()
        assert v2["model_version"] == "2"
        r = c.post("/v2/models/tiny_vanilla/versions/1/infer", json=v2_body())
        assert r.status_code == 404 and "serves version '2', not '1'" in r.json()["error"]
        # version 3, corrupted: refused with the reason, version 2 keeps serving
        bad = copy_as(hand_checkpoint, repo / "tiny_vanilla" / "3", name="tiny_vanilla")
        weights = bad / "weights.safetensors"
        raw = bytearray(weights.read_bytes())
        raw[-1] ^= 0xFF
        weights.write_bytes(bytes(raw))
        r = c.post("/v2/repository/models/tiny_vanilla/load", headers=AUTH)
        assert r.status_code == 400, r.text
        assert "version 3" in r.json()["error"] and "sha256" in r.json()["error"]
        assert "version 2 keeps serving" in r.json()["error"]
        assert predict(c, "/v1/models/tiny_vanilla/predict")["model_id"] == after["model_id"]
        index = {e["name"]: e for e in c.post("/v2/repository/index", headers=AUTH).json()}
        assert (index["tiny_vanilla"]["version"], index["tiny_vanilla"]["state"]) == ("2", "READY")
        # told otherwise: version 1 again
        r = c.post("/v2/repository/models/tiny_vanilla/load", headers=AUTH, json={"parameters": {"version": 1}})
        assert r.status_code == 200 and r.json()["version"] == "1"
        assert predict(c, "/v1/models/tiny_vanilla/predict")["model_id"] == before["model_id"]
        r = c.post("/v2/repository/models/tiny_vanilla/load", headers=AUTH, json={"parameters": {"version": "7"}})
        assert r.status_code == 404 and "no version '7'" in r.json()["error"]


def test_a_model_whose_manifest_names_another_is_refused(repo: Path, hand_checkpoint: Path) -> None:
    with client_for(repo) as c:
        copy_as(hand_checkpoint, repo / "tiny_vanilla" / "2")  # its manifest says tiny_mfdv
        # the folder's name now comes from its newest version: tiny_mfdv twice, the second left out
        r = c.post("/v2/repository/models/tiny_vanilla/load", headers=AUTH)
        assert r.status_code == 404, r.text
        assert predict(c, "/v1/models/tiny_vanilla/predict")["model"] == "tiny_vanilla"  # still serving version 1


def test_the_cap_on_loaded_models(repo: Path) -> None:
    with client_for(repo, max_loaded_models=1) as c:
        index = {e["name"]: e for e in c.post("/v2/repository/index", headers=AUTH).json()}
        assert index["tiny_mfdv"]["state"] == "READY"  # the default first
        assert index["tiny_vanilla"]["state"] == "UNAVAILABLE"
        assert "MFDV_MAX_LOADED_MODELS" in index["tiny_vanilla"]["reason"]
        r = c.post("/v2/repository/models/tiny_vanilla/load", headers=AUTH)
        assert r.status_code == 409 and "unload one first" in r.json()["error"]
        assert c.post("/v2/repository/models/tiny_mfdv/load", headers=AUTH).status_code == 200  # a reload fits
        assert c.post("/v2/repository/models/tiny_mfdv/unload", headers=AUTH).status_code == 200
        r = c.post("/v1/predict", json={"inputs": []})
        assert r.status_code == 404 and "'tiny_mfdv' is not loaded" in r.json()["error"]  # the default is gone
        assert c.get("/readyz").status_code == 404
        assert c.post("/v2/repository/models/tiny_vanilla/load", headers=AUTH).status_code == 200


def test_per_model_metrics(repo: Path) -> None:
    with client_for(repo) as c:
        predict(c, "/v1/models/tiny_vanilla/predict")
        text = c.get("/metrics").text
        assert 'mfdv_samples_count{model="tiny_vanilla",version="1"} 1.0' in text
        assert "mfdv_model_info{" in text and 'model="tiny_vanilla"' in text
        c.post("/v2/repository/models/tiny_vanilla/unload", headers=AUTH)
        info = [line for line in c.get("/metrics").text.splitlines() if line.startswith("mfdv_model_info{")]
        assert any('model="tiny_vanilla"' in line and line.endswith(" 0.0") for line in info), info
        assert any('model="tiny_mfdv"' in line and line.endswith(" 1.0") for line in info), info


def v2_body() -> dict:
    return {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, SIZE, SIZE], "data": [0.5] * SIZE * SIZE}]}


@pytest.fixture
def single(hand_checkpoint: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=hand_checkpoint, device="cpu"))) as c:
        yield c


def test_model_dir_is_a_repository_of_one(single: TestClient) -> None:
    listed = single.get("/v1/models").json()
    assert listed["default"] == "tiny_mfdv" and [m["name"] for m in listed["models"]] == ["tiny_mfdv"]
    index = single.post("/v2/repository/index").json()  # no key configured: open
    assert [(e["name"], e["state"]) for e in index] == [("tiny_mfdv", "READY")]


def test_a_version_with_a_bad_flag_is_refused_at_load_and_a_reload_stays_counted(
    repo: Path, hand_checkpoint: Path
) -> None:
    """A manifest whose `flag` is not a rule fails its load (the old version keeps serving), not every answer
    after it; reloading the same version leaves its `mfdv_model_info` at 1."""
    with client_for(repo) as c:
        before = predict(c, "/v1/models/tiny_vanilla/predict")
        bad = copy_as(hand_checkpoint, repo / "tiny_vanilla" / "2", name="tiny_vanilla")
        m = json.loads((bad / "manifest.json").read_text())
        m["flag"] = {"signal": "entropy", "threshold": 0.1}
        (bad / "manifest.json").write_text(json.dumps(m))
        r = c.post("/v2/repository/models/tiny_vanilla/load", headers=AUTH)
        assert r.status_code == 400 and "`flag` is not a flag rule" in r.json()["error"], r.text
        assert predict(c, "/v1/models/tiny_vanilla/predict")["model_id"] == before["model_id"]
        assert c.post("/v2/repository/models/tiny_mfdv/load", headers=AUTH).status_code == 200  # same version
        info = [line for line in c.get("/metrics").text.splitlines() if line.startswith("mfdv_model_info{")]
        assert any('model="tiny_mfdv"' in line and line.endswith(" 1.0") for line in info), info


def test_the_start_refuses_a_default_model_that_is_not_there(hand_checkpoint: Path) -> None:
    from service.__main__ import check_repository

    problem = check_repository(Settings(model_dir=hand_checkpoint, default_model="nope"))
    assert problem is not None and "default model 'nope' is not in the repository" in problem
    assert check_repository(Settings(model_dir=hand_checkpoint)) is None

"""``POST /v1/attack-probe`` through TestClient: report, defaults, images, caps, key, metrics, isolation."""

from __future__ import annotations

import base64
import io
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from service import Settings, create_app
from service.probe import runner as probe_runner

SIZE = 14
EPS = 0.1
PGD = {"name": "pgd", "eps": EPS, "steps": 5, "eot": 4}
FGSM = {"name": "fgsm", "eps": EPS}


def bar_image(cls: int) -> np.ndarray:
    """A clean example of the tiny dataset's class ``cls`` (uint8 [14, 14])."""
    x = np.full((SIZE, SIZE), 20, np.uint8)
    h = SIZE // 2
    region = [np.s_[:h, :], np.s_[h:, :], np.s_[:, :h], np.s_[:, h:]][cls]
    x[region] = 200
    return x


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def arrays(classes: list[int]) -> list[list[list[float]]]:
    return [(bar_image(c) / 255.0).tolist() for c in classes]


def settings(model_dir: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {"model_dir": model_dir, "device": "cpu", "max_batch": 8, "max_wait_ms": 1}
    return Settings(**{**base, **kw})


@pytest.fixture(scope="module")
def app(hand_checkpoint: Path) -> FastAPI:
    return create_app(
        settings(
            hand_checkpoint,
            max_probe_inputs=4,
            max_probe_gradient_budget=2000,
            max_probe_queries=400,
            max_probe_eps=0.25,
        )
    )


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def post(client: TestClient, body: dict[str, Any], **kw: Any) -> Any:
    return client.post("/v1/attack-probe", json=body, **kw)


# -- the report ---------------------------------------------------------------------------


def test_happy_path_reports_every_field(client: TestClient) -> None:
    body = {
        "inputs": arrays([0, 1, 2]),
        "labels": [0, 1, 2],
        "attacks": [FGSM, PGD, {"name": "surrogate", "eps": EPS, "steps": 3}],
        "judge_samples": 16,
        "seed": 7,
    }
    r = post(client, body)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["model"] == "tiny_mfdv" and len(d["model_id"]) == 64
    assert d["partial"] is False and d["partial_reason"] is None and d["skipped_attacks"] == []
    req = d["request"]
    assert req["inputs"] == 3 and req["labels"] == "given" and req["judge_samples"] == 16 and req["seed"] == 7
    assert [a["name"] for a in req["attacks"]] == ["fgsm", "pgd", "surrogate"]
    pgd = req["attacks"][1]
    assert pgd["eps"] == EPS and pgd["steps"] == 5 and pgd["eot"] == 4 and pgd["alpha"] == pytest.approx(EPS / 4)
    # backbone passes x inputs (EOT draws share their step's pass): fgsm 1 x 3; pgd 5 x 3; surrogate 3 x 3
    assert req["cost"] == {"gradient": 3 + 15 + 9, "queries": 0, "max_gradient": 2000, "max_queries": 400}
    assert d["seed"] == 7 and d["judge_samples"] == 16 and isinstance(d["mi_threshold"], float)
    assert [c["true_label"] for c in d["clean"]] == [0, 1, 2]
    assert [a["name"] for a in d["attacks"]] == ["fgsm", "pgd", "surrogate"]
    for a in d["attacks"]:
        assert a["settings"] and a["seed"] >= 0 and a["wall_time_s"] >= 0 and len(a["success_ci"]) == 2
        assert len(a["inputs"]) == 3
        for res in a["inputs"]:
            assert isinstance(res["success"], bool) and res["success"] == (res["adv_label"] != res["true_label"])
            assert 0 <= res["flip_ci"][0] <= res["flip_prob"] <= res["flip_ci"][1] <= 1
            assert len(res["mean_probs"]) == 4 and abs(sum(res["mean_probs"]) - 1) < 1e-4
            assert res["linf"] <= EPS + 1e-6 and res["l0"] >= 0 and res["l2"] >= 0
            assert isinstance(res["flagged"], bool) and isinstance(res["fools_after_rounding"], bool)
            assert res["grad_evals"] >= 1 and "adversarial" not in res
    assert d["summary"]["clean_accuracy"] == 1.0
    assert [s["name"] for s in d["summary"]["attacks"]] == ["fgsm", "pgd", "surrogate"]
    t = d["timing"]
    assert t["total_ms"] >= t["probe_ms"] > 0 and t["queue_ms"] >= 0 and t["limit_s"] == 60


def test_same_seed_same_report(client: TestClient) -> None:
    body = {"inputs": arrays([3]), "attacks": [PGD], "judge_samples": 8, "seed": 3}

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        for key in ("timing", "summary"):
            d.pop(key)
        for a in d["attacks"]:
            a.pop("wall_time_s")
        return d

    assert strip(post(client, body).json()) == strip(post(client, body).json())


def test_labels_default_to_the_clean_prediction(client: TestClient) -> None:
    inputs = arrays([0, 1, 2, 3])
    d = post(client, {"inputs": inputs, "attacks": [FGSM], "judge_samples": 16, "seed": 1}).json()
    assert d["request"]["labels"] == "clean_prediction"
    predicted = client.post("/v1/predict", json={"inputs": inputs, "samples": 64, "seed": 0}).json()
    assert [c["true_label"] for c in d["clean"]] == [p["label"] for p in predicted["predictions"]] == [0, 1, 2, 3]
    assert all(c["correct"] for c in d["clean"])
    # A wrong label is kept as given (and the clean input then counts as misclassified).
    d = post(client, {"inputs": inputs[:1], "labels": [3], "attacks": [FGSM], "seed": 1}).json()
    assert d["clean"][0]["true_label"] == 3 and d["clean"][0]["correct"] is False


def test_default_attacks_run_at_the_default_eps(client: TestClient) -> None:
    """No attacks named: fgsm, pgd and surrogate with their specs' defaults, at ``default_eps`` (0.1 up to 28x28)."""
    r = post(client, {"inputs": arrays([0]), "judge_samples": 8, "seed": 0})
    assert r.status_code == 200, r.text
    attacks = r.json()["request"]["attacks"]
    assert [a["name"] for a in attacks] == ["fgsm", "pgd", "surrogate"]
    assert all(a["eps"] == 0.1 for a in attacks)
    assert attacks[1]["steps"] == 20 and attacks[1]["eot"] == 16 and attacks[1]["alpha"] == pytest.approx(0.025)


def test_adversarial_png_has_the_input_shape_and_stays_within_eps(client: TestClient) -> None:
    images = [bar_image(c) for c in (0, 2)]
    body = {
        "inputs": [base64.b64encode(png(im)).decode() for im in images],
        "labels": [0, 2],
        "attacks": [PGD, FGSM],
        "return_adversarial": True,
        "seed": 2,
    }
    d = post(client, body).json()
    for a in d["attacks"]:
        for im, res in zip(images, a["inputs"], strict=True):
            with Image.open(io.BytesIO(base64.b64decode(res["adversarial"]))) as adv_im:
                assert adv_im.format == "PNG" and adv_im.size == (SIZE, SIZE) and adv_im.mode == "L"
                adv = np.asarray(adv_im).astype(np.float64) / 255
            delta = np.abs(adv - im / 255.0).max()
            assert delta <= EPS + 1 / 255
            assert delta > 0  # the attack moved something


def test_multipart_files_with_labels_and_attacks_as_form_fields(client: TestClient) -> None:
    files = [("file", ("a.png", png(bar_image(1)), "image/png")), ("file", ("b.png", png(bar_image(3)), "image/png"))]
    data = {"labels": "1,3", "attacks": '[{"name": "fgsm", "eps": 0.1}]', "seed": "4", "judge_samples": "8"}
    r = client.post("/v1/attack-probe", files=files, data=data)
    assert r.status_code == 200, r.text
    d = r.json()
    assert [c["true_label"] for c in d["clean"]] == [1, 3] and d["seed"] == 4 and d["judge_samples"] == 8
    assert [a["name"] for a in d["attacks"]] == ["fgsm"]
    r = client.post("/v1/attack-probe", files=files[:1], data={"labels": "[1]", "attacks": "published", "seed": "4"})
    assert r.status_code == 200, r.text
    assert [a["name"] for a in r.json()["attacks"]] == ["published"] and r.json()["attacks"][0]["kind"] == "suite"
    r = client.post("/v1/attack-probe", files=files[:1], data={"labels": "2", "attacks": "[{bad json"})
    assert r.status_code == 400 and "attacks" in r.json()["error"]
    r = client.post("/v1/attack-probe", files=files[:1], data={"label": "2"})
    assert r.status_code == 400 and "labels" in r.json()["error"]


def test_wall_time_limit_returns_partial_results(hand_checkpoint: Path) -> None:
    with TestClient(create_app(settings(hand_checkpoint, max_probe_seconds=1e-6))) as c:
        d = post(c, {"inputs": arrays([0]), "attacks": [FGSM, PGD], "seed": 0}).json()
    assert d["partial"] is True and "MFDV_MAX_PROBE_SECONDS" in d["partial_reason"]
    assert d["skipped_attacks"] == ["pgd"] and [a["name"] for a in d["attacks"]] == ["fgsm"]


def test_the_wall_time_limit_stops_an_attack_between_steps(hand_checkpoint: Path) -> None:
    """The deadline is checked inside an attack: a long PGD stops at once, and the report says so."""
    long_pgd = {**PGD, "steps": 10_000, "eot": 1}
    app = create_app(settings(hand_checkpoint, max_probe_seconds=1e-6, max_probe_gradient_budget=100_000))
    with TestClient(app) as c:
        d = post(c, {"inputs": arrays([0]), "labels": [0], "attacks": [long_pgd, FGSM], "seed": 0}).json()
    assert d["partial"] is True and d["skipped_attacks"] == ["fgsm"]
    assert "stopped before its budget was spent: ['pgd']" in d["partial_reason"]
    assert "MFDV_MAX_PROBE_SECONDS" in d["partial_reason"]
    (pgd,) = d["attacks"]
    assert pgd["grad_evals"] < 10_000 and "wall-time limit" in pgd["info"]["stopped"]


LONG = 3.0  # s: long enough for an attack to start on one tiny input, far shorter than its budget


@pytest.mark.parametrize(
    ("attack", "work"),
    [
        # 200,000 queries on one input: minutes of work; eps so small (and 16 draws a query) nothing flips
        ({"name": "square", "eps": 1e-4, "queries": 200_000, "samples": 16}, "queries"),
        # bisection rounds of 20,000-step PGD each
        ({"name": "min_eps", "hi": 0.01, "steps": 20_000, "eot": 1, "iters": 6, "samples": 1}, "grad_evals"),
        ({"name": "apgd", "eps": 1e-4, "steps": 100_000, "eot": 1}, "grad_evals"),
    ],
)
def test_the_wall_time_limit_holds_inside_a_long_attack(
    hand_checkpoint: Path, attack: dict[str, Any], work: str
) -> None:
    """The attack starts, works, and is stopped between its steps (queries, bisection rounds) by
    the deadline: the report is partial, the attack says it was stopped, and it did some but not
    all of its work. Judged by the report, not by a clock."""
    caps = {"max_probe_gradient_budget": 10**7, "max_probe_queries": 10**7, "max_probe_seconds": LONG}
    with TestClient(create_app(settings(hand_checkpoint, **caps))) as c:
        r = post(c, {"inputs": arrays([0]), "labels": [0], "attacks": [attack, FGSM], "judge_samples": 8, "seed": 0})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["partial"] is True and d["skipped_attacks"] == ["fgsm"]
    assert f"stopped before its budget was spent: ['{attack['name']}']" in d["partial_reason"]
    assert "MFDV_MAX_PROBE_SECONDS" in d["partial_reason"]
    (entry,) = d["attacks"]
    assert "wall-time limit" in entry["info"]["stopped"]
    budget = attack["queries"] if work == "queries" else attack["steps"]
    assert 0 < entry[work] < budget


def test_the_wall_time_limit_stops_a_suite_between_its_attacks_steps(hand_checkpoint: Path) -> None:
    caps = {"max_probe_gradient_budget": 10**7, "max_probe_queries": 10**7, "max_probe_seconds": 1e-6}
    with TestClient(create_app(settings(hand_checkpoint, **caps))) as c:
        r = post(c, {"inputs": arrays([0]), "labels": [0], "attacks": "standard", "judge_samples": 8, "seed": 0})
    assert r.status_code == 200, r.text
    d = r.json()
    (entry,) = d["attacks"]
    assert d["partial"] is True and "stopped before its budget was spent: ['standard']" in d["partial_reason"]
    assert entry["info"]["suite"]["complete"] is False and "wall-time limit" in entry["info"]["stopped"]


def test_a_cancelled_probe_stops_between_steps(hand_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelling the request (a client gone, the grace period over) stops its attack at the next step."""
    started = threading.Event()
    real = probe_runner.StopCheck.__call__

    def check(self: probe_runner.StopCheck) -> bool:
        started.set()
        return real(self)

    monkeypatch.setattr(probe_runner.StopCheck, "__call__", check)
    model = create_app(settings(hand_checkpoint))
    with TestClient(model) as c:
        state = c.app.state.mfdv  # type: ignore[attr-defined]
        from models.attacks import AttackCost, make_attack
        from service.probe.runner import ProbeJob

        items = [make_attack("pgd", eps=1e-4, steps=10**7, eot=1).resolve((1, SIZE, SIZE))]
        job = ProbeJob(torch.tensor(arrays([0])).unsqueeze(1), torch.tensor([0]), items, 8, 0, False, AttackCost())
        cancel = threading.Event()
        out: dict[str, Any] = {}
        t = threading.Thread(
            target=lambda: out.setdefault(
                "run",
                probe_runner.run_probe(
                    state.ready().probe_model,
                    job,
                    mi_threshold=0.05,
                    deadline=float("inf"),
                    limit_s=60,
                    metrics=state.metrics,
                    model_name="tiny_mfdv",
                    threads=1,
                    cancelled=cancel,
                ),
            )
        )
        t.start()
        assert started.wait(60)
        cancel.set()
        t.join(120)
        assert not t.is_alive(), "the attack did not stop"
    run = out["run"]
    assert run.partial_reason and "cancelled" in run.partial_reason
    assert 0 < run.report.attacks[0].grad_evals < 10**7


def test_a_suite_is_one_entry_with_its_worst_case_per_input(client: TestClient) -> None:
    body = {"inputs": arrays([0, 1]), "labels": [0, 1], "attacks": "published", "judge_samples": 8, "seed": 0}
    r = post(client, body)
    assert r.status_code == 200, r.text
    d = r.json()
    (entry,) = d["attacks"]
    assert entry["name"] == "published" and entry["kind"] == "suite" and entry["eps"] == 0.1
    assert entry["info"]["suite"]["suite"] == "published" and len(entry["info"]["suite"]["per_attack"]) == 1
    assert [r["info"]["fooled_by"] for r in entry["inputs"]] == [0 if r["success"] else -1 for r in entry["inputs"]]
    # published: PGD, 10 steps x 2 inputs, plus judging the clean inputs and the attack's output
    assert d["request"]["cost"]["gradient"] == (10 + 2) * 2
    assert d["request"]["attacks"][0]["judge"] == "single_draw"


def test_the_adaptive_suite_is_a_suite_name_the_probe_takes(client: TestClient) -> None:
    r = post(client, {"inputs": arrays([0]), "labels": [0], "attacks": "adaptive", "judge_samples": 8, "seed": 0})
    # either it ran, or it was refused for its cost: never for its name
    assert r.status_code in (200, 422), r.text
    if r.status_code == 422:
        assert "over the limit" in r.json()["error"] and "adaptive" in r.json()["error"], r.text
    else:
        assert r.json()["attacks"][0]["name"] == "adaptive"


def test_a_suite_counts_against_the_caps(client: TestClient) -> None:
    # standard on one input: 408 gradient units (fits this client's 2000) and 1,000 Square queries (its cap: 400)
    r = post(client, {"inputs": arrays([0]), "attacks": [{"suite": "standard", "eps": 0.05}]})
    assert r.status_code == 422, r.text
    assert "MFDV_MAX_PROBE_QUERIES" in r.json()["error"] and "standard: 1000" in r.json()["error"]


# -- errors and caps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"inputs": arrays([0, 1, 2, 3, 0]), "attacks": [FGSM]}, "MFDV_MAX_PROBE_INPUTS"),
        ({"inputs": arrays([0]), "attacks": [{**PGD, "eps": 0.3}]}, "MFDV_MAX_PROBE_EPS"),
        ({"inputs": arrays([0]), "attacks": [{"name": "min_eps", "eps": EPS, "hi": 0.5}]}, "MFDV_MAX_PROBE_EPS"),
        ({"inputs": arrays([0, 1]), "attacks": [{**PGD, "steps": 1001}]}, "MFDV_MAX_PROBE_GRADIENT_BUDGET"),
        (
            {"inputs": arrays([0, 1]), "attacks": [{"name": "square", "eps": EPS, "queries": 300}]},
            "MFDV_MAX_PROBE_QUERIES",
        ),
        ({"inputs": arrays([0]), "attacks": [{"name": "cw"}]}, "does not match any of the expected tags: 'apgd'"),
        ({"inputs": arrays([0]), "attacks": [{"name": "pgd", "eps": EPS, "stepz": 3}]}, "pgd.stepz: Extra inputs"),
        ({"inputs": arrays([0]), "attacks": [{"name": "pgd", "eps": EPS, "steps": 0}]}, "steps"),
        ({"inputs": arrays([0]), "attacks": [{"name": "pgd", "eps": -1}]}, "eps"),
        ({"inputs": arrays([0]), "attacks": []}, "attacks: List should have at least 1 item"),
        ({"inputs": arrays([0]), "attacks": [{"eps": 0.1}]}, "discriminator 'name'"),
        ({"inputs": arrays([0]), "attacks": "strongest"}, "Input should be 'standard', 'published' or 'adaptive'"),
        ({"inputs": arrays([0]), "attacks": [{"suite": "aa", "eps": 0.1}]}, "attacks.0.suite: Input should be"),
        ({"inputs": arrays([0]), "attacks": [FGSM], "extra": 1}, "extra"),
    ],
)
def test_over_budget_and_malformed_requests_get_422_naming_the_problem(
    client: TestClient, body: dict[str, Any], needle: str
) -> None:
    r = post(client, body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]


@pytest.mark.parametrize(
    ("attack", "needle"),
    [
        ({"name": "apgd", "rho": 1.5, "steps": 2}, "rho"),
        ({"name": "apgd", "rho": 0, "steps": 2}, "rho"),
        ({"name": "square", "p_init": 0, "queries": 2, "samples": 1}, "p_init"),
        ({"name": "square", "p_init": 2.0, "queries": 2, "samples": 1}, "p_init"),
        ({"name": "min_eps", "lo": 0.2, "hi": 0.1, "steps": 1, "eot": 1, "iters": 0, "samples": 1}, "lo < hi"),
        ({"name": "min_eps", "lo": 0.1, "hi": 0.1, "steps": 1, "eot": 1, "iters": 0, "samples": 1}, "lo < hi"),
        (
            {"name": "min_eps", "hi": None, "steps": 1, "eot": 1, "iters": 0, "samples": 1},
            "min_eps.hi: Input should be",
        ),
        ({"name": "square", "samples": 1_000_000_000, "queries": 1}, "MFDV_MAX_SAMPLES"),
        ({"name": "min_eps", "samples": 1_000_000_000, "steps": 1, "eot": 1, "iters": 0}, "MFDV_MAX_SAMPLES"),
        ({"name": "pgd", "eot": 257, "steps": 1}, "eot=257 is over the limit of 256"),
        ({"name": "apgd", "eot": 10**6, "steps": 1}, "MFDV_MAX_SAMPLES"),
        # score work is queries x inputs: 201 x 2 = 402 > 400
        ({"name": "square", "queries": 201}, "MFDV_MAX_PROBE_QUERIES"),
        # min_eps: (steps x rounds + the rounds' judging passes + the clean one) x inputs = (125 x 8 + 9) x 2 > 2000
        (
            {"name": "min_eps", "hi": 0.2, "steps": 125, "eot": 1, "iters": 7, "samples": 2},
            "MFDV_MAX_PROBE_GRADIENT_BUDGET",
        ),
    ],
)
def test_attack_settings_out_of_range_get_422_not_500(client: TestClient, attack: dict[str, Any], needle: str) -> None:
    r = post(client, {"inputs": arrays([0, 1]), "labels": [0, 1], "attacks": [{"eps": EPS, **attack}], "seed": 0})
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]


def test_costs_count_backbone_passes_not_draws(client: TestClient) -> None:
    attacks = [
        {"name": "square", "eps": EPS, "queries": 5, "samples": 4},
        {"name": "min_eps", "eps": EPS, "steps": 2, "eot": 2, "iters": 1, "samples": 8, "hi": 0.2},
    ]
    r = post(client, {"inputs": arrays([0]), "labels": [0], "attacks": attacks, "judge_samples": 8, "seed": 0})
    assert r.status_code == 200, r.text
    cost = r.json()["request"]["cost"]
    assert cost["queries"] == 5 and cost["gradient"] == 2 * 2 + 2 + 1  # steps x rounds + judging passes


def test_a_value_error_while_attacking_is_a_422(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_probe(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("square needs 0 < p_init <= 1")

    monkeypatch.setattr(probe_runner, "probe_items", failing_probe)
    r = post(client, {"inputs": arrays([0]), "attacks": [FGSM]})
    assert r.status_code == 422, r.text
    assert "p_init" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"inputs": [[[0.5] * 3] * 3], "attacks": [FGSM]}, "shape"),
        ({"inputs": [(bar_image(0) / 100.0).tolist()], "attacks": [FGSM]}, "[0, 1]"),
        ({"inputs": ["bm90IGFuIGltYWdl"], "attacks": [FGSM]}, "PNG"),
        ({"inputs": [], "attacks": [FGSM]}, "empty"),
        ({"inputs": arrays([0]), "labels": [4], "attacks": [FGSM]}, "[0, 4)"),
        ({"inputs": arrays([0]), "labels": [0, 1], "attacks": [FGSM]}, "one label per input"),
        ({"inputs": arrays([0]), "judge_samples": 0, "attacks": [FGSM]}, "MFDV_MAX_SAMPLES"),
    ],
)
def test_bad_inputs_get_400(client: TestClient, body: dict[str, Any], needle: str) -> None:
    r = post(client, body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def test_not_json_and_wrong_content_type(client: TestClient) -> None:
    assert (
        client.post("/v1/attack-probe", content=b"{nope", headers={"content-type": "application/json"}).status_code
        == 400
    )
    assert client.post("/v1/attack-probe", content=b"x", headers={"content-type": "text/plain"}).status_code == 415


@pytest.mark.parametrize(
    ("headers", "status"), [({}, 401), ({"X-API-Key": "wrong"}, 401), ({"X-API-Key": "s3cret"}, 200)]
)
def test_api_key_is_enforced_when_configured(hand_checkpoint: Path, headers: dict[str, str], status: int) -> None:
    with TestClient(create_app(settings(hand_checkpoint, api_key="s3cret"))) as c:
        r = post(c, {"inputs": arrays([0]), "attacks": [FGSM]}, headers=headers)
        assert r.status_code == status, r.text
        assert c.post("/v1/predict", json={"inputs": arrays([0])}).status_code == 200  # predict stays open


def metric(client: TestClient, name: str, attack: str) -> float:
    text = client.get("/metrics").text
    m = re.search(rf'^{name}\{{attack="{attack}",model="tiny_mfdv"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_metrics_count_attacks_successes_and_durations(client: TestClient) -> None:
    before = {
        k: metric(client, k, "pgd")
        for k in ("mfdv_attack_total", "mfdv_attack_success_total", "mfdv_attack_duration_seconds_count")
    }
    d = post(client, {"inputs": arrays([0, 1]), "labels": [0, 1], "attacks": [{**PGD, "eps": 0.25}]}).json()
    successes = sum(r["success"] for r in d["attacks"][0]["inputs"])
    assert metric(client, "mfdv_attack_total", "pgd") == before["mfdv_attack_total"] + 2
    assert metric(client, "mfdv_attack_success_total", "pgd") == before["mfdv_attack_success_total"] + successes
    assert (
        metric(client, "mfdv_attack_duration_seconds_count", "pgd") == before["mfdv_attack_duration_seconds_count"] + 1
    )


# -- isolation ---------------------------------------------------------------------------------


@pytest.fixture()
def blocked_probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Make probes wait inside the attack pool until ``release`` is set; ``started`` says one is waiting."""
    started, release = threading.Event(), threading.Event()
    real = probe_runner.probe_items

    def slow_probe(*args: Any, **kwargs: Any) -> Any:
        started.set()
        assert release.wait(30), "the test never released the probe"
        return real(*args, **kwargs)

    monkeypatch.setattr(probe_runner, "probe_items", slow_probe)
    yield started, release
    release.set()


def test_predict_answers_while_a_probe_runs_and_a_full_pool_gets_503(
    hand_checkpoint: Path, blocked_probe: tuple[threading.Event, threading.Event]
) -> None:
    started, release = blocked_probe
    app = create_app(settings(hand_checkpoint, attack_workers=1, attack_queue_size=0))
    with TestClient(app) as c:
        result: dict[str, Any] = {}
        body = {"inputs": arrays([0]), "attacks": [FGSM], "seed": 0}
        t = threading.Thread(target=lambda: result.setdefault("r", post(c, body)))
        t.start()
        assert started.wait(30)
        r = c.post("/v1/predict", json={"inputs": arrays([1]), "seed": 0})
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == 1
        busy = post(c, body)
        assert busy.status_code == 503 and busy.headers["retry-after"] and "attack pool" in busy.json()["error"]
        assert t.is_alive()  # the probe was still running all along
        release.set()
        t.join(30)
        assert result["r"].status_code == 200


def test_probe_model_is_a_frozen_copy(app: FastAPI, client: TestClient) -> None:
    serving = app.state.mfdv.ready()
    served = serving.engine.checkpoint.model
    assert serving.probe_model is not served and not serving.probe_model.training
    assert not any(p.requires_grad for p in serving.probe_model.parameters())
    x = torch.rand(2, 1, SIZE, SIZE)
    torch.testing.assert_close(serving.probe_model.features(x), served.features(x))


# -- the default vanilla checkpoint on real data ---------------------------------------------


@pytest.mark.slow
def test_the_endpoint_attacks_the_committed_checkpoint_as_the_library_does(fashion_mnist_available: None) -> None:
    """PGD (EOT 16) at eps 0.1 through /v1/attack-probe on the committed adversarially trained vanilla
    checkpoint and 80 real test images: the same per-input outcomes as ``models.probe.probe`` called
    directly with the same seed, and a success rate strictly between 0 and 1 (the attack does work)."""
    from models import load_checkpoint
    from models.probe import probe
    from training.data import load_dataset

    model_dir = Path(__file__).resolve().parents[2] / "checkpoints" / "fashion_mnist_vanilla"
    test = load_dataset("fashion_mnist", "test")
    n = 80
    x = test.x[:n].float() / 255  # [n, 1, 28, 28], exact 8-bit values
    body = {
        "inputs": x.tolist(),
        "labels": test.y[:n].tolist(),
        "attacks": [{"name": "pgd", "eps": 0.1}],  # defaults: 20 steps, step 0.025, EOT 16
        "judge_samples": 16,
        "seed": 0,
    }
    app = create_app(settings(model_dir, max_inputs=n, max_probe_inputs=n, attack_threads=1))
    with TestClient(app) as c:
        r = post(c, body)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["request"]["attacks"][0]["steps"] == 20 and d["request"]["attacks"][0]["eot"] == 16
    served = [res["success"] for res in d["attacks"][0]["inputs"]]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load_checkpoint(model_dir).model
        direct = probe(model, x, test.y[:n], [{"name": "pgd", "eps": 0.1}], judge_samples=16, seed=0)
    finally:
        torch.set_num_threads(before)
    assert served == [res.success for res in direct.attacks[0].inputs]
    assert 0 < sum(served) < n
    assert all(res["linf"] <= 0.1 + 1e-6 for res in d["attacks"][0]["inputs"])


def test_attack_threads_apply_to_the_attack_worker_only(hand_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = probe_runner.probe_items

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(probe_runner, "probe_items", spy)
    before = torch.get_num_threads()
    with TestClient(create_app(settings(hand_checkpoint, attack_threads=1))) as c:
        assert post(c, {"inputs": arrays([0]), "attacks": [FGSM]}).status_code == 200
    assert seen == [1] and torch.get_num_threads() == before


def thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_attacks_run_at_the_lowest_priority_and_predictions_at_theirs(
    hand_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack worker thread runs at nice 19 (MFDV_ATTACK_NICE): it gets the CPU predictions leave.
    The prediction batcher's compute thread keeps the process's priority."""
    from service.compute.engine import InferenceEngine

    seen: dict[str, int] = {}
    real_probe, real_run = probe_runner.probe_items, InferenceEngine.run

    def probe_spy(*args: Any, **kwargs: Any) -> Any:
        seen["attack"] = thread_nice()
        return real_probe(*args, **kwargs)

    def run_spy(self: InferenceEngine, jobs: list[Any]) -> Any:
        seen["predict"] = thread_nice()
        return real_run(self, jobs)

    monkeypatch.setattr(probe_runner, "probe_items", probe_spy)
    monkeypatch.setattr(InferenceEngine, "run", run_spy)
    process = os.getpriority(os.PRIO_PROCESS, 0)
    with TestClient(create_app(settings(hand_checkpoint))) as c:
        assert post(c, {"inputs": arrays([0]), "attacks": [FGSM]}).status_code == 200
        assert c.post("/v1/predict", json={"inputs": arrays([0])}).status_code == 200
    assert seen == {"attack": max(19, process), "predict": process}
    assert thread_nice() == process  # the caller's thread is untouched

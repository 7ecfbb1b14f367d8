"""Admission control: the throughput estimate, the decision, and the middleware in front of the body."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import fastapi.routing
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.edge.admission import (
    Admission,
    AdmittedRoutes,
    ThroughputEstimator,
    admission_controlled,
    is_admission_controlled,
)
from service.routes import ROUTERS

IMG = np.full((14, 14), 0.5).tolist()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_is_completions_per_busy_second() -> None:
    clock = Clock()
    est = ThroughputEstimator(window_s=1.0, min_completions=4, weight=1.0, clock=clock)
    assert est.rate is None and est.expected_wait() == 0.0
    for _ in range(10):  # one at a time, 0.25 s each, with idle gaps that must not count
        est.started()
        clock.now += 0.25
        est.finished()
        clock.now += 5.0
    assert est.rate == pytest.approx(4.0)
    for _ in range(8):
        est.started()
    assert est.expected_wait() == pytest.approx(8 / 4.0)


def test_the_rate_under_saturation_is_the_throughput() -> None:
    clock = Clock()
    est = ThroughputEstimator(window_s=1.0, min_completions=4, weight=1.0, clock=clock)
    for _ in range(20):
        est.started()
    for _ in range(100):  # 100 completions per second, 20 always in flight
        clock.now += 0.01
        est.finished()
        est.started()
    assert est.rate == pytest.approx(100.0)
    assert est.expected_wait() == pytest.approx(20 / 100.0)


def test_admission_refuses_over_the_in_flight_limit_and_the_expected_wait() -> None:
    clock = Clock()
    est = ThroughputEstimator(window_s=1.0, min_completions=1, weight=1.0, clock=clock)
    adm = Admission(max_inflight=3, max_queue_delay_s=0.5, estimator=est)
    assert [adm.refusal() for _ in range(3)] == [None] * 3
    assert "MFDV_MAX_INFLIGHT" in (adm.refusal() or "")
    for _ in range(3):
        clock.now += 0.5
        adm.finished()
    assert est.rate == pytest.approx(2.0)  # 3 completions in 1.5 busy seconds
    assert adm.refusal() is None  # none in flight: always admitted
    assert adm.refusal() is None  # behind 1 in flight: 0.5 s, at the limit
    assert "MFDV_MAX_QUEUE_DELAY_MS" in (adm.refusal() or "")  # behind 2: 1 s
    assert adm.retry_after() == 1 and adm.refused == 2


def test_heads_admitted_a_moment_ago_count_as_in_flight_for_the_decision() -> None:
    """``pending``: requests admitted from their heads whose bodies are not counted yet (the protocol's burst)."""
    clock = Clock()
    est = ThroughputEstimator(window_s=0.5, min_completions=1, weight=1.0, clock=clock)
    adm = Admission(max_inflight=3, max_queue_delay_s=0.5, estimator=est)
    assert adm.refusal(take=False, pending=2) is None
    assert "handling 3 prediction requests" in (adm.refusal(take=False, pending=3) or "")
    assert adm.inflight == 0  # looking takes nothing
    adm.refusal()
    clock.now += 0.5
    adm.finished()
    assert est.rate == pytest.approx(2.0)
    assert adm.refusal(take=False, pending=1) is None  # behind 1: 0.5 s, at the limit
    assert "behind 2 in flight" in (adm.refusal(take=False, pending=2) or "")  # 1 s
    assert adm.refusal(take=False) is None and adm.refused == 2


def test_no_queue_delay_limit_when_it_is_zero() -> None:
    clock = Clock()
    est = ThroughputEstimator(window_s=0.1, min_completions=1, weight=1.0, clock=clock)
    adm = Admission(max_inflight=100, max_queue_delay_s=0.0, estimator=est)
    adm.refusal()
    clock.now += 10.0  # very slow requests
    adm.finished()
    assert all(adm.refusal() is None for _ in range(50))


def app_routes(app: FastAPI) -> list[Any]:
    """The app's routes, flat, in the order its router tries them (FastAPI 0.16x keeps included routers
    nested in ``app.routes``; ``iter_route_contexts`` flattens them; older versions copy them flat)."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    return list(flatten(app.routes)) if flatten is not None else list(app.routes)


def test_every_prediction_route_is_admission_controlled_and_the_probe_is_not(hand_checkpoint: Path) -> None:
    """Read from the app's routes: a POST route added or renamed shows up here."""
    app = create_app(Settings(model_dir=hand_checkpoint, device="cpu"))
    routes = app_routes(app)
    post = {r.path: is_admission_controlled(r) for r in routes if "POST" in (r.methods or ())}
    assert post == {
        "/v1/predict": True,
        "/v1/models/{name}/predict": True,
        "/v2/models/{name}/infer": True,
        "/v2/models/{name}/versions/{version}/infer": True,
        "/v1/attack-probe": False,
        "/v1/models/{name}/attack-probe": False,
        "/v2/repository/index": False,
        "/v2/repository/models/{name}/load": False,
        "/v2/repository/models/{name}/unload": False,
    }
    assert not any(is_admission_controlled(r) for r in routes if "POST" not in (getattr(r, "methods", None) or ()))
    # the edge decides from the routers' routes (create_app): the same routes, in the same order
    edge = AdmittedRoutes([r for router in ROUTERS for r in router.routes])
    assert edge.templates == AdmittedRoutes(routes).templates == [p for p, marked in post.items() if marked]


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("POST", "/v1/predict", "/v1/predict"),
        ("POST", "/v2/models/m/infer", "/v2/models/{name}/infer"),
        ("POST", "/v2/models/m/versions/1/infer", "/v2/models/{name}/versions/{version}/infer"),
        ("GET", "/v1/predict", None),
        ("POST", "/v1/attack-probe", None),
        ("POST", "/v1/predictx", None),
        ("POST", "/v1/predict/", None),
        ("POST", "/v2/models/m/ready", None),
    ],
)
def test_which_requests_are_admission_controlled(
    hand_checkpoint: Path, method: str, path: str, template: str | None
) -> None:
    app = create_app(Settings(model_dir=hand_checkpoint, device="cpu"))
    assert AdmittedRoutes(app_routes(app)).template({"method": method, "path": path}) == template


def test_the_first_matching_route_decides_as_the_router_does() -> None:
    async def plain() -> None: ...

    @admission_controlled
    async def marked() -> None: ...

    routes = [APIRoute("/m/special", plain, methods=["POST"]), APIRoute("/m/{name}", marked, methods=["POST"])]
    admitted = AdmittedRoutes(routes)
    assert admitted.templates == ["/m/{name}"]
    assert admitted.template({"method": "POST", "path": "/m/special"}) is None
    assert admitted.template({"method": "POST", "path": "/m/other"}) == "/m/{name}"


def test_a_marked_route_without_post_is_refused_at_build() -> None:
    @admission_controlled
    async def marked() -> None: ...

    with pytest.raises(ValueError, match="takes no POST"):
        AdmittedRoutes([APIRoute("/m", marked, methods=["GET"])])


def test_a_refusal_is_labelled_with_its_route_template(hand_checkpoint: Path) -> None:
    """Refused before routing, a request still counts under its route template, as if it had been routed."""
    app = create_app(Settings(model_dir=hand_checkpoint, device="cpu"))
    with TestClient(app) as c:
        app.state.mfdv.admission.max_inflight = 0  # refuse everything
        for path in ("/v1/predict", "/v2/models/tiny_mfdv/infer", "/v2/models/tiny_mfdv/versions/1/infer"):
            assert c.post(path, content=b"{}").status_code == 503
        text = c.get("/metrics").text
    for template in ("/v1/predict", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        assert f'mfdv_requests_total{{method="POST",route="{template}",status="503"}} 1.0' in text


def test_a_request_over_the_limit_is_refused_before_its_body_is_read(
    hand_checkpoint: Path, held_batches: tuple[threading.Event, threading.Event]
) -> None:
    computing, release = held_batches
    app = create_app(Settings(model_dir=hand_checkpoint, device="cpu", max_inflight=1, max_wait_ms=0))
    release.set()  # the warm-up batch runs in the lifespan
    with TestClient(app) as c:
        computing.clear()  # hold the next batch
        release.clear()
        first: dict[str, Any] = {}
        t = threading.Thread(target=lambda: first.setdefault("r", c.post("/v1/predict", json={"inputs": [IMG]})))
        t.start()
        try:
            assert computing.wait(60)
            # Garbage that would be a 400 if it were read: the refusal comes first.
            r = c.post("/v1/predict", content=b"not json", headers={"content-type": "application/json"})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "MFDV_MAX_INFLIGHT" in r.json()["error"]
            assert c.post("/v2/models/tiny_mfdv/infer", content=b"{").status_code == 503
            assert c.get("/healthz").status_code == 200  # other routes are not admission-controlled
        finally:
            release.set()
            t.join(60)
        assert first["r"].status_code == 200
        assert c.post("/v1/predict", json={"inputs": [IMG]}).status_code == 200  # the place was given back
        assert 'route="/v1/predict",status="503"' in c.get("/metrics").text

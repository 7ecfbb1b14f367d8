"""Engine, backends, micro-batcher and bounded pool: one backbone pass, batch invariance, back-pressure."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.compute.backends import (
    BackendError,
    OnnxBackend,
    TorchBackend,
    choose_backend,
    create_backend,
    resolve_device,
    split_onnx,
)
from service.compute.batcher import MicroBatcher
from service.compute.engine import UNCERTAINTY_FIELDS, InferenceEngine, PredictJob
from service.compute.pool import BoundedPool
from service.errors import ModelNotReady, Overloaded

SIZE = 14
FIELDS = ("mean_probs", "label", "predictive_entropy", "expected_entropy", "mutual_information", "vote_agreement")


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def load(checkpoint: Path, **kw: object) -> InferenceEngine:
    return InferenceEngine.load(Settings(model_dir=checkpoint, device="cpu", **kw))  # type: ignore[arg-type]


def count_backbone_calls(engine: InferenceEngine) -> list[int]:
    """Rows of every backbone call the engine's backend makes from now on (whatever the backend)."""
    calls: list[int] = []
    real = engine.backend.backbone

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(int(x.shape[0]))
        return real(x)

    engine.backend.backbone = counted  # type: ignore[method-assign]
    return calls


def run_concurrently(engine: InferenceEngine, jobs: list[PredictJob]) -> list:
    async def go() -> list:
        engine.start()
        try:
            return await asyncio.gather(*(engine.predict(j) for j in jobs))
        finally:
            await engine.stop()

    return asyncio.run(go())


# -- backends -------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["hand_checkpoint", "hand_vanilla_checkpoint"])
def test_torch_and_onnx_backends_agree(which: str, request: pytest.FixtureRequest) -> None:
    checkpoint = request.getfixturevalue(which)
    torch_engine, onnx_engine = load(checkpoint, backend="torch"), load(checkpoint, backend="onnx")
    assert onnx_engine.backend.name == "onnx"
    jobs = [PredictJob(images(3, 1), 64, 5), PredictJob(images(1, 2), 7, 6)]
    for a, b in zip(torch_engine.run(jobs), onnx_engine.run(jobs), strict=True):
        for f in FIELDS:
            x, y = getattr(a.uncertainty, f), getattr(b.uncertainty, f)
            assert torch.allclose(x.double(), y.double(), atol=1e-4), f


def test_backend_logits_equal_the_models_forward(hand_checkpoint: Path) -> None:
    engine = load(hand_checkpoint)
    model = engine.checkpoint.model
    x, noise = images(5), torch.randn(9, model.feature_dim)
    with torch.no_grad():
        ref = model(x, noise)
    for backend in (TorchBackend(engine.checkpoint, "cpu"), OnnxBackend(engine.checkpoint, "cpu")):
        out = backend.logits(x, noise)
        assert out.shape == (9, 5, 4)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_onnx_split_refuses_graphs_of_another_form(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["image", "noise"], ["logits"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("image", "noise")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(BackendError, match="MFDV_BACKEND=torch"):
        split_onnx(path)


def test_auto_is_onnxruntime_on_cpu_computing_with_the_threads_it_is_given(hand_checkpoint: Path) -> None:
    engine = load(hand_checkpoint, predict_threads=1)  # MFDV_BACKEND=auto
    assert engine.backend.name == "onnx" and engine.backend.threads == 1
    assert engine.backend._base.get_session_options().intra_op_num_threads == 1  # type: ignore[attr-defined]
    seen: list[tuple[str, int]] = []
    real = engine.backend.backbone

    def watched(x: torch.Tensor) -> torch.Tensor:
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return real(x)

    engine.backend.backbone = watched  # type: ignore[method-assign]
    run_concurrently(engine, [PredictJob(images(1), 4, 0)])
    assert seen == [("mfdv-compute_0", 1)]  # torch's threads too (noise, summary) in the compute thread
    assert load(hand_checkpoint, backend="torch", predict_threads=1).backend.name == "torch"


def test_auto_falls_back_to_torch_where_onnxruntime_cannot_serve(
    hand_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import service.compute.backends as backends

    def unsplittable(path: Path) -> tuple[bytes, bytes]:
        raise BackendError(f"{path}: expected `logits = Add(base, shift)`")

    monkeypatch.setattr(backends, "split_onnx", unsplittable)
    checkpoint = load(hand_checkpoint, backend="torch").checkpoint
    assert isinstance(create_backend("auto", checkpoint, "cpu"), TorchBackend)
    assert "using torch" in caplog.text
    with pytest.raises(BackendError, match="Add"):
        create_backend("onnx", checkpoint, "cpu")
    assert choose_backend("auto", "cuda") == "torch" and choose_backend("onnx", "cuda") == "onnx"


def test_device_resolution() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BackendError, match="use auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no CUDA device"):
            resolve_device("cuda")


# -- one backbone pass, T draws ---------------------------------------------------------------------


@pytest.mark.parametrize("invariant", [True, False])
def test_t_draws_cost_one_backbone_pass(hand_checkpoint: Path, invariant: bool) -> None:
    engine = load(hand_checkpoint, max_batch=8, max_wait_ms=200, batch_invariant=invariant, backbone_chunk=8)
    calls = count_backbone_calls(engine)
    jobs = [PredictJob(images(3, 0), 256, 1), PredictJob(images(2, 1), 64, 2), PredictJob(images(1, 2), 1, 3)]
    results = run_concurrently(engine, jobs)
    assert all(r.batch_size == 6 for r in results)
    assert calls == [8 if invariant else 6]  # one pass for 3 requests and 321 draws in all


def test_backbone_chunk_defaults_to_small_fixed_chunks_on_cpu(hand_checkpoint: Path) -> None:
    assert load(hand_checkpoint, max_batch=64).chunk == 4
    assert load(hand_checkpoint, max_batch=2).chunk == 2
    assert load(hand_checkpoint, max_batch=64, backbone_chunk=16).chunk == 16


def test_a_request_larger_than_max_batch_runs_in_fixed_chunks(hand_checkpoint: Path) -> None:
    engine = load(hand_checkpoint, max_batch=4, max_inputs=16)
    calls = count_backbone_calls(engine)
    x = images(10)
    big = engine.run([PredictJob(x, 8, 1)])[0]
    assert calls == [4, 4, 4]
    alone = engine.run([PredictJob(x[7:8], 8, 1)])[0]  # same seed, same draws for row 7
    assert torch.equal(big.uncertainty.mean_probs[7], alone.uncertainty.mean_probs[0])


# -- batch invariance ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_same_seed_alone_or_batched_with_others_is_bit_identical(hand_checkpoint: Path, backend: str) -> None:
    engine = load(hand_checkpoint, backend=backend, max_batch=8, max_wait_ms=300)
    target = PredictJob(images(1, 42), 16, 1234)
    alone = run_concurrently(engine, [target])[0]
    others = [PredictJob(images(1 + i % 2, i), 4 + i, i) for i in range(5)]
    batched = run_concurrently(engine, [others[0], others[1], target, others[2], others[3]])
    assert alone.batch_size == 1 and batched[2].batch_size == 7
    for f in (*FIELDS, "prob_std", "top_prob_stderr", "votes"):
        assert torch.equal(getattr(alone.result.uncertainty, f), getattr(batched[2].result.uncertainty, f)), f
    # ...and inside a request of several inputs, each input's answer is its answer alone
    pair = engine.run([PredictJob(torch.cat([others[4].images[:1], target.images]), 16, 1234)])[0]
    assert torch.equal(pair.uncertainty.mean_probs[1], alone.result.uncertainty.mean_probs[0])


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_requests_with_the_same_t_share_one_summary_and_keep_their_answers(
    hand_checkpoint: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``summarize`` per group of requests with the same T; each input's summary is bit-identical to
    the one it gets alone."""
    import service.compute.engine as engine_module

    engine = load(hand_checkpoint, backend=backend, max_batch=64)
    jobs = [PredictJob(images(1 + i % 3, i), 16, 100 + i) for i in range(7)]  # 13 inputs, T = 16
    jobs.insert(3, PredictJob(images(2, 9), 5, 7))  # another T: a group of its own
    alone = [engine.run([job])[0] for job in jobs]
    calls: list[tuple[int, ...]] = []
    real = engine_module.summarize
    monkeypatch.setattr(engine_module, "summarize", lambda x: calls.append(tuple(x.shape)) or real(x))
    together = engine.run(jobs)
    assert sorted(calls) == [(5, 2, 4), (16, 13, 4)]
    for a, b in zip(alone, together, strict=True):
        for f in UNCERTAINTY_FIELDS:
            assert torch.equal(getattr(a.uncertainty, f), getattr(b.uncertainty, f)), f


def test_without_padding_batched_answers_still_agree_closely(hand_checkpoint: Path) -> None:
    engine = load(hand_checkpoint, max_batch=8, max_wait_ms=300, batch_invariant=False)
    target = PredictJob(images(1, 42), 16, 99)
    alone = run_concurrently(engine, [target])[0]
    batched = run_concurrently(engine, [PredictJob(images(5, 1), 4, 0), target])[1]
    assert batched.batch_size == 6
    torch.testing.assert_close(alone.result.uncertainty.mean_probs, batched.result.uncertainty.mean_probs)


def test_http_responses_do_not_depend_on_concurrent_traffic(hand_checkpoint: Path) -> None:
    settings = Settings(model_dir=hand_checkpoint, device="cpu", max_batch=16, max_wait_ms=150)
    target = {"inputs": [np.full((SIZE, SIZE), 0.7).tolist()], "samples": 32, "seed": 77}
    others = [{"inputs": images(1 + i % 3, i)[:, 0].tolist(), "samples": 8, "seed": i} for i in range(6)]
    with TestClient(create_app(settings)) as c:
        alone = c.post("/v1/predict", json=target)
        with ThreadPoolExecutor(7) as pool:
            futures = [pool.submit(c.post, "/v1/predict", json=body) for body in [*others[:3], target, *others[3:]]]
            responses = [f.result() for f in futures]
    mine = responses[3]
    assert mine.status_code == 200 and mine.json()["timing"]["batch_size"] > 1, mine.json()["timing"]
    assert mine.content.partition(b',"timing":')[0] == alone.content.partition(b',"timing":')[0]


# -- back-pressure ----------------------------------------------------------------------------------


def test_full_queue_answers_503_with_retry_after(hand_checkpoint: Path) -> None:
    settings = Settings(model_dir=hand_checkpoint, device="cpu", max_batch=1, max_wait_ms=0, queue_size=1)
    app = create_app(settings)
    body = {"inputs": [np.zeros((SIZE, SIZE)).tolist()], "samples": 2}
    computing, release = threading.Event(), threading.Event()
    with TestClient(app) as c:
        backend = app.state.mfdv.ready().engine.backend
        real = backend.backbone

        def blocked(x: torch.Tensor) -> torch.Tensor:
            computing.set()
            assert release.wait(30), "the test never released the backbone"
            return real(x)

        backend.backbone = blocked
        with ThreadPoolExecutor(6) as pool:
            first = pool.submit(c.post, "/v1/predict", json=body)
            assert computing.wait(30)  # the first request holds the compute thread
            others = [pool.submit(c.post, "/v1/predict", json=body) for _ in range(5)]
            # one of the others fits in the queue (size 1) and waits; four are refused at once
            pending = set(others)
            while len(pending) > 1:
                done, pending = wait(pending, timeout=30, return_when=FIRST_COMPLETED)
                assert done, "no answer within 30 s"
            release.set()
            responses = [first.result(), *(f.result() for f in others)]
        codes = sorted(r.status_code for r in responses)
        assert codes == [200, 200, 503, 503, 503, 503], codes
        rejected = [r for r in responses if r.status_code == 503]
        assert rejected[0].headers["retry-after"] == "1" and "queue is full" in rejected[0].json()["error"]
        assert 'route="/v1/predict",status="503"' in c.get("/metrics").text


@dataclass(frozen=True)
class Item:
    size: int
    tag: str = ""


def test_batcher_coalesces_up_to_max_batch_in_arrival_order() -> None:
    seen: list[list[str]] = []

    def process(items: list[Item]) -> list[str]:
        seen.append([i.tag for i in items])
        return [i.tag.upper() for i in items]

    async def go() -> list:
        b: MicroBatcher[Item, str] = MicroBatcher(process, max_batch=4, max_wait_s=0.2, queue_size=16)
        b.start()
        try:
            sizes = {"a": 1, "b": 2, "c": 2, "d": 1, "e": 9}
            return await asyncio.gather(*(b.submit(Item(n, t)) for t, n in sizes.items()))
        finally:
            await b.stop()

    out = asyncio.run(go())
    assert [r.result for r in out] == ["A", "B", "C", "D", "E"]
    assert seen == [["a", "b"], ["c", "d"], ["e"]]  # c does not fit beside a+b; e (9 > 4) runs alone
    assert [r.batch_size for r in out] == [3, 3, 3, 3, 9]


def test_batcher_failures_reach_every_caller_and_it_keeps_serving() -> None:
    def process(items: list[Item]) -> list[int]:
        if any(i.tag == "bad" for i in items):
            raise ValueError("boom")
        return [i.size for i in items]

    async def go() -> tuple[list, int]:
        b: MicroBatcher[Item, int] = MicroBatcher(process, max_batch=8, max_wait_s=0.1, queue_size=8)
        with pytest.raises(ModelNotReady):
            await b.submit(Item(1))
        b.start()
        try:
            first = await asyncio.gather(b.submit(Item(1, "bad")), b.submit(Item(2)), return_exceptions=True)
            after = await b.submit(Item(3))
            return first, after.result
        finally:
            await b.stop()

    first, after = asyncio.run(go())
    assert all(isinstance(e, ValueError) for e in first) and after == 3


def test_batcher_rejects_when_full_and_fails_waiters_on_stop() -> None:
    computing, release = threading.Event(), threading.Event()

    def process(items: list[Item]) -> list[int]:
        computing.set()
        assert release.wait(30), "the test never released the batch"
        return [0 for _ in items]

    async def go() -> None:
        b: MicroBatcher[Item, int] = MicroBatcher(process, max_batch=1, max_wait_s=0, queue_size=1)
        b.start()
        running = asyncio.ensure_future(b.submit(Item(1)))
        assert await asyncio.to_thread(computing.wait, 30)  # the worker took it and is computing
        waiting = asyncio.ensure_future(b.submit(Item(1)))
        await asyncio.sleep(0)  # one turn of the loop: `waiting` is queued (a yield, not a wait)
        with pytest.raises(Overloaded, match="queue is full"):
            await b.submit(Item(1))
        stopping = asyncio.ensure_future(b.stop())
        with pytest.raises(ModelNotReady, match="shutting down"):
            await waiting  # failed by stop() while the batch still computes
        release.set()
        await stopping
        assert running.done()

    asyncio.run(go())


# -- bounded pool for attack probes ----------------------------------------------------------------------


def test_bounded_pool_limits_running_and_waiting_jobs() -> None:
    gate = threading.Event()

    def work(x: int) -> int:
        assert gate.wait(30), "the test never opened the gate"
        return x * 2

    async def go() -> None:
        pool = BoundedPool(workers=1, max_pending=1, name="attack", retry_after=7)
        jobs = [asyncio.ensure_future(pool.run(work, i)) for i in range(2)]
        await asyncio.sleep(0)  # one turn of the loop: both calls are admitted (a yield, not a wait)
        assert pool.admitted == 2
        with pytest.raises(Overloaded) as info:
            await pool.run(work, 9)
        assert info.value.headers["Retry-After"] == "7" and "attack pool is busy" in info.value.message
        jobs[1].cancel()  # the caller gives up; its job had not started, so its slot frees
        with pytest.raises(asyncio.CancelledError):
            await jobs[1]
        assert pool.admitted == 1
        jobs[0].cancel()  # the running job keeps its slot until its thread is done
        with pytest.raises(asyncio.CancelledError):
            await jobs[0]
        assert pool.admitted == 1
        gate.set()
        assert await pool.run(int, 0) == 0  # one worker: this runs once the first job's thread is done
        assert pool.admitted == 0
        assert await pool.run(work, 4) == 8
        pool.shutdown()

    asyncio.run(go())


@pytest.fixture
def engine_app(hand_checkpoint: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_dir=hand_checkpoint, device="cpu", attack_workers=2))) as c:
        yield c


def test_app_has_an_attack_pool_and_the_torch_model_for_probes(engine_app: TestClient) -> None:
    serving = engine_app.app.state.mfdv.ready()  # type: ignore[attr-defined]
    assert serving.attack_pool.workers == 2
    assert isinstance(serving.engine.checkpoint.model, torch.nn.Module)


@pytest.mark.gpu
def test_cuda_matches_cpu_and_stays_batch_invariant(hand_checkpoint: Path) -> None:
    cpu = load(hand_checkpoint, device="cpu")
    gpu = InferenceEngine.load(Settings(model_dir=hand_checkpoint, device="cuda", max_batch=8, max_wait_ms=300))
    assert gpu.backend.device == "cuda" and gpu.chunk == 8
    jobs = [PredictJob(images(3, 1), 64, 5), PredictJob(images(1, 2), 7, 6)]
    for a, b in zip(cpu.run(jobs), gpu.run(jobs), strict=True):
        torch.testing.assert_close(a.uncertainty.mean_probs, b.uncertainty.mean_probs, atol=1e-4, rtol=1e-4)
    target = PredictJob(images(1, 42), 16, 1234)
    alone = run_concurrently(gpu, [target])[0]
    batched = run_concurrently(gpu, [PredictJob(images(5, 0), 4, 0), target])[1]
    assert batched.batch_size == 6
    for f in FIELDS:
        assert torch.equal(getattr(alone.result.uncertainty, f), getattr(batched.result.uncertainty, f)), f

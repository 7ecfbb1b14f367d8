"""``EdgeMiddleware``'s body read (``BodyLimits``): the whole body is read before the app runs, within its size and
pace limits."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from service.edge.admission import Admission, admission_controlled
from service.edge.lifecycle import Lifecycle
from service.edge.middleware import BODY_READ, BodyLimits, EdgeMiddleware
from service.metrics import Metrics


async def reading_app(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope[BODY_READ] is True
    body = await Request(scope, receive).body()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def body_limited(max_bytes: int, timeout_s: float, min_rate: float = 0.0, grace_s: float = 0.0) -> EdgeMiddleware:
    """``reading_app`` behind the edge with only its body limits."""
    return EdgeMiddleware(reading_app, body=BodyLimits(max_bytes, timeout_s, min_rate, grace_s))


def scope(headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {"type": "http", "method": "POST", "path": "/v1/predict", "headers": headers or []}


async def call(app: EdgeMiddleware, receive: Receive, headers: list | None = None) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope(headers), receive, send)
    return sent


def error(sent: list[Message]) -> tuple[int, str, dict[bytes, bytes]]:
    return sent[0]["status"], json.loads(sent[1]["body"])["error"], dict(sent[0]["headers"])


async def never() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def test_a_body_that_does_not_arrive_in_time_is_a_408_and_the_app_never_runs() -> None:
    app = body_limited(max_bytes=1000, timeout_s=0.05)
    status, message, headers = error(asyncio.run(call(app, never)))
    assert status == 408 and "MFDV_BODY_TIMEOUT_SECONDS" in message
    assert headers[b"connection"] == b"close"


def test_a_stalled_body_is_cut_after_the_grace_at_the_minimum_rate() -> None:
    parts: list[Message] = [{"type": "http.request", "body": b"x" * 10, "more_body": True}]

    async def receive() -> Message:
        if parts:
            return parts.pop(0)
        return await never()

    # 10 bytes at 1,000 bytes/s are due within 0.01 s, but the grace (0.1 s) comes first; the total limit is far.
    app = body_limited(max_bytes=10_000, timeout_s=60, min_rate=1000, grace_s=0.1)
    loop_start = asyncio.new_event_loop()
    try:
        t0 = loop_start.time()
        sent = loop_start.run_until_complete(call(app, receive))
        waited = loop_start.time() - t0
    finally:
        loop_start.close()
    status, message, _ = error(sent)
    assert status == 408 and "MFDV_BODY_MIN_RATE" in message
    assert waited < 30  # cut by the pace, not by the 60 s total


def test_a_chunked_body_over_the_limit_is_refused_as_it_is_read() -> None:
    reads = 0

    async def chunks() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 400, "more_body": True}

    app = body_limited(max_bytes=1000, timeout_s=10)
    status, message, _ = error(asyncio.run(call(app, chunks)))
    assert status == 413 and "over the limit of 1000 bytes" in message
    assert reads == 3  # stopped at the read that passed the limit


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read() -> None:
    async def no_read() -> Message:
        raise AssertionError("the body was read")

    app = body_limited(max_bytes=1000, timeout_s=10)
    status, message, _ = error(asyncio.run(call(app, no_read, [(b"content-length", b"5000")])))
    assert status == 413 and "5000 bytes" in message


def test_a_body_within_the_limits_reaches_the_app_whole() -> None:
    parts = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"c"}]

    async def receive() -> Message:
        return parts.pop(0)

    app = body_limited(max_bytes=1000, timeout_s=10, min_rate=1, grace_s=1)
    assert asyncio.run(call(app, receive))[1]["body"] == b"3"


def test_a_client_that_leaves_mid_body_is_recorded_as_499_and_the_app_never_runs() -> None:
    parts: list[Message] = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> Message:
        return parts.pop(0)

    app = body_limited(max_bytes=1000, timeout_s=10)
    assert asyncio.run(call(app, receive))[0]["status"] == 499


async def failing_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("secret internals")


async def failing_after_start(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise RuntimeError("secret internals")


def test_an_unhandled_error_is_a_generic_json_500_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    app = EdgeMiddleware(failing_app, metrics=metrics, body=BodyLimits(1000, 10))
    sent = asyncio.run(call(app, _body(b"{}")))
    status, message, headers = error(sent)
    assert status == 500 and "secret" not in message and headers[b"content-type"] == b"application/json"
    assert "secret internals" in caplog.text  # logged with its traceback, not sent
    text = metrics.exposition()[0].decode()
    assert 'mfdv_requests_total{method="POST",route="unmatched",status="500"} 1.0' in text
    with pytest.raises(RuntimeError):  # the response had started: nothing else can be sent
        asyncio.run(call(EdgeMiddleware(failing_after_start), _body(b"{}")))


def test_while_draining_every_answer_says_connection_close() -> None:
    life = Lifecycle(drain_s=5, grace_s=1)
    life.begin()
    sent = asyncio.run(call(EdgeMiddleware(reading_app, lifecycle=life, body=BodyLimits(1000, 10)), _body(b"abc")))
    assert sent[0]["status"] == 200 and (b"connection", b"close") in sent[0]["headers"]


def _body(data: bytes) -> Receive:
    async def receive() -> Message:
        return {"type": "http.request", "body": data, "more_body": False}

    return receive


def test_heads_admitted_in_one_loop_turn_share_the_free_places() -> None:
    """``head_refusal`` (the protocol asks it as each head completes): the heads admitted in one turn of the event
    loop count as in flight for the rest of that turn (their tasks take their places on the next turn)."""

    @admission_controlled
    async def predict(request: Request) -> None: ...

    routes = [Route("/predict", predict, methods=["POST"])]
    edge = EdgeMiddleware(reading_app, metrics=Metrics(), routes=routes, admission=Admission(2, 0.0))

    def head() -> Scope:
        return {"type": "http", "method": "POST", "path": "/predict", "headers": []}

    async def two_turns() -> tuple[list, object]:
        burst = [edge.head_refusal(head()) for _ in range(3)]
        await asyncio.sleep(0)  # the next turn: nothing took a place (no task ran), so both are free again
        return burst, edge.head_refusal(head())

    burst, next_turn = asyncio.run(two_turns())
    assert burst[:2] == [None, None] and next_turn is None
    refusal = burst[2]
    assert refusal is not None and refusal.route == "/predict" and refusal.retry_after == 1
    assert "handling 2 prediction requests" in refusal.message and not refusal.close
    assert edge.head_refusal({**head(), "method": "GET"}) is None  # not admission-controlled

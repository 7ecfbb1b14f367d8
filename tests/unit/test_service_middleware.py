"""``RequestBodyMiddleware``: the whole body is read before the app runs, within its size and pace limits."""

from __future__ import annotations

import asyncio
import json

from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from service.middleware import BODY_READ, RequestBodyMiddleware


async def reading_app(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope[BODY_READ] is True
    body = await Request(scope, receive).body()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def scope(headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {"type": "http", "method": "POST", "path": "/v1/predict", "headers": headers or []}


async def call(app: RequestBodyMiddleware, receive: Receive, headers: list | None = None) -> list[Message]:
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
    app = RequestBodyMiddleware(reading_app, max_bytes=1000, timeout_s=0.05)
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
    app = RequestBodyMiddleware(reading_app, max_bytes=10_000, timeout_s=60, min_rate=1000, grace_s=0.1)
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

    app = RequestBodyMiddleware(reading_app, max_bytes=1000, timeout_s=10)
    status, message, _ = error(asyncio.run(call(app, chunks)))
    assert status == 413 and "over the limit of 1000 bytes" in message
    assert reads == 3  # stopped at the read that passed the limit


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read() -> None:
    async def no_read() -> Message:
        raise AssertionError("the body was read")

    app = RequestBodyMiddleware(reading_app, max_bytes=1000, timeout_s=10)
    status, message, _ = error(asyncio.run(call(app, no_read, [(b"content-length", b"5000")])))
    assert status == 413 and "5000 bytes" in message


def test_a_body_within_the_limits_reaches_the_app_whole() -> None:
    parts = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"c"}]

    async def receive() -> Message:
        return parts.pop(0)

    app = RequestBodyMiddleware(reading_app, max_bytes=1000, timeout_s=10, min_rate=1, grace_s=1)
    assert asyncio.run(call(app, receive))[1]["body"] == b"3"


def test_a_client_that_leaves_mid_body_is_recorded_as_499_and_the_app_never_runs() -> None:
    parts: list[Message] = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"}]

    async def receive() -> Message:
        return parts.pop(0)

    app = RequestBodyMiddleware(reading_app, max_bytes=1000, timeout_s=10)
    assert asyncio.run(call(app, receive))[0]["status"] == 499

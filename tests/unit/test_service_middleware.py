"""The body limits of ``BodySizeLimitMiddleware``: size and time, enforced when the app reads the body."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, RequestTimeout
from service.middleware import BodySizeLimitMiddleware


async def reading_app(scope: Scope, receive: Receive, send: Send) -> None:
    body = await Request(scope, receive).body()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def scope(headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {"type": "http", "method": "POST", "path": "/v1/predict", "headers": headers or []}


async def call(app: BodySizeLimitMiddleware, receive: Receive, headers: list | None = None) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope(headers), receive, send)
    return sent


def test_a_body_that_does_not_arrive_in_time_is_a_408() -> None:
    async def never() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    app = BodySizeLimitMiddleware(reading_app, max_bytes=1000, timeout_s=0.05)
    with pytest.raises(RequestTimeout, match="MFDV_BODY_TIMEOUT_SECONDS"):
        asyncio.run(call(app, never))


def test_a_chunked_body_over_the_limit_is_refused_as_it_is_read() -> None:
    reads = 0

    async def chunks() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 400, "more_body": True}

    app = BodySizeLimitMiddleware(reading_app, max_bytes=1000, timeout_s=10)
    with pytest.raises(PayloadTooLarge, match="over the limit of 1000 bytes"):
        asyncio.run(call(app, chunks))
    assert reads == 3  # stopped at the read that passed the limit


def test_a_declared_length_over_the_limit_is_refused_before_the_app_runs() -> None:
    async def no_read() -> Message:
        raise AssertionError("the body was read")

    app = BodySizeLimitMiddleware(reading_app, max_bytes=1000, timeout_s=10)
    sent = asyncio.run(call(app, no_read, [(b"content-length", b"5000")]))
    assert sent[0]["status"] == 413 and "5000 bytes" in json.loads(sent[1]["body"])["error"]


def test_a_body_within_the_limits_reaches_the_app() -> None:
    parts = [{"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"c"}]

    async def receive() -> Message:
        return parts.pop(0)

    app = BodySizeLimitMiddleware(reading_app, max_bytes=1000, timeout_s=10)
    assert asyncio.run(call(app, receive))[1]["body"] == b"3"

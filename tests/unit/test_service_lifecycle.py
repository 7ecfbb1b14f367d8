"""The shutdown pieces in one process: the SIGTERM wrapper's drain window and the 503 for a cut request."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from types import FrameType

import pytest
from starlette.types import Message, Receive, Scope, Send

from service.edge.lifecycle import Lifecycle
from service.edge.middleware import EdgeMiddleware


@pytest.fixture
def uvicorn_handler() -> Iterator[list[int]]:
    """A stand-in for uvicorn's SIGTERM handler, recording its calls; the real handler is restored after."""
    calls: list[int] = []

    def handle_exit(sig: int, frame: FrameType | None) -> None:
        calls.append(sig)

    original = signal.signal(signal.SIGTERM, handle_exit)
    yield calls
    signal.signal(signal.SIGTERM, original)


def sigterm() -> None:
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    handler(signal.SIGTERM, None)


def test_without_a_window_sigterm_goes_straight_to_uvicorn(uvicorn_handler: list[int]) -> None:
    async def main() -> None:
        life = Lifecycle(drain_s=0, grace_s=20)
        life.start(asyncio.get_running_loop())
        sigterm()
        assert uvicorn_handler == [signal.SIGTERM] and life.draining
        life.stop()

    asyncio.run(main())


def test_the_first_sigterm_drains_and_a_second_ends_the_window(uvicorn_handler: list[int]) -> None:
    async def main() -> None:
        life = Lifecycle(drain_s=600, grace_s=20)
        life.start(asyncio.get_running_loop())
        assert life.answers_due() is None
        sigterm()
        await asyncio.sleep(0)
        assert life.draining and uvicorn_handler == []  # still serving: uvicorn has not been told
        due = life.answers_due()
        assert due is not None
        sigterm()  # a second one: now
        assert uvicorn_handler == [signal.SIGTERM] and life.answers_due() == due
        life.stop()

    asyncio.run(main())


def test_the_window_ends_by_itself(uvicorn_handler: list[int]) -> None:
    async def main() -> None:
        life = Lifecycle(drain_s=0.01, grace_s=20)
        life.start(asyncio.get_running_loop())
        sigterm()
        for _ in range(1000):  # bounded: the timer fires on the loop
            if uvicorn_handler:
                break
            await asyncio.sleep(0.01)
        assert uvicorn_handler == [signal.SIGTERM]
        life.stop()

    asyncio.run(main())


def test_stop_restores_the_handler_and_start_resets(uvicorn_handler: list[int]) -> None:
    async def main() -> None:
        life = Lifecycle(drain_s=5, grace_s=20)
        before = signal.getsignal(signal.SIGTERM)
        life.start(asyncio.get_running_loop())
        assert signal.getsignal(signal.SIGTERM) is not before
        life.stop()
        assert signal.getsignal(signal.SIGTERM) is before and life.draining
        life.start(asyncio.get_running_loop())
        assert not life.draining and life.answers_due() is None
        life.stop()

    asyncio.run(main())


async def cancelled_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise asyncio.CancelledError("Task cancelled, timeout graceful shutdown exceeded")


async def call(app: EdgeMiddleware) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": "/v1/predict", "headers": []}, receive, send)
    return sent


def test_a_request_cut_while_shutting_down_gets_a_json_503() -> None:
    life = Lifecycle(drain_s=0, grace_s=1)
    life.begin()
    sent = asyncio.run(call(EdgeMiddleware(cancelled_app, lifecycle=life)))
    assert sent[0]["status"] == 503
    headers = dict(sent[0]["headers"])
    assert headers[b"retry-after"] == b"1" and headers[b"content-type"] == b"application/json"
    assert "MFDV_GRACEFUL_SECONDS" in json.loads(sent[1]["body"])["error"]


def test_other_cancellations_propagate() -> None:
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call(EdgeMiddleware(cancelled_app, lifecycle=Lifecycle(drain_s=0, grace_s=1))))  # not shutting down

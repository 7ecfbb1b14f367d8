"""Raw-socket HTTP for tests that act below HTTP client libraries (stalled bodies, half requests),
and the small polls integration tests share."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import httpx


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response from ``sock`` (status, lower-case headers, body); asserts on a close before it ends."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without an answer: {raw!r}"
        raw += chunk
    top, _, body = raw.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def in_flight(url: str) -> float:
    """The server's ``mfdv_inflight_requests`` gauge (this scrape counts itself)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith("mfdv_inflight_requests ")))


def wait_for(predicate: Callable[[], bool], what: str, deadline_s: float = 60.0) -> None:
    """Poll ``predicate`` every 50 ms until it holds, failing after ``deadline_s``."""
    tick = threading.Event()
    for _ in range(int(deadline_s / 0.05)):
        if predicate():
            return
        tick.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")

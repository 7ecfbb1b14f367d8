"""What decoding may cost a real server: concurrent requests of large images stay under a memory bound.

A 4096 x 4096 16-bit PNG compresses to about 40 KB but decodes to 16.7 million pixels. Five
concurrent requests of eight such images (what took the service past 2 GiB) are refused from
their headers (``MFDV_MAX_REQUEST_PIXELS``), and five concurrent requests at the budget (one
such image, or a 4096 x 4096 JPEG, each) are decoded at most ``MFDV_DECODE_WORKERS`` at a time,
reduced before conversion: the process's peak resident memory (``VmHWM``) stays under 600 MB.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from tests.support.server import ServerProcess

LIMIT_BYTES = 600 * 1024 * 1024
SIDE = 4096


def big_png16() -> bytes:
    a = np.zeros((SIDE, SIDE), np.uint16)
    a[::7, ::5] = 60000
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def big_jpeg() -> bytes:
    a = np.zeros((SIDE, SIDE, 3), np.uint8)
    a[::9, ::4] = (200, 30, 90)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=20)
    return buf.getvalue()


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (``VmHWM``: the high-water mark since it started)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


async def concurrently(url: str, files: list[list[tuple[str, tuple[str, bytes, str]]]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        return await asyncio.gather(
            *(client.post("/v1/predict", files=f, data={"resize": "true", "seed": "0"}) for f in files)
        )


def test_five_concurrent_large_decodes_stay_under_600_mb(hand_checkpoint: Path) -> None:
    png16, jpg = big_png16(), big_jpeg()
    assert len(png16) < 64 * 1024  # a small body: the cost is in the pixels, not the bytes
    env = {"MFDV_MAX_QUEUE_DELAY_MS": "0"}  # every request must be decoded, not shed: the bound is on decoding
    with ServerProcess(hand_checkpoint, env=env, args=["--device", "cpu", "--no-access-log"]) as server:
        assert server.proc is not None
        before = peak_rss(server.proc.pid)

        over = [[("file", (f"{i}.png", png16, "image/png")) for i in range(8)] for _ in range(5)]
        refused = asyncio.run(concurrently(server.url, over))
        assert [r.status_code for r in refused] == [400] * 5, refused[0].text
        assert "MFDV_MAX_REQUEST_PIXELS" in refused[0].json()["error"]

        at_budget = [[("file", ("a.png", png16, "image/png"))] for _ in range(5)]
        at_budget += [[("file", ("a.jpg", jpg, "image/jpeg"))] for _ in range(5)]
        answered = asyncio.run(concurrently(server.url, at_budget))
        assert [r.status_code for r in answered] == [200] * 10, [r.text[:200] for r in answered]

        peak = peak_rss(server.proc.pid)
    assert peak < LIMIT_BYTES, f"peak RSS {peak / 2**20:.0f} MB (before the requests: {before / 2**20:.0f} MB)"

"""``split_multipart``: the one-pass multipart reader gives what Starlette's parser gives, or leaves the body to it."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from service.edge.transport import MAX_FIELD_BYTES, split_multipart

PNG = b"\x89PNG\r\n\x1a\n\r\n--not-the-boundary\r\n\x00\xff"


def encoded(files: list[tuple[str, tuple[str, bytes, str]]], data: dict[str, str]) -> tuple[bytes, str]:
    """The body and content type httpx sends (as curl and browsers do)."""
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"]


async def starlette_parts(body: bytes, ctype: str) -> list[tuple[str, str | bytes]]:
    async def stream():
        yield body

    form = await MultiPartParser(Headers({"content-type": ctype}), stream()).parse()
    return [(k, await v.read() if isinstance(v, UploadFile) else v) for k, v in form.multi_items()]


def ours(body: bytes, ctype: str) -> list[tuple[str, str | bytes]] | None:
    parts = split_multipart(body, ctype, max_files=10, max_fields=10)
    return None if parts is None else [(k, d if isinstance(v, UploadFile) else v) for k, v, d in parts]


@pytest.mark.parametrize(
    ("files", "data"),
    [
        ([("file", ("a.png", PNG, "image/png"))], {"samples": "32"}),
        ([("file", ("a.png", PNG, "image/png")), ("file", ("b.png", b"", "image/png"))], {"seed": "7", "x": "é"}),
        ([("file", ("x.jpg", PNG, "application/octet-stream"))], {"resize": "true", "return_samples": ""}),
    ],
)
def test_plain_bodies_read_as_starlette_reads_them(files: list, data: dict) -> None:
    body, ctype = encoded(files, data)
    assert ours(body, ctype) == asyncio.run(starlette_parts(body, ctype))


@pytest.mark.parametrize(
    "change",
    [
        lambda b, c: (b"preamble\r\n" + b, c),  # a preamble
        lambda b, c: (b, c + "; charset=utf-8"),  # another parameter
        lambda b, c: (b.replace(b"Content-Type: image/png", b"Content-Transfer-Encoding: base64"), c),
        lambda b, c: (b.replace(b'filename="a.png"', b"filename*=UTF-8''a.png"), c),
        lambda b, c: (b.replace(b'name="samples"', b'name="sam\\"ples"'), c),
        lambda b, c: (b[:-20], c),  # cut short: no close delimiter
        lambda b, c: (b.replace(b"\r\n\r\n32", b"\r\n\r\n\xff\xfe"), c),  # not UTF-8
        lambda b, c: (b, "multipart/form-data"),  # no boundary
    ],
)
def test_anything_else_is_left_to_starlette(change) -> None:
    body, ctype = change(*encoded([("file", ("a.png", PNG, "image/png"))], {"samples": "32"}))
    assert ours(body, ctype) is None


def test_over_the_part_limits_is_left_to_starlette_which_refuses() -> None:
    body, ctype = encoded([("file", (f"{i}.png", PNG, "image/png")) for i in range(3)], {})
    assert split_multipart(body, ctype, max_files=2, max_fields=10) is None
    assert split_multipart(body, ctype, max_files=3, max_fields=10) is not None
    body, ctype = encoded([], {"a": "1", "b": "2"})
    assert split_multipart(body, ctype, max_files=2, max_fields=1) is None
    body, ctype = encoded([], {"a": "x" * (MAX_FIELD_BYTES + 1)})
    assert split_multipart(body, ctype, max_files=2, max_fields=10) is None

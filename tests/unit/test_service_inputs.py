"""Every client mistake gets a 4xx whose message says what to fix (never a 500)."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import Settings, create_app
from service.compute.inputs import LOOP_INPUTS, LOOP_PIXELS, InputSpec, Offload, decode_image, decode_inputs
from service.edge.transport import LOOP_BODY_BYTES
from service.errors import InvalidInput

SIZE = 14
MAX_INPUTS = 4
MAX_SAMPLES = 64
MAX_BODY = 64 * 1024
MAX_PIXELS = 100 * 100


def png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


GOOD = np.full((SIZE, SIZE), 0.5).tolist()
NOISE_PNG = png((np.random.default_rng(0).random((SIZE, SIZE)) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def client(hand_checkpoint: Path) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=hand_checkpoint,
        device="cpu",
        max_inputs=MAX_INPUTS,
        max_samples=MAX_SAMPLES,
        default_samples=8,
        max_body_bytes=MAX_BODY,
        max_image_pixels=MAX_PIXELS,
        max_wait_ms=0,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def post_json(body: Any) -> dict[str, Any]:
    return {"json": body}


def post_raw(text: str, content_type: str = "application/json") -> dict[str, Any]:
    return {"content": text.encode(), "headers": {"Content-Type": content_type}}


# (case id, request kwargs, status, a fragment of the message)
V1_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("wrong shape", post_json({"inputs": [[[0.5] * 3] * 3]}), 400, "expects [1, 14, 14]"),
    ("wrong rank", post_json({"inputs": [[0.5] * SIZE]}), 400, "expects [1, 14, 14]"),
    ("ragged array", post_json({"inputs": [[[0.5] * SIZE] * 13 + [[0.5] * 3]]}), 400, "ragged"),
    ("strings in array", post_json({"inputs": [[["a"] * SIZE] * SIZE]}), 400, "send numbers"),
    ("booleans in array", post_json({"inputs": [[[True] * SIZE] * SIZE]}), 400, "booleans"),
    ("number as input", post_json({"inputs": [3]}), 400, "send a nested array"),
    ("null as input", post_json({"inputs": [None]}), 400, "is a null"),
    ("NaN", post_raw('{"inputs": [[' + ",".join(["[" + ",".join(["NaN"] * SIZE) + "]"] * SIZE) + "]]}"), 400, "NaN"),
    (
        "infinity",
        post_raw('{"inputs": [[' + ",".join(["[" + ",".join(["1e999"] * SIZE) + "]"] * SIZE) + "]]}"),
        400,
        "infinity",
    ),
    ("values above 1", post_json({"inputs": [np.full((SIZE, SIZE), 255).tolist()]}), 400, "divide them by 255"),
    ("negative values", post_json({"inputs": [np.full((SIZE, SIZE), -0.1).tolist()]}), 400, "must be in [0, 1]"),
    ("not base64", post_json({"inputs": ["not base64!!"]}), 400, "not valid base64"),
    ("not an image", post_json({"inputs": [b64(b"hello, this is text")]}), 400, "not a PNG or JPEG"),
    (
        "gif is not accepted",
        post_json({"inputs": [b64(png(np.zeros((SIZE, SIZE), np.uint8), "GIF"))]}),
        400,
        "PNG or JPEG",
    ),
    ("truncated image", post_json({"inputs": [b64(NOISE_PNG[: len(NOISE_PNG) // 2])]}), 400, "truncated"),
    ("empty image", post_json({"inputs": [""]}), 400, "empty"),
    ("decompression bomb", post_json({"inputs": [b64(png_claiming(100_000, 100_000))]}), 400, "decompression bomb"),
    ("over the pixel limit", post_json({"inputs": [b64(png_claiming(200, 200))]}), 400, "over the limit of 10000"),
    ("wrong image size", post_json({"inputs": [b64(png(np.zeros((20, 10), np.uint8)))]}), 400, "resize=true"),
    ("too many inputs", post_json({"inputs": [GOOD] * (MAX_INPUTS + 1)}), 400, f"at most {MAX_INPUTS}"),
    ("no inputs", post_json({"inputs": []}), 400, "at least one input"),
    ("inputs missing", post_json({"samples": 4}), 422, "inputs: Field required"),
    ("inputs not a list", post_json({"inputs": "abc"}), 422, "inputs: Input should be a valid list"),
    ("samples zero", post_json({"inputs": [GOOD], "samples": 0}), 400, f"between 1 and {MAX_SAMPLES}"),
    (
        "samples too many",
        post_json({"inputs": [GOOD], "samples": MAX_SAMPLES + 1}),
        400,
        f"between 1 and {MAX_SAMPLES}",
    ),
    ("samples not a number", post_json({"inputs": [GOOD], "samples": "lots"}), 422, "samples"),
    ("negative seed", post_json({"inputs": [GOOD], "seed": -1}), 422, "seed"),
    ("huge seed", post_json({"inputs": [GOOD], "seed": 2**64}), 422, "seed"),
    ("unknown field", post_json({"inputs": [GOOD], "sample": 4}), 422, "sample: Extra inputs are not permitted"),
    ("not an object", post_json([GOOD]), 422, "JSON object"),
    ("invalid JSON", post_raw('{"inputs": [1,'), 400, "not valid JSON"),
    ("unsupported content type", post_raw("inputs=1", "text/plain"), 415, "application/json or multipart/form-data"),
    ("body over the limit", post_json({"inputs": [GOOD], "pad": "x" * MAX_BODY}), 413, "over the limit"),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "fragment"), [c[1:] for c in V1_CASES], ids=[c[0] for c in V1_CASES]
)
def test_v1_bad_input(client: TestClient, request_kwargs: dict[str, Any], status: int, fragment: str) -> None:
    r = client.post("/v1/predict", **request_kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert fragment in body["error"], body["error"]


def files(*parts: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(name, (f"f{i}.png", data, "image/png")) for i, (name, data) in enumerate(parts)]


FORM_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("no file part", {"data": {"samples": "4"}}, 400, "-F file=@image.png"),
    ("only options, multipart", {"files": files(("samples", b"4"))}, 400, "no `file` part"),
    ("file is text", {"data": {"file": "abc"}, "files": files(("other", NOISE_PNG))}, 400, "unknown form field"),
    ("unknown form field", {"files": files(("file", NOISE_PNG), ("image", NOISE_PNG))}, 400, "unknown form field"),
    ("too many files", {"files": files(*[("file", NOISE_PNG)] * (MAX_INPUTS + 1))}, 400, f"at most {MAX_INPUTS}"),
    ("far too many files", {"files": files(*[("file", NOISE_PNG)] * (MAX_INPUTS + 3))}, 400, "files"),
    ("not an image", {"files": files(("file", b"GIF89a nope"))}, 400, "file[0] is not a PNG"),
    ("truncated upload", {"files": files(("file", NOISE_PNG[:-30]))}, 400, "truncated"),
    ("bad samples", {"files": files(("file", NOISE_PNG)), "data": {"samples": "0"}}, 400, "between 1 and"),
    ("samples not a number", {"files": files(("file", NOISE_PNG)), "data": {"samples": "x"}}, 422, "samples"),
    ("bad resize flag", {"files": files(("file", NOISE_PNG)), "data": {"resize": "maybe"}}, 422, "resize"),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "fragment"), [c[1:] for c in FORM_CASES], ids=[c[0] for c in FORM_CASES]
)
def test_multipart_bad_input(client: TestClient, request_kwargs: dict[str, Any], status: int, fragment: str) -> None:
    r = client.post("/v1/predict", **request_kwargs)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"], r.json()["error"]


def test_a_text_field_named_file_is_rejected(client: TestClient) -> None:
    r = client.post("/v1/predict", files=files(("file", NOISE_PNG)), data={"file": "text"})
    assert r.status_code == 400 and "text field, not a file" in r.json()["error"]


def test_multipart_good_upload_for_contrast(client: TestClient) -> None:
    assert client.post("/v1/predict", files=files(("file", NOISE_PNG))).status_code == 200


def test_chunked_body_over_the_limit(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ['
        for _ in range(MAX_BODY // 1000 + 2):
            yield b"0," * 500

    r = client.post("/v1/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["error"]


def v2_request(data: Any = None, **overrides: Any) -> dict[str, Any]:
    tensor = {
        "name": "image",
        "shape": [1, 1, SIZE, SIZE],
        "datatype": "FP32",
        "data": [0.5] * SIZE * SIZE if data is None else data,
    }
    tensor.update(overrides.pop("tensor", {}))
    return {"inputs": [tensor], **overrides}


def binary_kwargs(header: dict[str, Any], blob: bytes, length: int | None = None) -> dict[str, Any]:
    head = json.dumps(header).encode()
    return {
        "content": head + blob,
        "headers": {"Inference-Header-Content-Length": str(len(head) if length is None else length)},
    }


RAW = np.full((1, 1, SIZE, SIZE), 0.5, np.float32).tobytes()
V2_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("wrong shape", post_json(v2_request(tensor={"shape": [1, 1, 7, 28]})), 400, "expects [B, 1, 14, 14]"),
    ("data does not fit shape", post_json(v2_request(data=[0.5] * 10)), 400, "needs 196"),
    ("wrong datatype", post_json(v2_request(tensor={"datatype": "INT8"})), 400, "send FP32"),
    ("strings as data", post_json(v2_request(data=["a"] * SIZE * SIZE)), 400, "must be numbers"),
    ("values above 1", post_json(v2_request(data=[2.0] * SIZE * SIZE)), 400, "must be in [0, 1]"),
    ("NaN", post_raw(json.dumps(v2_request(data=[float("nan")] * SIZE * SIZE))), 400, "NaN"),
    ("wrong input name", post_json(v2_request(tensor={"name": "input__0"})), 400, "only input is 'image'"),
    ("two inputs", post_json({"inputs": [v2_request()["inputs"][0]] * 2}), 400, "exactly one input"),
    (
        "no data",
        post_json({"inputs": [{"name": "image", "shape": [1, 1, SIZE, SIZE], "datatype": "FP32"}]}),
        400,
        "neither",
    ),
    ("bad shape type", post_json(v2_request(tensor={"shape": "1x1"})), 400, "list of non-negative integers"),
    ("empty batch", post_json(v2_request(data=[], tensor={"shape": [0, 1, SIZE, SIZE]})), 400, "batch size 0"),
    (
        "too many images",
        post_json(v2_request(data=[0.5] * SIZE * SIZE * 5, tensor={"shape": [5, 1, SIZE, SIZE]})),
        400,
        f"at most {MAX_INPUTS}",
    ),
    ("samples out of range", post_json(v2_request(parameters={"samples": 0})), 400, "'samples' must be in [1, 64]"),
    ("seed not an integer", post_json(v2_request(parameters={"seed": "x"})), 400, "'seed' must be an integer"),
    ("unknown output", post_json(v2_request(outputs=[{"name": "logits"}])), 400, "unknown output 'logits'"),
    ("invalid JSON", post_raw("{nope"), 400, "not valid JSON"),
    (
        "binary size mismatch",
        binary_kwargs(v2_request(tensor={"parameters": {"binary_data_size": 12}, "data": None}), RAW),
        400,
        "binary_data_size is 12",
    ),
    (
        "binary data missing",
        binary_kwargs(v2_request(tensor={"parameters": {"binary_data_size": len(RAW)}}), RAW[:100]),
        400,
        "only 100 follow",
    ),
    ("bad header length", binary_kwargs(v2_request(), b"", length=10**6), 400, "Inference-Header-Content-Length"),
    (
        "undeclared binary bytes",
        binary_kwargs(v2_request(), b"\0" * 8),
        400,
        "no input declares them",
    ),
    ("unknown encoding", {"json": v2_request(), "headers": {"Content-Encoding": "br"}}, 400, "gzip"),
    ("corrupt gzip", {"content": b"not gzip", "headers": {"Content-Encoding": "gzip"}}, 400, "decompressed"),
    (
        "gzip bomb",
        {"content": zlib.compress(b" " * (MAX_BODY * 4), 9), "headers": {"Content-Encoding": "deflate"}},
        413,
        "decompressed body is over the limit",
    ),
    ("body over the limit", post_json(v2_request(pad="x" * MAX_BODY)), 413, "over the limit"),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "fragment"), [c[1:] for c in V2_CASES], ids=[c[0] for c in V2_CASES]
)
def test_v2_bad_input(client: TestClient, request_kwargs: dict[str, Any], status: int, fragment: str) -> None:
    r = client.post("/v2/models/tiny_mfdv/infer", **request_kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body  # the only error shape tritonclient parses
    assert fragment in body["error"], body["error"]


def test_v2_unknown_model_is_404(client: TestClient) -> None:
    r = client.post("/v2/models/other/infer", json=v2_request())
    assert r.status_code == 404 and "unknown model 'other'; the repository has ['tiny_mfdv']" in r.json()["error"]
    r = client.post("/v2/models/tiny_mfdv/versions/2/infer", json=v2_request())
    assert r.status_code == 404 and "serves version '1', not '2'" in r.json()["error"]


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00\xff\xfe", b"[]", b"null", b'{"inputs": {}}', b'{"inputs": [[[[[[[[1]]]]]]]]}', b'{"inputs": [{}]}'],
)
def test_junk_bodies_never_cause_a_500(client: TestClient, body: bytes) -> None:
    for path in ("/v1/predict", "/v2/models/tiny_mfdv/infer"):
        r = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)


# -- the decoder itself --------------------------------------------------------------------------

SPEC1 = InputSpec((1, SIZE, SIZE), MAX_PIXELS)
SPEC3 = InputSpec((3, SIZE, SIZE), MAX_PIXELS)


@pytest.mark.parametrize(
    ("arr", "spec", "expected"),
    [
        (np.full((SIZE, SIZE, 3), (255, 0, 0), np.uint8), SPEC1, 0.299),  # colour -> gray (ITU-R 601 luma)
        (np.full((SIZE, SIZE), 128, np.uint8), SPEC3, 128 / 255),  # gray -> 3 channels
        (np.full((SIZE, SIZE, 4), (0, 0, 255, 7), np.uint8), SPEC3, None),  # RGBA -> RGB (alpha dropped)
        (np.full((SIZE, SIZE), 30000, np.uint16), SPEC1, 30000 / 65535),  # 16-bit gray
    ],
)
def test_channel_conversion(arr: np.ndarray, spec: InputSpec, expected: float | None) -> None:
    x = decode_image(png(arr), spec, "x")
    assert x.shape == spec.shape and x.dtype == np.float32
    if expected is not None:
        assert float(x.mean()) == pytest.approx(expected, abs=2 / 255)
    else:
        assert x[2].min() == 1.0 and x[0].max() == 0.0


def test_resize_keeps_the_picture() -> None:
    big = np.zeros((56, 28), np.uint8)
    big[:, :14] = 255  # left half bright, non-square source
    x = decode_image(png(big), SPEC1, "x", resize=True)
    assert x.shape == (1, SIZE, SIZE)
    assert x[0, :, :6].min() > 0.9 and x[0, :, 8:].max() < 0.1


def test_header_is_checked_before_pixels_are_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bomb is rejected from its header: the pixel decoder never runs."""
    from PIL import ImageFile

    def fail(*_: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(InvalidInput, match="over the limit"):
        decode_image(png_claiming(5000, 5000), SPEC1, "x")
    with pytest.raises(InvalidInput, match="expects 14x14"):
        decode_image(png_claiming(20, 20), SPEC1, "x")


# -- what decoding may cost --------------------------------------------------------------------------


BIG1 = InputSpec((1, SIZE, SIZE), 4096 * 4096)
BIG3 = InputSpec((3, SIZE, SIZE), 4096 * 4096)


def jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("arr", "spec", "expected"),
    [
        (np.full((2000, 1500), 30000, np.uint16), BIG1, 30000 / 65535),  # 16-bit: box-reduced in float32
        (np.full((1500, 2000, 4), (255, 0, 0, 9), np.uint8), BIG1, 0.299),  # RGBA: reduced, then to gray
        (np.full((1500, 2000), 77, np.uint8), BIG3, 77 / 255),  # gray -> 3 channels
    ],
)
def test_large_images_are_reduced_before_conversion(arr: np.ndarray, spec: InputSpec, expected: float) -> None:
    x = decode_image(png(arr), spec, "x", resize=True)
    assert x.shape == spec.shape and x.dtype == np.float32
    assert float(x.min()) == pytest.approx(expected, abs=2 / 255) and float(x.max()) == pytest.approx(
        expected, abs=2 / 255
    )


def test_a_reduced_image_keeps_the_picture() -> None:
    """Box reduction then bilinear resampling keeps where the bright half is, 16-bit and 8-bit alike."""
    for dtype, high in ((np.uint8, 255), (np.uint16, 65535)):
        big = np.zeros((1400, 1400), dtype)
        big[:, :700] = high  # left half bright
        x = decode_image(png(big), BIG1, "x", resize=True)
        assert x[0, :, :6].min() > 0.9 and x[0, :, 8:].max() < 0.1, dtype


def test_a_large_jpeg_is_decoded_reduced(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resized JPEG is decoded at 1/8 per side by the decoder itself (``Image.draft``)."""
    from PIL import ImageFile

    big = np.zeros((1600, 1600, 3), np.uint8)
    big[:800] = (0, 255, 0)  # top half green
    data = jpeg(big)
    decoded: list[tuple[int, int]] = []
    real = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        decoded.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    x = decode_image(data, BIG1, "x", resize=True)
    assert set(decoded) == {(200, 200)}  # 1600 / 8 per side
    assert x[0, :5].min() > 0.5 and x[0, 9:].max() < 0.1  # 0.587 = the luma of pure green


def test_32_bit_grey_is_reduced_in_its_mode() -> None:
    """Mode "I" (32-bit integers; no PNG writer makes it, other decoders may): scaled by 65535 above 255."""
    from service.compute.inputs import _to_channels

    for value, scale in ((3000, 65535), (200, 255)):
        im = Image.fromarray(np.full((1500, 2000), value, np.int32))
        x = _to_channels(im, 1, (SIZE, SIZE), "x")
        assert x.shape == (SIZE, SIZE, 1) and x.dtype == np.float32
        assert float(x.min()) == pytest.approx(value / scale, abs=1e-6) == pytest.approx(float(x.max()), abs=1e-6)


def image_of(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    """Random pixels in ``mode`` (L, LA, RGB, RGBA, P, 1, I;16)."""
    rng = np.random.default_rng(seed)
    if mode == "P":
        im = Image.fromarray(rng.integers(0, 17, (height, width), dtype=np.uint8), "P")
        im.putpalette(rng.integers(0, 256, 17 * 3, dtype=np.uint8).tobytes())
        return im
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (height, width), dtype=np.uint8) * 255).convert("1")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    bands = len(mode)
    return Image.frombytes(mode, (width, height), rng.integers(0, 256, (height, width, bands), np.uint8).tobytes())


@pytest.mark.parametrize("mode", ["LA", "RGBA", "P", "1"])
@pytest.mark.parametrize(
    ("width", "height", "factors"), [(1001, 777, (7, 5)), (300, 2000, (1, 13)), (5000, 3, (11, 1))]
)
def test_tiled_reduction_gives_the_pixels_of_image_reduce(
    monkeypatch: pytest.MonkeyPatch, mode: str, width: int, height: int, factors: tuple[int, int]
) -> None:
    """Tile by tile (small tiles here: many, partial ones at the right and bottom edges too), the same
    pixels as reducing the whole image (converted first where it is a palette or 1-bit one)."""
    from service.compute import inputs

    monkeypatch.setattr(inputs, "TILE_PIXELS", 5000)
    im = image_of(mode, width, height)
    whole = (im if mode in inputs.REDUCIBLE_MODES else im.convert("RGB")).reduce(factors)
    tiled = inputs._reduce_tiled(im, factors, "RGB")
    assert (tiled.mode, tiled.size) == (whole.mode, whole.size)
    assert np.array_equal(np.asarray(tiled), np.asarray(whole))


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "1", "I;16"])
def test_no_full_size_copy_is_made_while_decoding(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Every image Pillow derives while a 2000 x 1500 image is decoded (crops, conversions, reductions,
    resizes; Image.reduce's premultiplied copy of LA and RGBA) is at most a tile: the decoded image is
    the one full-size allocation (docs/service.md: at most 4 bytes per pixel per decode)."""
    from service.compute import inputs

    data = png_bytes(image_of(mode, 2000, 1500))
    derived: list[tuple[str, tuple[int, int]]] = []
    real = Image.Image._new

    def spy(self: Image.Image, core: Any) -> Image.Image:
        derived.append((core.mode, core.size))
        return real(self, core)

    monkeypatch.setattr(Image.Image, "_new", spy)
    x = decode_image(data, BIG3 if mode in ("RGB", "RGBA") else BIG1, "x", resize=True)
    assert x.dtype == np.float32 and derived
    assert max(w * h for _, (w, h) in derived) <= inputs.TILE_PIXELS, derived


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_a_large_image_is_closed_and_its_memory_released_after_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """After an image of at least ``RELEASE_BYTES`` the memory goes back (``release_memory``), also when
    its pixels turn out corrupt; a small image is only closed (its release would cost more than it frees)."""
    from service.compute import inputs

    released: list[int] = []
    monkeypatch.setattr(inputs, "release_memory", lambda: released.append(1))
    large = png_bytes(image_of("RGBA", 1100, 1000))  # 4.4 MB decoded
    assert 1100 * 1000 * 4 >= inputs.RELEASE_BYTES > 900 * 1000 * 4
    for data, count in ((png_bytes(image_of("RGBA", 900, 1000)), 0), (large, 1)):
        im = inputs.open_image(data, BIG1, "x", resize=True)
        assert inputs.decode_opened(im, BIG1, "x").shape == BIG1.shape
        with pytest.raises(ValueError, match="closed image"):
            im.getpixel((0, 0))
        assert len(released) == count
    truncated = inputs.open_image(large[: len(large) // 2], BIG1, "x", resize=True)
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        inputs.decode_opened(truncated, BIG1, "x")
    assert len(released) == 2
    with pytest.raises(ValueError, match="closed image"):
        truncated.getpixel((0, 0))


def test_malloc_is_tuned_unless_the_environment_tunes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.compute import inputs

    if inputs._glibc() is None:
        pytest.skip("not glibc")
    for name in (*inputs.MALLOC_ENV, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert inputs.tune_malloc.__wrapped__() is True  # (the thresholds the service sets at its first large decode)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert inputs.tune_malloc.__wrapped__() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")
    assert inputs.tune_malloc.__wrapped__() is False
    inputs.release_memory()  # (runs: glibc's malloc_trim, Pillow's cache)


def test_the_request_pixel_budget_counts_every_header_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    spec = InputSpec((1, SIZE, SIZE), 4096 * 4096, max_request_pixels=1000 * 1000)
    under = png(np.zeros((700, 700), np.uint8))  # 490,000 pixels each: two fit, three do not
    assert decode_inputs([under, under], spec, max_inputs=8, resize=True).shape == (2, 1, SIZE, SIZE)

    def fail(*_: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(InvalidInput, match=r"claim 1470000 pixels together, over the limit of 1000000 per request"):
        decode_inputs([under, under, under], spec, max_inputs=8, resize=True)


def test_the_request_pixel_budget_counts_a_jpeg_at_its_reduced_size() -> None:
    spec = InputSpec((1, SIZE, SIZE), 4096 * 4096, max_request_pixels=1000 * 1000)
    big = jpeg(np.zeros((1600, 1600), np.uint8))  # claims 2.56M pixels; decoded at 200 x 200
    assert decode_inputs([big] * 4, spec, max_inputs=8, resize=True).shape == (4, 1, SIZE, SIZE)


def test_decoding_on_the_event_loop_stops_at_its_budget_before_any_pixel(monkeypatch: pytest.MonkeyPatch) -> None:
    """``on_loop``: a few small images are decoded there; more inputs, or more pixels than ``LOOP_PIXELS``
    claimed, raise ``Offload`` from the headers (the caller decodes in the pool); client mistakes stay 4xx."""
    from PIL import ImageFile

    spec = InputSpec((1, SIZE, SIZE), 4096 * 4096)
    small = png(np.zeros((SIZE, SIZE), np.uint8))
    assert decode_inputs([small] * LOOP_INPUTS, spec, max_inputs=8, on_loop=True).shape == (LOOP_INPUTS, 1, SIZE, SIZE)
    large = png(np.zeros((200, 200), np.uint8))  # 40,000 pixels > LOOP_PIXELS
    assert LOOP_PIXELS < 200 * 200

    def fail(*_: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(Offload):
        decode_inputs([small] * (LOOP_INPUTS + 1), spec, max_inputs=8, on_loop=True)
    with pytest.raises(Offload):
        decode_inputs([large], spec, max_inputs=8, resize=True, on_loop=True)
    with pytest.raises(InvalidInput, match="14x14"):  # the same 400 as in the pool
        decode_inputs([large], spec, max_inputs=8, on_loop=True)


def test_small_bodies_are_decoded_on_the_event_loop_large_ones_in_the_decode_pool(client: TestClient) -> None:
    pool = client.app.state.mfdv.ready().decode_pool  # type: ignore[attr-defined]
    calls: list[str] = []
    real = pool.run

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    pool.run = counted
    try:
        small = png(np.zeros((SIZE, SIZE), np.uint8))
        assert client.post("/v1/predict", files=[("file", ("a.png", small, "image/png"))]).status_code == 200
        assert client.post("/v1/predict", json={"inputs": [b64(small)]}).status_code == 200
        assert calls == []
        large = png(np.zeros((90, 90), np.uint8))  # four claim 32,400 pixels together: over LOOP_PIXELS
        r = client.post("/v1/predict", files=[("file", ("a.png", large, "image/png"))] * 4, data={"resize": "true"})
        assert r.status_code == 200 and len(calls) == 1
        arrays = json.dumps({"inputs": [np.zeros((SIZE, SIZE)).tolist()] * MAX_INPUTS}, indent=8)
        assert len(arrays) > LOOP_BODY_BYTES  # a large JSON body is parsed in the pool too
        r = client.post("/v1/predict", content=arrays, headers={"content-type": "application/json"})
        assert r.status_code == 200 and len(calls) == 2
    finally:
        pool.run = real

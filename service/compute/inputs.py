"""Turn client inputs into model-ready pixels, rejecting every mistake with a message that says what to fix.

Accepted inputs (one image each):

- a nested array of numbers in [0, 1] shaped [C, H, W] (or [H, W] for one channel);
- a base64 string of a PNG or JPEG file (``data:image/png;base64,...`` URLs too);
- raw PNG/JPEG bytes (multipart uploads).

Images must have the model's size unless ``resize`` is set; colour and gray are
converted to the model's channels. Image headers are checked before any pixel is
decoded, so a file claiming huge dimensions costs nothing.

What decoding may cost is bounded before it starts: every image's header of a request is read
first, and together they may claim at most ``max_request_pixels`` pixels (a 32 KB PNG can claim
16 million). Within that budget a request's decode holds about one decoded image at a time
(at most 4 bytes per pixel): JPEGs are decoded already reduced (the decoder's DCT scaling, up to
1/8 per side) when they are resized, large images are box-reduced in their own mode before
anything is converted (alpha, palette and 16-bit images one tile at a time, so that no full-size
premultiplied, converted or float copy is made), and 16-bit images become float32, never float64.
Each image is closed as soon as it is decoded, and the memory of a large one goes back to the OS
(``tune_malloc``, ``release_memory``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import functools
import io
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InvalidInput

IMAGE_FORMATS = ("PNG", "JPEG")

LOOP_INPUTS = 4
LOOP_PIXELS = 128 * 128
"""What a request may decode on the event loop (``decode_inputs(on_loop=True)``): at most this many
inputs claiming at most this many pixels together (a 28x28 PNG decodes in tens of microseconds,
less than handing it to a decode thread and back costs); more is ``Offload``ed to the decode pool."""


class Offload(Exception):  # noqa: N818 (a signal, not an error)
    """Work started on the event loop that is too large for it; the caller runs it in the decode pool."""


REDUCING_GAP = 3.0
"""A resize first box-reduces the image by whole factors per side as long as it stays at least this
many times the target size, then resamples bilinearly; below 3x it is the bilinear resize alone."""

REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "CMYK", "I", "F"})
"""Modes ``Image.reduce`` works in (others are converted first)."""

DIRECT_MODES = REDUCIBLE_MODES - {"LA", "RGBA"}
"""Modes ``Image.reduce`` reduces without a full-size copy (it reduces LA and RGBA through a
premultiplied copy, La and RGBa); large images of other modes are reduced one tile at a time."""

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})

TILE_PIXELS = 256 * 1024
"""Pixels of one tile of a large image reduced tile by tile (``_reduce_tiled``, ``_box_reduce``): 1 MiB at
4 bytes per pixel, twice that with Pillow's premultiplied-alpha copy, four times as float32."""

RELEASE_BYTES = 4 * 1024 * 1024
"""After an image whose decoded pixels took at least this many bytes, ``release_memory`` runs."""

MALLOC_BYTES = 16 * 1024 * 1024
"""glibc's malloc, from the first large decode on (``tune_malloc``): allocations of at least this many
bytes get their own mapping, unmapped when freed (``M_MMAP_THRESHOLD``; Pillow allocates a large image in
16 MiB blocks), and a heap gives its free top back from this size on (``M_TRIM_THRESHOLD``)."""

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def pixel_bytes(mode: str) -> int:
    """Bytes Pillow stores one pixel of ``mode`` in: 1 (1-bit, L, P), 2 (16-bit grey), else 4 (every
    multi-band mode, LA and RGB included, and 32-bit I and F)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode in SIXTEEN_BIT_MODES else 4


@functools.cache
def _glibc() -> Any:
    """The process's C library when it is glibc (it has ``malloc_trim`` and ``mallopt``), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError, TypeError):  # musl, macOS, Windows
        return None
    return libc


@functools.cache
def tune_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds at ``MALLOC_BYTES`` (once per process; True when set).

    By default glibc raises both as large blocks are freed (up to 32 and 64 MiB): after one large
    decode, Pillow's 16 MiB blocks come from the decode thread's heap instead of their own mappings,
    and a thread's heap keeps a free top of up to twice that, which ``malloc_trim`` does not return.
    Fixed at 16 MiB, a large image's blocks are unmapped when it is closed and a decode thread's heap
    keeps less than 16 MiB. Left alone where the environment sets them (``MALLOC_*_THRESHOLD_``,
    ``GLIBC_TUNABLES``) or the C library is not glibc. This is process-wide; the model's compute
    allocates less than 16 MiB at a time (a torch forward and backward pass of 64 Fashion-MNIST
    images took 600 page faults with it, 4,700 without).
    """
    libc = _glibc()
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if libc is None or any(k in os.environ for k in MALLOC_ENV) or "glibc.malloc" in tunables:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MALLOC_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, MALLOC_BYTES))


def release_memory() -> None:
    """Hand the memory a large decode freed back to the OS.

    Pillow's cache of free blocks is emptied (it is empty unless ``PILLOW_BLOCKS_MAX`` is set) and
    glibc's ``malloc_trim(0)`` returns the free pages inside every heap (a few milliseconds at most):
    what the decode's smaller allocations (tiles, a smaller image's blocks) left there.
    """
    Image.core.clear_cache()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@dataclass(frozen=True)
class InputSpec:
    """What the model takes and how large images may claim to be.

    Attributes:
        shape: (C, H, W) of one input.
        max_image_pixels: largest width x height one image may claim (checked before decoding).
        max_request_pixels: most pixels all images of one request may claim together (before decoding;
            after a JPEG's DCT reduction): the bound on one request's decode work and memory.
    """

    shape: tuple[int, int, int]
    max_image_pixels: int
    max_request_pixels: int = 4096 * 4096

    @property
    def shape_text(self) -> str:
        c, h, w = self.shape
        alt = f" (or [{h}, {w}])" if c == 1 else ""
        return f"[{c}, {h}, {w}]{alt}"


def check_pixels(x: np.ndarray, where: str) -> None:
    """Reject NaN/inf and values outside [0, 1].

    Raises:
        InvalidInput: naming the offending values and the fix.
    """
    if not np.isfinite(x).all():
        raise InvalidInput(f"{where} contains NaN or infinity; send finite pixel values in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        hint = " (8-bit pixels? divide them by 255)" if hi <= 255 and lo >= 0 else ""
        raise InvalidInput(f"{where} has values in [{lo:g}, {hi:g}]; pixel values must be in [0, 1]{hint}")


def decode_array(value: Any, spec: InputSpec, where: str) -> np.ndarray:
    """A nested list of numbers -> float32 [C, H, W].

    Raises:
        InvalidInput: ragged, non-numeric, wrong shape, non-finite or out of [0, 1].
    """
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"{where} is a ragged nested array (rows of different lengths); expected shape {spec.shape_text}"
        ) from None
    if arr.dtype == object:
        raise InvalidInput(f"{where} is a ragged or mixed nested array; expected numbers shaped {spec.shape_text}")
    if arr.dtype.kind == "b":
        raise InvalidInput(f"{where} holds booleans; send numbers in [0, 1]")
    if arr.dtype.kind not in "iuf":
        raise InvalidInput(f"{where} holds {arr.dtype.kind!r}-type values (e.g. strings); send numbers in [0, 1]")
    c, h, w = spec.shape
    if arr.shape == (h, w) and c == 1:
        arr = arr[None]
    if arr.shape != (c, h, w):
        raise InvalidInput(f"{where} has shape {list(arr.shape)}; this model expects {spec.shape_text}")
    arr = arr.astype(np.float32)
    check_pixels(arr, where)
    return arr


def decode_base64(text: str, where: str) -> bytes:
    """Base64 (optionally a ``data:`` URL) -> bytes.

    Raises:
        InvalidInput: not valid base64.
    """
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise InvalidInput(f"{where} is a data URL without ';base64'; send base64-encoded PNG/JPEG bytes")
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            f"{where} is a string but not valid base64; send a base64-encoded PNG/JPEG file or a nested array of pixels"
        ) from None


def _reduction(src: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """Whole box-reduction factors per side (x, y) that keep ``src`` at least ``REDUCING_GAP`` x ``size``."""
    return tuple(max(int(s / t / REDUCING_GAP), 1) for s, t in zip(src, size, strict=True))  # type: ignore[return-value]


def _box_reduce(im: Image.Image, factors: tuple[int, int]) -> np.ndarray:
    """Mean over ``fx`` x ``fy`` blocks of a one-band image -> float32 [H / fy, W / fx] (the last partial
    blocks are dropped).

    One tile of whole blocks at a time (a crop, then its float32 copy; at most ``TILE_PIXELS`` or one
    block): no full-size copy of the image is made, however wide it is.
    """
    fx, fy = factors
    h, w = im.height // fy, im.width // fx
    step = min(w, max(1, TILE_PIXELS // (fx * fy)))  # blocks per tile
    out = np.empty((h, w), np.float32)
    for i in range(h):
        for j in range(0, w, step):
            n = min(step, w - j)
            tile = np.asarray(im.crop((j * fx, i * fy, (j + n) * fx, (i + 1) * fy)), dtype=np.float32)
            out[i, j : j + n] = tile.reshape(fy, n, fx).mean(axis=(0, 2))
    return out


def _reduce_tiled(im: Image.Image, factors: tuple[int, int], mode: str) -> Image.Image:
    """``im.reduce(factors)`` one tile of whole blocks at a time (at most ``TILE_PIXELS`` or one block);
    the same pixels, partial last blocks included.

    For images ``Image.reduce`` would copy whole: LA and RGBA, which it reduces through a premultiplied
    copy (La, RGBa), and palette and 1-bit images, which must be converted first (to ``mode``): done
    per tile, these copies stay tile-sized.
    """
    fx, fy = factors
    w, h = im.size
    cols = min(math.ceil(w / fx), max(1, TILE_PIXELS // (fx * fy)))  # blocks per tile, across
    rows = max(1, TILE_PIXELS // (cols * fx * fy))  # and down
    tw, th = cols * fx, rows * fy
    out: Image.Image | None = None
    for y in range(0, h, th):
        for x in range(0, w, tw):
            tile = im.crop((x, y, min(x + tw, w), min(y + th, h)))
            if tile.mode not in REDUCIBLE_MODES:  # palette, 1-bit: their values cannot be averaged
                tile = tile.convert(mode)
            small = tile.reduce(factors)
            if out is None:
                out = Image.new(small.mode, (math.ceil(w / fx), math.ceil(h / fy)))
            out.paste(small, (x // fx, y // fy))
    assert out is not None  # an image has at least one pixel
    return out


def _wide_gray(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """A 16- or 32-bit grey image (I;16*, I, F) -> float32 [H, W] in [0, 1] of ``size``.

    I;16 is scaled by 65535; I and F by 65535 when any pixel is above 255, else by 255. An image
    within ``REDUCING_GAP`` x the model's size is scaled in float64 (small: at most 9x the model's
    pixels); a larger one is box-reduced first, in float32, one band of rows at a time.
    """
    sixteen = im.mode in SIXTEEN_BIT_MODES
    factors = _reduction(im.size, size)
    if factors == (1, 1):
        arr = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if sixteen or arr.max() > 255 else 255.0
        gray = (arr / scale).clip(0, 1).astype(np.float32)
    else:
        scale = 65535.0 if sixteen or float(im.getextrema()[1]) > 255 else 255.0  # the whole image's maximum
        reduced = _box_reduce(im, factors) if sixteen else np.asarray(im.reduce(factors), dtype=np.float32)
        gray = (reduced / np.float32(scale)).clip(0, 1)
    out = Image.fromarray(gray, mode="F")
    if out.size != size:
        out = out.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def _to_channels(im: Image.Image, channels: int, size: tuple[int, int], where: str) -> np.ndarray:
    """Image -> array [H, W, C] with the model's channels and ``size`` (uint8, or float32 in [0, 1] for 16-bit).

    A large image is box-reduced in its own mode first (``REDUCING_GAP``; one tile at a time where
    ``Image.reduce`` would copy it whole), so no full-size copy in another mode or dtype is made; then
    converted and resized bilinearly, as a small image always was.
    """
    if im.mode in SIXTEEN_BIT_MODES or im.mode in ("I", "F"):
        out = _wide_gray(im, size)[..., None]
        return np.repeat(out, channels, axis=2) if channels == 3 else out
    if channels not in (1, 3):
        raise InvalidInput(
            f"{where}: this model takes {channels}-channel inputs, which images cannot carry; send arrays"
        )
    mode = "L" if channels == 1 else "RGB"
    if im.mode == mode and im.size == size:  # the common case: nothing to reduce, convert or resize
        arr = np.asarray(im)
        return arr[..., None] if arr.ndim == 2 else arr
    factors = _reduction(im.size, size)
    if factors != (1, 1):
        im = im.reduce(factors) if im.mode in DIRECT_MODES else _reduce_tiled(im, factors, mode)
    if im.mode != mode:  # (convert to the same mode would copy)
        im = im.convert(mode)
    if im.size != size:
        im = im.resize(size, Image.Resampling.BILINEAR)
    arr = np.asarray(im)
    return arr[..., None] if arr.ndim == 2 else arr


def open_image(data: bytes, spec: InputSpec, where: str, resize: bool = False) -> Image.Image:
    """PNG/JPEG bytes -> an opened image whose header is checked and whose pixels are not decoded yet.

    A JPEG that will be resized is set to decode already reduced (``Image.draft``: the decoder's
    DCT scaling by 1/2, 1/4 or 1/8 per side, down to no less than the model's size).

    Raises:
        InvalidInput: not a PNG/JPEG, too many pixels claimed, wrong size without ``resize``.
    """
    _, h, w = spec.shape
    if not data:
        raise InvalidInput(f"{where} is empty; send a PNG or JPEG file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(
            f"{where} claims more than {spec.max_image_pixels} pixels (a decompression bomb?); "
            f"send an image of {w}x{h} pixels"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidInput(f"{where} is not a PNG or JPEG image; send PNG/JPEG bytes or a nested array") from None
    iw, ih = im.size
    if iw * ih > spec.max_image_pixels:
        im.close()
        raise InvalidInput(
            f"{where} claims {iw}x{ih} = {iw * ih} pixels, over the limit of {spec.max_image_pixels} "
            f"(a decompression bomb?); send an image of {w}x{h} pixels"
        )
    if not resize and (iw, ih) != (w, h):
        im.close()
        raise InvalidInput(
            f"{where} is {iw}x{ih} pixels; this model expects {w}x{h} (width x height). "
            "Resize it, or set resize=true to let the service resize it"
        )
    if im.format == "JPEG" and (iw, ih) != (w, h):
        with contextlib.suppress(OSError, ValueError):  # else decoded at full size, within the checked budget
            im.draft(im.mode, (w, h))
    return im


def decode_opened(im: Image.Image, spec: InputSpec, where: str, out: np.ndarray | None = None) -> np.ndarray:
    """An opened image (``open_image``) -> float32 [C, H, W] in [0, 1]; the image is closed after
    (its pixels freed), and when they were large (``RELEASE_BYTES``) so is the memory (``release_memory``).

    Args:
        out: where to write the pixels (float32 [C, H, W]; default: a new array).

    Raises:
        InvalidInput: truncated or corrupt data, or channels an image cannot carry.
    """
    c, h, w = spec.shape
    if out is None:
        out = np.empty((c, h, w), np.float32)
    large = im.width * im.height * pixel_bytes(im.mode) >= RELEASE_BYTES  # (a JPEG's size is after its draft)
    if large:
        tune_malloc()
    corrupt = False
    try:
        im.load()
        arr = _to_channels(im, c, (w, h), where)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        corrupt = True  # raised below: this exception's traceback would keep the decoder's frames, and pixels
    finally:
        im.close()  # (``with im`` would not: Pillow's ``__exit__`` closes only the file)
        if large:
            release_memory()
    if corrupt:
        raise InvalidInput(f"{where} is truncated or corrupt (its pixels could not be decoded); send the complete file")
    chw = arr.transpose(2, 0, 1)
    if arr.dtype == np.uint8:
        np.divide(chw, np.float32(255.0), out=out, dtype=np.float32)  # float32 / float32(255), as astype + /=
    else:
        out[...] = chw
    return out


def decode_image(data: bytes, spec: InputSpec, where: str, resize: bool = False) -> np.ndarray:
    """PNG/JPEG bytes -> float32 [C, H, W] in [0, 1].

    The header is checked (format, claimed size, model size) before pixels are decoded.

    Raises:
        InvalidInput: not a PNG/JPEG, too many pixels claimed, wrong size without
            ``resize``, truncated or corrupt data.
    """
    return decode_opened(open_image(data, spec, where, resize), spec, where)


def open_item(value: Any, spec: InputSpec, where: str, resize: bool = False) -> np.ndarray | Image.Image:
    """One JSON input (nested array or base64 string) or raw bytes -> float32 [C, H, W] (arrays),
    or an opened image whose pixels are not decoded yet (``open_image``)."""
    if isinstance(value, bytes | bytearray):
        return open_image(bytes(value), spec, where, resize)
    if isinstance(value, str):
        return open_image(decode_base64(value, where), spec, where, resize)
    if isinstance(value, list):
        return decode_array(value, spec, where)
    kind = "null" if value is None else type(value).__name__
    raise InvalidInput(f"{where} is a {kind}; send a nested array of pixels {spec.shape_text} or a base64 PNG/JPEG")


def decode_inputs(
    items: Sequence[Any],
    spec: InputSpec,
    *,
    max_inputs: int,
    resize: bool = False,
    name: str = "inputs",
    on_loop: bool = False,
) -> torch.Tensor:
    """Decode a request's inputs into one float32 tensor [N, C, H, W].

    Args:
        on_loop: this runs on the event loop: decode only within ``LOOP_INPUTS`` and ``LOOP_PIXELS``
            (checked on the headers), else raise ``Offload`` before any pixel is decoded.

    Raises:
        InvalidInput: no inputs, too many, or any bad input (the message names its index).
        Offload: ``on_loop`` and more work than the event loop should do.
    """
    if len(items) == 0:
        raise InvalidInput(f"{name} is empty; send at least one input")
    if len(items) > max_inputs:
        raise InvalidInput(f"{len(items)} inputs in one request; at most {max_inputs} are allowed, split the request")
    if on_loop and len(items) > LOOP_INPUTS:
        raise Offload
    opened: list[np.ndarray | Image.Image] = []
    try:
        for i, v in enumerate(items):  # every header before any pixel
            opened.append(open_item(v, spec, f"{name}[{i}]", resize))
        images = [o for o in opened if isinstance(o, Image.Image)]
        claimed = sum(im.width * im.height for im in images)
        if claimed > spec.max_request_pixels:
            raise InvalidInput(
                f"the {len(images)} images of this request claim {claimed} pixels together, over the limit of "
                f"{spec.max_request_pixels} per request (MFDV_MAX_REQUEST_PIXELS); send smaller images "
                f"({spec.shape[2]}x{spec.shape[1]} is what the model takes) or fewer per request"
            )
        if on_loop and claimed > LOOP_PIXELS:
            raise Offload
        batch = np.empty((len(opened), *spec.shape), np.float32)
        for i, o in enumerate(opened):
            if isinstance(o, Image.Image):
                decode_opened(o, spec, f"{name}[{i}]", out=batch[i])
            else:
                batch[i] = o
    finally:
        for o in opened:
            if isinstance(o, Image.Image):
                o.close()
    return torch.from_numpy(batch)


def check_batch(x: np.ndarray, spec: InputSpec, where: str, max_inputs: int) -> np.ndarray:
    """Validate a tensor [B, C, H, W] (or [B, H, W] for one channel) -> float32 [B, C, H, W].

    Raises:
        InvalidInput: wrong shape, empty or too large a batch, non-finite or out-of-range pixels.
    """
    c, h, w = spec.shape
    if x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
        x = x[:, None]
    if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
        raise InvalidInput(f"{where} has shape {list(x.shape)}; this model expects [B, {c}, {h}, {w}]")
    if x.shape[0] < 1:
        raise InvalidInput(f"{where} has batch size 0; send at least one image")
    if x.shape[0] > max_inputs:
        raise InvalidInput(f"batch of {x.shape[0]} images; at most {max_inputs} are allowed, split the request")
    x = x.astype(np.float32, copy=False)
    check_pixels(x, where)
    return x

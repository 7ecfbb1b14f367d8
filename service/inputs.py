"""Turn client inputs into model-ready pixels, rejecting every mistake with a message that says what to fix.

Accepted inputs (one image each):

- a nested array of numbers in [0, 1] shaped [C, H, W] (or [H, W] for one channel);
- a base64 string of a PNG or JPEG file (``data:image/png;base64,...`` URLs too);
- raw PNG/JPEG bytes (multipart uploads).

Images must have the model's size unless ``resize`` is set; colour and gray are
converted to the model's channels. Image headers are checked before any pixel is
decoded, so a file claiming huge dimensions costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import InvalidInput

IMAGE_FORMATS = ("PNG", "JPEG")


@dataclass(frozen=True)
class InputSpec:
    """What the model takes and how large an image may claim to be.

    Attributes:
        shape: (C, H, W) of one input.
        max_image_pixels: largest width x height accepted before decoding.
    """

    shape: tuple[int, int, int]
    max_image_pixels: int

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


def _to_channels(im: Image.Image, channels: int, size: tuple[int, int], where: str) -> np.ndarray:
    """Image -> array [H, W, C] with the model's channels and ``size`` (uint8, or float32 in [0, 1] for 16-bit)."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = Image.fromarray((arr / scale).clip(0, 1).astype(np.float32), mode="F")
        if gray.size != size:
            gray = gray.resize(size, Image.Resampling.BILINEAR)
        out = np.asarray(gray, dtype=np.float32)[..., None]
        return np.repeat(out, channels, axis=2) if channels == 3 else out
    if channels not in (1, 3):
        raise InvalidInput(
            f"{where}: this model takes {channels}-channel inputs, which images cannot carry; send arrays"
        )
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != size:
        im = im.resize(size, Image.Resampling.BILINEAR)
    arr = np.asarray(im)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_image(data: bytes, spec: InputSpec, where: str, resize: bool = False) -> np.ndarray:
    """PNG/JPEG bytes -> float32 [C, H, W] in [0, 1].

    The header is checked (format, claimed size, model size) before pixels are decoded.

    Raises:
        InvalidInput: not a PNG/JPEG, too many pixels claimed, wrong size without
            ``resize``, truncated or corrupt data.
    """
    c, h, w = spec.shape
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
    with im:
        iw, ih = im.size
        if iw * ih > spec.max_image_pixels:
            raise InvalidInput(
                f"{where} claims {iw}x{ih} = {iw * ih} pixels, over the limit of {spec.max_image_pixels} "
                f"(a decompression bomb?); send an image of {w}x{h} pixels"
            )
        if not resize and (iw, ih) != (w, h):
            raise InvalidInput(
                f"{where} is {iw}x{ih} pixels; this model expects {w}x{h} (width x height). "
                "Resize it, or set resize=true to let the service resize it"
            )
        try:
            im.load()
            arr = _to_channels(im, c, (w, h), where)
        except InvalidInput:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            raise InvalidInput(
                f"{where} is truncated or corrupt (its pixels could not be decoded); send the complete file"
            ) from None
    out = arr.astype(np.float32)
    if arr.dtype == np.uint8:
        out /= 255.0
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def decode_item(value: Any, spec: InputSpec, where: str, resize: bool = False) -> np.ndarray:
    """One JSON input (nested array or base64 string) or raw bytes -> float32 [C, H, W]."""
    if isinstance(value, bytes | bytearray):
        return decode_image(bytes(value), spec, where, resize)
    if isinstance(value, str):
        return decode_image(decode_base64(value, where), spec, where, resize)
    if isinstance(value, list):
        return decode_array(value, spec, where)
    kind = "null" if value is None else type(value).__name__
    raise InvalidInput(f"{where} is a {kind}; send a nested array of pixels {spec.shape_text} or a base64 PNG/JPEG")


def decode_inputs(
    items: Sequence[Any], spec: InputSpec, *, max_inputs: int, resize: bool = False, name: str = "inputs"
) -> torch.Tensor:
    """Decode a request's inputs into one float32 tensor [N, C, H, W].

    Raises:
        InvalidInput: no inputs, too many, or any bad input (the message names its index).
    """
    if len(items) == 0:
        raise InvalidInput(f"{name} is empty; send at least one input")
    if len(items) > max_inputs:
        raise InvalidInput(f"{len(items)} inputs in one request; at most {max_inputs} are allowed, split the request")
    arrays = [decode_item(v, spec, f"{name}[{i}]", resize) for i, v in enumerate(items)]
    return torch.from_numpy(np.stack(arrays))


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

"""Decode any radiograph file to one uint8 grey square: the single definition used everywhere.

`prepare` (the cache), `predict`, the demo app and external datasets all go through `load_grey`, so
a model sees the same pixels at training and inference time.

How modes become 8-bit grey (documented for users; tested on each):
- `L` (8-bit grey): as is.
- `RGB`, `RGBA`, `LA`, `P` (palette): alpha is dropped (NIH's RGBA files have alpha 255 and R=G=B),
  then ITU-R 601 luma (PIL's `convert("L")`), which for R=G=B returns the grey value exactly.
- 16-bit / 32-bit grey (`I;16`, `I`): linearly stretched from the image's own min..max to 0..255.
  Such files usually come from DICOM with an unknown number of used bits (12 of 16, say), so a fixed
  /257 would leave them nearly black; the per-image stretch is what radiology viewers do by default.
- `1` (bilevel) and `F` (float): converted likewise (F stretched like 16-bit).
Whole 8-bit grey PNGs (101 of the 103 real NIH files) are decoded by OpenCV when it is installed:
the same samples as PIL (PNG is lossless), ~12% faster per core (benchmarks/bench_decode.py);
every other file goes through PIL. The resize is PIL's in both cases.
Non-square images are resized to a square without keeping the aspect ratio (as Tang et al. and the
NIH release do); resizing uses PIL's antialiased bilinear filter.
"""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# A 1024 px radiograph is ~1 M pixels; anything beyond this is a mistake or a decompression bomb.
MAX_PIXELS = 12_000 * 12_000
MIN_SIDE = 16


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: the last 8 bytes of a whole PNG


class ImageDecodeError(ValueError):
    """An image file could not be decoded; the message names the file and why."""


def to_grey_uint8(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to a 2-D uint8 array (see the module docstring)."""
    mode = image.mode
    if mode == "L":
        return np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy warns otherwise
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        if high <= low:
            return np.zeros(array.shape, dtype=np.uint8)
        return np.round((array - low) * (255.0 / (high - low))).astype(np.uint8)
    if mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA" if mode != "LA" else "LA")
        image = image.convert("RGB") if mode != "LA" else image.getchannel("L")
    elif mode == "P":
        image = image.convert("RGB")
    return np.array(image.convert("L"), dtype=np.uint8)


def resize_square(grey: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 grey array to (size, size) with antialiased bilinear interpolation."""
    if grey.shape == (size, size):
        return np.ascontiguousarray(grey)
    resized = Image.fromarray(grey).resize((size, size), Image.Resampling.BILINEAR)
    return np.array(resized, dtype=np.uint8)


def _is_8bit_grey_png(data: bytes) -> bool:
    """A whole PNG whose IHDR says bit depth 8, colour type 0 (grey, no alpha): OpenCV's
    IMREAD_UNCHANGED returns its samples as they are, exactly what PIL's mode "L" gives.
    Truncated files are left to PIL, whose error names them."""
    return (
        len(data) > 33
        and data[:8] == PNG_SIGNATURE
        and data[12:16] == b"IHDR"
        and data[24] == 8
        and data[25] == 0
        and data.endswith(PNG_END)
    )


@functools.cache
def _opencv():
    """OpenCV if installed (requirements.txt has it; the package does not require it)."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _opencv_grey(data: bytes) -> np.ndarray | None:
    """The pixels of a whole 8-bit grey PNG within the size limits, or None (use PIL)."""
    cv2 = _opencv()
    if cv2 is None or not _is_8bit_grey_png(data):
        return None
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if grey is None or grey.ndim != 2 or grey.dtype != np.uint8:
        return None
    if min(grey.shape) < MIN_SIDE or grey.size > MAX_PIXELS:
        return None  # PIL's path raises the error that names the file
    return grey


def load_grey(
    source: str | Path | bytes, size: int | None = None, name: str | None = None
) -> np.ndarray:
    """Decode a PNG/JPEG (path or bytes) to uint8 grey, resized to `size` x `size` if given.

    Raises ImageDecodeError naming the file (or `name`, for bytes) for anything that is not a
    readable image: a text file renamed .png, a truncated PNG, a 1x1 image, a huge image.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<image bytes>")
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{label}: file not found") from None
    except OSError as error:
        raise ImageDecodeError(f"{label}: cannot read ({error})") from None
    grey = _opencv_grey(data)
    if grey is not None:
        return resize_square(grey, size) if size is not None else grey
    handle = io.BytesIO(data)
    try:
        with Image.open(handle) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageDecodeError(
                    f"{label}: image is {width}x{height}, larger than {MAX_PIXELS:,} pixels"
                )
            if min(width, height) < MIN_SIDE:
                raise ImageDecodeError(
                    f"{label}: image is {width}x{height}; at least {MIN_SIDE}x{MIN_SIDE} is needed"
                )
            image.load()
            grey = to_grey_uint8(image)
    except FileNotFoundError:
        raise ImageDecodeError(f"{label}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as error:
        reason = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))
        raise ImageDecodeError(f"{label}: not a readable image ({reason})") from None
    return resize_square(grey, size) if size is not None else grey

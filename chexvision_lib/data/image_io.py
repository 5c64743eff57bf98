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
- DICOM (b"DICM" at byte 128, or a .dcm/.dicom name; data/dicom.py has the rules): the modality
  transform (rescale slope/intercept), then the file's VOI LUT or window if it has one, map to
  uint8 by `stretch_to_uint8` as 16-bit PNGs do, over the window's range [c - w/2, c + w/2] when
  a window was applied, else the image's own min..max, at any bit depth; MONOCHROME1 is then
  inverted (255 - v). Multi-frame files are refused, not reduced to a guessed frame.
Whole 8-bit grey PNGs (101 of the 103 real NIH files) are decoded by OpenCV when it is installed:
the same samples as PIL (PNG is lossless), ~12% faster per core (benchmarks/bench_decode.py);
every other file goes through PIL. The resize is PIL's in both cases.
Non-square images are resized to a square without keeping the aspect ratio (as Tang et al. and the
NIH release do); resizing uses PIL's antialiased bilinear filter.

Sizes are checked from the header before anything is decoded, so a decompression bomb (a 1 MB PNG
of 32000 x 32000 zeros) costs no memory: PNG from IHDR, JPEG from its SOFn frame header (both read
here, `image_size`), any other format from PIL's lazy `Image.open`, which parses the header only.
DICOM from Rows/Columns, parsed by pydicom before its pixel data is decoded.
Every refusal is an `ImageDecodeError` naming the file, with a short `kind` ("truncated",
"too large", ...) that `chexvision predict --skip-bad` counts.
"""

from __future__ import annotations

import functools
import io
import re
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from chexvision_lib.data.dicom import DICOM_KINDS, DicomError, decode_dicom, is_dicom

# A 1024 px radiograph is ~1 M pixels; anything beyond this is a mistake or a decompression bomb.
MAX_PIXELS = 12_000 * 12_000
MIN_SIDE = 16


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: the last 8 bytes of a whole PNG


JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
# Start-of-frame markers (SOF0..SOF15 less DHT C4, JPG C8, DAC CC): height and width follow.
JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field: TEM, RST0..RST7, SOI.
JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})

# What went wrong, as `ImageDecodeError.kind` (counted by `chexvision predict --skip-bad`).
KINDS = (
    "missing",
    "unreadable file",
    "empty",
    "truncated",
    "not an image",
    "corrupt",
    "too large",
    "too small",
    *DICOM_KINDS,  # "no pixel data", "unsupported transfer syntax", "unsupported DICOM"
)


class ImageDecodeError(ValueError):
    """An image file could not be decoded; the message names the file and why, `kind` is one of
    KINDS."""

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # keep `kind` across pickling (prepare's workers send errors back)
        return type(self), (str(self), self.kind)


def stretch_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255 (rounded; values outside are clipped): the one rule
    for 16-bit and float PNGs (low, high = the image's min, max) and DICOM (module docstring).
    A flat image (high <= low) is all 0."""
    values = np.asarray(values, dtype=np.float64)
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.clip(values, low, high) - low) * (255.0 / (high - low))
    return np.round(scaled).astype(np.uint8)


def to_grey_uint8(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to a 2-D uint8 array (see the module docstring)."""
    mode = image.mode
    if mode == "L":
        return np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy warns otherwise
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        return stretch_to_uint8(array, float(array.min()), float(array.max()))
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


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from IHDR, which a PNG must start with (bytes 16..24)."""
    if len(data) >= 24 and data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOFn frame header, walking the marker segments from SOI
    (APPn segments, with their EXIF thumbnails, are skipped by length). None when the markers
    cannot be walked or the frame header leaves the height to a later DNL segment."""
    if data[:2] != JPEG_SOI:
        return None
    at, end = 2, len(data)
    while at + 4 <= end:
        if data[at] != 0xFF:
            return None  # not at a marker: not a JPEG we can walk; PIL decides
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in JPEG_STANDALONE:
            at += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any frame header
            return None
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if length < 2:
            return None
        if marker in JPEG_SOF:
            if at + 9 > end:
                return None
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return (width, height) if height else None
        at += 2 + length
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or JPEG read from its header bytes alone (nothing is decoded);
    None for other formats or headers this cannot parse (`load_grey` then asks PIL's lazy open)."""
    return _png_size(data) or _jpeg_size(data)


def check_size(width: int, height: int, label: str) -> None:
    """Refuse an image larger than MAX_PIXELS or with a side under MIN_SIDE, before decoding."""
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            f"{label}: image is {width}x{height} ({width * height:,} pixels), larger than the "
            f"limit of {MAX_PIXELS:,} pixels; refused before decoding",
            kind="too large",
        )
    if min(width, height) < MIN_SIDE:
        raise ImageDecodeError(
            f"{label}: image is {width}x{height}; at least {MIN_SIDE}x{MIN_SIDE} is needed",
            kind="too small",
        )


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
    """The pixels of a whole 8-bit grey PNG, or None (use PIL). Call only after `check_size`:
    OpenCV allocates whatever IHDR claims."""
    cv2 = _opencv()
    if cv2 is None or not _is_8bit_grey_png(data):
        return None
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if grey is None or grey.ndim != 2 or grey.dtype != np.uint8:
        return None
    return grey


def _ends_early(data: bytes) -> bool:
    """A PNG without its IEND chunk, or a JPEG without its EOI marker."""
    if data[:8] == PNG_SIGNATURE:
        return not data.endswith(PNG_END)
    if data[:2] == JPEG_SOI:
        return not data.rstrip(b"\x00").endswith(JPEG_EOI)
    return False


def _dicom_grey(data: bytes, label: str) -> np.ndarray:
    """A DICOM's pixels as uint8 grey (data/dicom.py's rules; refusals as ImageDecodeError)."""
    try:
        display = decode_dicom(data, label, check_size)
    except DicomError as error:
        raise ImageDecodeError(str(error), kind=error.kind) from None
    grey = stretch_to_uint8(display.values, display.low, display.high)
    if display.indices is not None:  # a lookup table of the stored values (see DisplayValues)
        grey = grey[display.indices]
    return 255 - grey if display.invert else grey


def load_grey(
    source: str | Path | bytes, size: int | None = None, name: str | None = None
) -> np.ndarray:
    """Decode a PNG/JPEG/DICOM (path or bytes) to uint8 grey, resized to `size` x `size` if given.

    Raises ImageDecodeError naming the file (or `name`, for bytes) for anything that is not a
    readable image: a text file renamed .png, an empty or truncated file, a 1x1 image, a huge
    image (refused from its header, before any decoding), a DICOM without pixel data.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<image bytes>")
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"{label}: file not found", kind="missing") from None
    except OSError as error:
        raise ImageDecodeError(f"{label}: cannot read ({error})", kind="unreadable file") from None
    if not data:
        raise ImageDecodeError(f"{label}: not a readable image (empty file: 0 bytes)", kind="empty")
    header_size = image_size(data)
    if header_size is None and is_dicom(data, label):  # a PNG/JPEG named .dcm is what it is
        grey = _dicom_grey(data, label)
        return resize_square(grey, size) if size is not None else grey
    if header_size is not None:
        check_size(*header_size, label)
        grey = _opencv_grey(data)
        if grey is not None:
            return resize_square(grey, size) if size is not None else grey
    handle = io.BytesIO(data)
    try:
        with Image.open(handle) as image:  # lazy: reads the header, decodes nothing yet
            check_size(*image.size, label)
            image.load()
            grey = to_grey_uint8(image)
    except Image.DecompressionBombError as error:  # PIL's own limit, hit inside Image.open
        raise ImageDecodeError(
            f"{label}: image is too large ({error}); the limit is {MAX_PIXELS:,} pixels",
            kind="too large",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        reason = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error))
        if "truncated" in reason.lower():
            kind = "truncated"
        elif _ends_early(data):
            kind, reason = "truncated", f"truncated: {reason}"
        elif isinstance(error, UnidentifiedImageError):
            kind = "not an image"
        else:
            kind = "corrupt"
        raise ImageDecodeError(f"{label}: not a readable image ({reason})", kind=kind) from None
    return resize_square(grey, size) if size is not None else grey

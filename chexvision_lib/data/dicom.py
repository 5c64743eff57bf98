"""DICOM radiographs through pydicom: the header without pixels, and the pixels as display values.

`image_io.load_grey` sends a file here when its bytes hold b"DICM" at offset 128 (or, for a file
without the 128-byte preamble, when its name ends .dcm/.dicom); this module turns it into display
values and `image_io` maps those to uint8 exactly as it maps 16-bit PNGs. The rules, in order:
1. The header is parsed; Rows x Columns go through `image_io.check_size` BEFORE any pixel is
   decoded (a compressed file cannot claim 30000 x 30000 and cost the memory).
2. Refused: no Pixel Data ("no pixel data"); a transfer syntax pydicom has no decoder for, or
   whose decoder is not installed ("unsupported transfer syntax": the message names the UID and
   the pip package: `pip install 'chexvision[dicom]'` brings pylibjpeg, pylibjpeg-libjpeg and
   pylibjpeg-openjpeg for JPEG, JPEG-LS and JPEG 2000); pixel data shorter than Rows x Columns
   say ("truncated"); more than one frame, palette colour, float pixel data ("unsupported
   DICOM": a radiograph is one frame, and guessing which frame of a tomosynthesis sweep or a
   dual-energy pair is "the" image would be silent); anything else pydicom cannot read
   ("corrupt"; "not an image" when the bytes are not a DICOM at all).
3. Pixels are decoded by pydicom; JPEG Baseline/Extended (the RSNA files) by Pillow first
   (`PILLOW_FIRST`), so that they do not depend on which extras are installed.
   Modality transform: Modality LUT or Rescale Slope/Intercept (pydicom.pixels.apply_modality_lut).
4. VOI transform, when the file has one, the first of several (index 0): a VOI LUT Sequence
   (pydicom.pixels.apply_voi; display range = the LUT's output range 0 .. 2^n - 1, n from its
   LUT Descriptor), else Window Center/Width with VOI LUT Function LINEAR (the default),
   LINEAR_EXACT or SIGMOID (PS3.3 C.11.2.1.2; `window_fraction`), whose display range is the
   window itself: [c - w/2, c + w/2] becomes 0..255, values outside are clipped.
   Without a VOI transform the display range is the image's own min..max, the stretch
   `image_io` applies to 16-bit PNGs, whatever the bit depth (12 bits stored in 16, 8, 16).
5. MONOCHROME1 (white = low values) is inverted LAST, on the uint8 values (255 - v), so it is
   exactly the negative of the same pixels read as MONOCHROME2. RGB/YBR files (pydicom gives RGB)
   become ITU-R 601 luma first, as PIL does for PNGs, then the same stretch.

`read_header` reads the fields an index needs (patient, sex, age, view, size) with
stop_before_pixels, for readers whose CSVs lack them; a header without Rows/Columns is refused
("truncated" when the file ends there: pydicom returns the elements before the cut silently, and
an absent PatientID or ViewPosition would be taken for a real one). Errors are `DicomError` (a
ValueError with a `kind`); `image_io` re-raises them as its ImageDecodeError, which `--skip-bad`
counts.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

DICOM_SUFFIXES = (".dcm", ".dicom")
DICOM_MAGIC = b"DICM"
MAGIC_OFFSET = 128  # after the 128-byte preamble (PS3.10 7.1)
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) as a little-endian file stores it

# ImageDecodeError kinds this module adds to image_io.KINDS.
DICOM_KINDS = ("no pixel data", "unsupported transfer syntax", "unsupported DICOM")

# The pip packages that decode each compressed family (pydicom's own RLE and deflate need none).
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.5": "pylibjpeg pylibjpeg-libjpeg",  # JPEG baseline, extended
    "1.2.840.10008.1.2.4.7": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.8": "pylibjpeg pylibjpeg-libjpeg",  # JPEG-LS
    "1.2.840.10008.1.2.4.9": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.20": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
}
INSTALL_HINT = "pip install 'chexvision[dicom]'"

_GREY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")

# ViewPosition (0018,5101) values -> the canonical view names of data/sources/common.VIEW_NAMES.
DICOM_VIEWS = {
    "PA": "PA",
    "AP": "AP",
    "LL": "LATERAL",
    "RL": "LATERAL",
    "LAT": "LATERAL",
    "LATERAL": "LATERAL",
}


class DicomError(ValueError):
    """A DICOM file could not be read; the message names the file, `kind` is one of image_io's
    KINDS."""

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # keep `kind` across pickling
        return type(self), (str(self), self.kind)


def is_dicom(data: bytes, name: str | None = None) -> bool:
    """The DICM marker after the preamble, or (for preamble-less files) a .dcm/.dicom name."""
    if _has_magic(data):
        return True
    return name is not None and Path(name).suffix.lower() in DICOM_SUFFIXES


@dataclass(frozen=True)
class DisplayValues:
    """Pixels after the modality and VOI transforms, and the range [low, high] that becomes 0..255.

    For integer pixels `values` is a lookup table: the display value of each stored value from the
    image's minimum up, and `indices` (2-D) says which entry each pixel takes; the transforms are
    elementwise, so this is the same result at a fraction of the time and memory of a float image.
    Otherwise `values` is the 2-D image and `indices` None.
    """

    values: np.ndarray
    low: float
    high: float
    invert: bool  # MONOCHROME1: apply 255 - v to the uint8 result
    indices: np.ndarray | None = None


def _has_magic(data: bytes) -> bool:
    return data[MAGIC_OFFSET : MAGIC_OFFSET + 4] == DICOM_MAGIC


def _pydicom(label: str):
    """pydicom, imported when a DICOM is first met (decoding PNGs never pays for the import)."""
    try:
        import pydicom
    except ImportError:
        raise DicomError(
            f"{label}: reading DICOM needs pydicom, which is not installed: pip install pydicom",
            kind="unsupported DICOM",
        ) from None
    return pydicom


def _read_dataset(data: bytes, label: str):
    """(dataset, whether pydicom met the end of the file before a delimiter)."""
    pydicom = _pydicom(label)
    has_magic = _has_magic(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = pydicom.dcmread(io.BytesIO(data), force=not has_magic)
        except pydicom.errors.InvalidDicomError as error:
            raise DicomError(f"{label}: not a DICOM file ({error})", kind="not an image") from None
        except Exception as error:  # the parser raises many types on damaged bytes
            kind = "truncated" if isinstance(error, EOFError) else "corrupt"
            raise DicomError(f"{label}: not a readable DICOM ({error})", kind=kind) from None
    ended_early = any("End of file reached" in str(w.message) for w in caught)
    if not has_magic and "Rows" not in dataset and "PixelData" not in dataset:
        # force=True parses anything; without the marker and the image elements it is not one.
        raise DicomError(
            f"{label}: not a DICOM file (no 'DICM' marker at byte {MAGIC_OFFSET}, no image "
            "elements)",
            kind="not an image",
        )
    return dataset, ended_early


def _transfer_syntax(dataset, label: str):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:  # a preamble-less file: the encoding pydicom detected says which
        implicit, little = dataset.original_encoding
        if little is False:
            raise DicomError(
                f"{label}: big-endian DICOM without a Transfer Syntax UID", "unsupported DICOM"
            )
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        if meta is None:
            dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = syntax
    return UID(str(syntax))


def _check_decoder(syntax, label: str) -> None:
    from pydicom.pixels import get_decoder

    what = f"transfer syntax {syntax}" + (f" ({syntax.name})" if syntax.name != syntax else "")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomError(
            f"{label}: {what} cannot be decoded: pydicom has no decoder for it (convert the file "
            "to an uncompressed or JPEG/JPEG 2000/RLE DICOM, or to PNG)",
            kind="unsupported transfer syntax",
        ) from None
    if not decoder.is_available:
        package = next(
            (p for prefix, p in _DECODER_PACKAGES.items() if str(syntax).startswith(prefix)),
            "a pydicom decoder plugin",
        )
        missing = "; ".join(decoder.missing_dependencies)
        raise DicomError(
            f"{label}: {what} needs a decoder that is not installed ({missing}); install "
            f"{package}: {INSTALL_HINT}",
            kind="unsupported transfer syntax",
        )


def _expected_native_bytes(dataset) -> int:
    pixels = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1))
    pixels *= _frames(dataset)
    bits = int(dataset.BitsAllocated)
    return math.ceil(pixels / 8) if bits == 1 else pixels * (bits // 8)


def _frames(dataset) -> int:
    try:
        return int(dataset.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1


def open_dicom(data: bytes, label: str, check_size: Callable[[int, int, str], None] | None = None):
    """Parse a DICOM and check it can be decoded, without decoding a pixel; returns the pydicom
    Dataset (PixelData still encoded). `check_size(columns, rows, label)` runs as soon as the
    size is known, before anything else is judged. Raises DicomError (module docstring)."""
    dataset, ended_early = _read_dataset(data, label)
    if "PixelData" not in dataset:
        if "FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset:
            raise DicomError(f"{label}: float pixel data is not supported", "unsupported DICOM")
        if ended_early or PIXEL_DATA_TAG in data:  # pydicom drops a Pixel Data element cut short
            raise DicomError(
                f"{label}: truncated: the file ends inside its pixel data", "truncated"
            )
        raise DicomError(f"{label}: the DICOM has no pixel data (0x7FE0,0010)", "no pixel data")
    for element in ("Rows", "Columns", "BitsAllocated"):
        if element not in dataset:
            raise DicomError(f"{label}: the DICOM has pixel data but no {element}", "corrupt")
    if check_size is not None:
        check_size(int(dataset.Columns), int(dataset.Rows), label)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in (*_GREY, *_COLOUR):
        raise DicomError(
            f"{label}: photometric interpretation {photometric!r} is not supported (accepted: "
            f"{', '.join((*_GREY, *_COLOUR))})",
            kind="unsupported DICOM",
        )
    frames = _frames(dataset)
    if frames > 1:
        raise DicomError(
            f"{label}: {frames} frames; a radiograph is one frame (which frame is the image is "
            "not guessed)",
            kind="unsupported DICOM",
        )
    syntax = _transfer_syntax(dataset, label)
    _check_decoder(syntax, label)
    if not syntax.is_compressed:
        have, need = len(dataset.PixelData), _expected_native_bytes(dataset)
        if have < need:
            raise DicomError(
                f"{label}: truncated: {have:,} bytes of pixel data, {need:,} expected for "
                f"{dataset.Columns}x{dataset.Rows} at {dataset.BitsAllocated} bits",
                kind="truncated",
            )
    return dataset


def window_fraction(
    values: np.ndarray, center: float, width: float, function: str = "LINEAR"
) -> np.ndarray:
    """Window Center/Width as a fraction 0..1 of the display range (PS3.3 C.11.2.1.2):
    LINEAR (c - 0.5, w - 1; the DICOM default), LINEAR_EXACT, or SIGMOID."""
    values = np.asarray(values, dtype=np.float64)
    function = function.upper()
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"Window Width {width} < 1 is invalid for LINEAR")
        center, width = center - 0.5, width - 1
        if width == 0:  # a step at the centre
            return (values > center).astype(np.float64)
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width <= 0:
        raise ValueError(f"Window Width {width} <= 0 is invalid for {function}")
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    raise ValueError(f"VOI LUT Function {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID")


def _first(value) -> float:
    """Window Center/Width may hold several windows (VM > 1): the first is the default view."""
    return float(value if isinstance(value, (str, int, float)) else value[0])


def _voi(dataset, values: np.ndarray, label: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The VOI transform of modality values: (display values, their display range), or (values,
    None) when the file has no VOI transform (the caller then stretches over min..max)."""
    from pydicom.pixels import apply_voi

    sequence = dataset.get("VOILUTSequence")
    if sequence and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]:
        integral = np.round(values)
        lookup = integral.astype(np.int64) if np.array_equal(integral, values) else values
        try:
            out = apply_voi(lookup, dataset, index=0)
        except (ValueError, NotImplementedError, AttributeError) as error:
            raise DicomError(f"{label}: cannot apply its VOI LUT ({error})", "corrupt") from None
        bits = int(sequence[0].LUTDescriptor[2])
        return np.asarray(out, dtype=np.float64), (0.0, float(2**bits - 1))
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR")
        try:
            center, width = _first(dataset.WindowCenter), _first(dataset.WindowWidth)
            return window_fraction(values, center, width, function), (0.0, 1.0)
        except (ValueError, TypeError, IndexError) as error:
            raise DicomError(f"{label}: cannot apply its window ({error})", "corrupt") from None
    return values, None


# Decoded by Pillow (libjpeg-turbo, always installed) before any other plugin: pylibjpeg's libjpeg
# differs from it by 1 on ~3% of pixels and is ~3x slower, and the pixels must not depend on
# which extras an install has.
PILLOW_FIRST = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")  # JPEG Baseline, Extended
LOOKUP_LIMIT = 1 << 20  # integer images spanning more stored values go the float way


def _pixels(dataset, label: str) -> np.ndarray:
    from pydicom.pixels import pixel_array

    syntax = str(dataset.file_meta.TransferSyntaxUID)
    plugins = ("pillow", "") if syntax in PILLOW_FIRST else ("",)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for plugin in plugins:
            try:
                return pixel_array(dataset, decoding_plugin=plugin)
            except Exception as error:  # decoder plugins raise anything: RuntimeError, OSError
                failure = error  # Pillow cannot do 12-bit JPEG, say: the other plugins may
    raise DicomError(f"{label}: cannot decode its pixel data ({failure})", "corrupt") from None


def display_values(dataset, label: str) -> DisplayValues:
    """Decode an `open_dicom` dataset's pixels and apply the modality and VOI transforms (module
    docstring, steps 3-5)."""
    from pydicom.pixels import apply_modality_lut

    pixels = _pixels(dataset, label)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if pixels.ndim == 3:  # colour: pydicom has converted YBR to RGB
        luma = np.asarray(pixels, np.float64) @ np.array([0.299, 0.587, 0.114])
        return DisplayValues(luma, float(luma.min()), float(luma.max()), invert=False)
    indices = None
    first, last = int(pixels.min()), int(pixels.max())
    if np.issubdtype(pixels.dtype, np.integer) and last - first < LOOKUP_LIMIT:
        indices = pixels if first == 0 else np.subtract(pixels, first, dtype=np.int32)
        stored = np.arange(first, last + 1, dtype=np.int64)
    else:
        stored = pixels
    try:
        values = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    except (ValueError, AttributeError, TypeError) as error:
        raise DicomError(f"{label}: cannot apply its rescale ({error})", "corrupt") from None
    values, display_range = _voi(dataset, values, label)
    if display_range is None:  # the min..max of the values the image holds
        held = values if indices is None else values[np.bincount(indices.ravel()) > 0]
        display_range = (float(held.min()), float(held.max()))
    return DisplayValues(values, *display_range, photometric == "MONOCHROME1", indices)


def decode_dicom(
    data: bytes, label: str, check_size: Callable[[int, int, str], None]
) -> DisplayValues:
    """`open_dicom` (with `check_size(columns, rows, label)` before any decoding), then
    `display_values`."""
    return display_values(open_dicom(data, label, check_size), label)


# --- header fields for indexes ------------------------------------------------------------------
@dataclass(frozen=True)
class DicomHeader:
    patient_id: str  # "" when absent
    sex: str  # "M", "F" or ""
    age: float  # years; NaN when absent or unreadable
    view: str  # ViewPosition as written, upper case ("" when absent); see DICOM_VIEWS
    rows: int
    columns: int


_AGE = re.compile(r"(\d+)\s*([DWMY]?)", re.IGNORECASE)
_AGE_UNIT = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365, "D": 1 / 365}


def parse_age(value: object) -> float:
    """DICOM Age String (VR AS, '045Y', '006M', '010W', '003D') or bare digits ('51') -> years;
    NaN for anything else (ages in public headers are often blank or junk, not worth refusing
    an image over)."""
    match = _AGE.fullmatch(str(value or "").strip())
    if not match:
        return float("nan")
    return int(match.group(1)) * _AGE_UNIT[match.group(2).upper()]


def read_header(path: str | Path) -> DicomHeader:
    """Patient ID, sex, age, view position and size of a DICOM, read without its pixel data."""
    path = Path(path)
    label = str(path)
    try:
        with open(path, "rb") as handle:
            # 132 bytes say whether it is a DICOM; pydicom then parses the file itself up to its
            # Pixel Data, so the pixels are never read.
            data = handle.read(132)
            handle.seek(0)
            if not is_dicom(data, path.name):
                raise DicomError(f"{label}: not a DICOM file", kind="not an image")
            pydicom = _pydicom(label)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = pydicom.dcmread(
                    handle, force=not _has_magic(data), stop_before_pixels=True
                )
            # pydicom stops at Pixel Data; reaching the end instead means the file was cut short
            # (it then returns whatever elements it got, without a word).
            ended = handle.tell() >= os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise DicomError(f"{label}: file not found", kind="missing") from None
    except DicomError:
        raise
    except Exception as error:  # pydicom's parser raises many types on a damaged header
        raise DicomError(f"{label}: cannot read its DICOM header ({error})", "corrupt") from None
    if not _has_magic(data) and "Rows" not in dataset:
        raise DicomError(
            f"{label}: not a DICOM file (no 'DICM' marker, no image elements)", kind="not an image"
        )
    if "Rows" not in dataset or "Columns" not in dataset:
        # Elements are stored in tag order, so with Rows (0028,0010) read, the patient and view
        # elements before it were read whole; without it they may be cut off and must not be
        # taken as "absent" (an empty PatientID would make the image its own patient).
        if ended:
            raise DicomError(
                f"{label}: truncated: the file ends inside its header, before Rows/Columns and "
                "the pixel data",
                kind="truncated",
            )
        raise DicomError(f"{label}: the DICOM header has no Rows/Columns (not an image)", "corrupt")
    sex = str(dataset.get("PatientSex", "") or "").strip().upper()
    return DicomHeader(
        patient_id=str(dataset.get("PatientID", "") or "").strip(),
        sex=sex if sex in ("M", "F") else "",
        age=parse_age(dataset.get("PatientAge", "")),
        view=str(dataset.get("ViewPosition", "") or "").strip().upper(),
        rows=int(dataset.get("Rows", 0) or 0),
        columns=int(dataset.get("Columns", 0) or 0),
    )


def header_columns(
    table: pd.DataFrame, *, skip_bad: bool, what: str = "DICOM"
) -> tuple[pd.DataFrame, int, int]:
    """An index table's patient, age, sex, view, width and height from each `path`'s DICOM
    header (patient: PatientID, else the row's image_id; view: DICOM_VIEWS, "FRONTAL" where the
    header has none, "OTHER" for values it does not know). Returns (table, unreadable headers
    dropped under `skip_bad`, images without a PatientID). Unreadable headers raise DicomError
    otherwise."""
    from tqdm.auto import tqdm

    records, keep = [], []
    for path in tqdm(table["path"], desc=f"{what}: DICOM headers", unit="file", leave=False):
        try:
            header = read_header(path)
        except DicomError:
            if not skip_bad:
                raise
            keep.append(False)
            continue
        keep.append(True)
        records.append(header)
    table = table[keep].reset_index(drop=True)
    ids = [r.patient_id for r in records]
    table = table.assign(
        patient=[value or image for value, image in zip(ids, table["image_id"], strict=True)],
        age=[r.age for r in records],
        sex=[r.sex for r in records],
        view=[DICOM_VIEWS.get(r.view, "OTHER") if r.view else "FRONTAL" for r in records],
        width=[r.columns for r in records],
        height=[r.rows for r in records],
    )
    return table, len(keep) - len(records), sum(1 for value in ids if not value)

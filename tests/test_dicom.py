"""DICOM decoding: the documented uint8 rule, header fields, and every refusal with its kind."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicom_fixtures import radiograph, synthetic_radiograph, write_dicom
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from chexvision_lib.core.labels import ABNORMAL, FINDINGS, UNKNOWN
from chexvision_lib.data import dicom
from chexvision_lib.data.cache import open_cache, prepare_cache
from chexvision_lib.data.image_io import KINDS, ImageDecodeError, load_grey, stretch_to_uint8
from chexvision_lib.data.nih_index import INDEX_COLUMNS


def _stretch(values: np.ndarray) -> np.ndarray:
    """The 16-bit PNG rule, computed here from its definition."""
    values = values.astype(np.float64)
    low, high = values.min(), values.max()
    return np.round((values - low) * 255 / (high - low)).astype(np.uint8)


def test_a_12_bit_file_of_a_real_radiograph_decodes_to_its_8_bit_original(tmp_path: Path):
    original = radiograph("00000001_000.png", 128)
    noise = np.random.default_rng(0).integers(0, 16, original.shape)  # detail below 8 bits
    twelve = (original.astype(np.uint16) * 16 + noise).astype(np.uint16)
    path = write_dicom(tmp_path / "twelve.dcm", twelve, bits_stored=12)
    grey = load_grey(path)
    assert grey.dtype == np.uint8 and grey.shape == original.shape
    expected = _stretch(original)  # 0..255 already for this file: the original itself
    assert np.abs(grey.astype(int) - expected).max() <= 1
    assert np.mean(grey != expected) < 0.5
    exact = write_dicom(tmp_path / "exact.dcm", original.astype(np.uint16) * 16, bits_stored=12)
    assert np.abs(load_grey(exact).astype(int) - expected).max() <= 1  # ties may round apart


def test_monochrome1_is_the_exact_negative_of_monochrome2(tmp_path: Path):
    pixels = synthetic_radiograph((48, 64), seed=2, maximum=4095)
    two = load_grey(write_dicom(tmp_path / "two.dcm", pixels, bits_stored=12))
    one = load_grey(
        write_dicom(tmp_path / "one.dcm", pixels, bits_stored=12, photometric="MONOCHROME1")
    )
    assert np.array_equal(one, 255 - two)
    assert np.array_equal(two, _stretch(pixels))


def test_real_radiograph_monochrome1_and_8_bit(tmp_path: Path):
    original = radiograph(size=96)
    assert np.array_equal(load_grey(write_dicom(tmp_path / "8.dcm", original)), _stretch(original))
    inverted = write_dicom(tmp_path / "m1.dcm", original, photometric="MONOCHROME1")
    assert np.array_equal(load_grey(inverted), 255 - _stretch(original))


def test_rescale_then_window_known_answer(tmp_path: Path):
    # Stored 250, 500, 625, 750 -> slope 2, intercept -1000 -> -500, 0, 250, 500; a LINEAR_EXACT
    # window centre 0 width 1000 maps -500..500 onto 0..1: 0, 0.5, 0.75, 1 -> 0, 128, 191, 255.
    stored = np.array([[250, 500, 625, 750], [0, 1000, 420, 580]], np.uint16)
    stored = np.tile(stored, (8, 4))  # 16 x 16: the smallest side load_grey accepts
    path = write_dicom(
        tmp_path / "w.dcm",
        stored,
        rescale=(2, -1000),
        window=(0, 1000),
        voi_function="LINEAR_EXACT",
    )
    grey = load_grey(path)
    assert grey[0, :4].tolist() == [0, 128, 191, 255]
    assert grey[1, :4].tolist() == [0, 255, 87, 168]  # clipped; -160 -> 0.34, 160 -> 0.66
    # Without the window the rescaled image is stretched over its own min..max.
    plain = load_grey(write_dicom(tmp_path / "r.dcm", stored, rescale=(2, -1000)))
    assert np.array_equal(plain, _stretch(stored))
    flipped = load_grey(write_dicom(tmp_path / "n.dcm", stored, rescale=(-1, 1000)))
    assert np.array_equal(flipped, _stretch(1000 - stored.astype(int)))


def test_linear_window_matches_pydicom(tmp_path: Path):
    from pydicom import dcmread
    from pydicom.pixels import apply_modality_lut, apply_windowing, pixel_array

    pixels = synthetic_radiograph((32, 32), seed=4, maximum=4095)
    path = write_dicom(tmp_path / "l.dcm", pixels, bits_stored=12, window=(1800, 1200))
    ds = dcmread(path)
    theirs = apply_windowing(apply_modality_lut(pixel_array(ds), ds), ds)  # onto 0..4095
    assert np.array_equal(load_grey(path), stretch_to_uint8(theirs, 0, 4095))
    for function in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        ds.VOILUTFunction = function
        theirs = apply_windowing(pixel_array(ds).astype(float), ds)
        mine = dicom.window_fraction(pixel_array(ds), 1800, 1200, function) * 4095
        assert np.allclose(mine, theirs), function


def test_voi_lut_sequence_is_applied(tmp_path: Path):
    stored = np.tile(np.arange(16, dtype=np.uint16), (16, 1))
    lut = [4095 - 200 * v for v in range(16)]  # an inverting LUT with 12-bit output
    grey = load_grey(write_dicom(tmp_path / "lut.dcm", stored, bits_stored=4, voi_lut=(lut, 0, 12)))
    assert grey[0].tolist() == [round(v * 255 / 4095) for v in lut]


@pytest.mark.parametrize(
    "syntax", [RLELossless, JPEG2000Lossless], ids=["rle-lossless", "jpeg2000-lossless"]
)
def test_lossless_compressed_files_decode_like_native(tmp_path: Path, syntax: str):
    pixels = synthetic_radiograph((40, 56), seed=5, maximum=4095)
    native = load_grey(write_dicom(tmp_path / "n.dcm", pixels, bits_stored=12))
    packed = write_dicom(tmp_path / "c.dcm", pixels, bits_stored=12, transfer_syntax=syntax)
    assert np.array_equal(load_grey(packed), native)


def test_jpeg_baseline_as_in_rsna(tmp_path: Path):
    pixels = synthetic_radiograph((64, 64), seed=6)
    grey = load_grey(write_dicom(tmp_path / "j.dcm", pixels, transfer_syntax=JPEGBaseline8Bit), 32)
    reference = load_grey(write_dicom(tmp_path / "n.dcm", pixels), 32)
    assert grey.shape == (32, 32) and np.abs(grey.astype(int) - reference).mean() < 3


def test_jpeg_baseline_is_decoded_by_pillow_whatever_is_installed(tmp_path: Path):
    import io

    from PIL import Image
    from pydicom import dcmread
    from pydicom.encaps import generate_frames

    pixels = synthetic_radiograph((64, 64), seed=9)
    path = write_dicom(tmp_path / "j.dcm", pixels, transfer_syntax=JPEGBaseline8Bit)
    fragment = next(generate_frames(dcmread(path).PixelData, number_of_frames=1))
    by_pillow = np.asarray(Image.open(io.BytesIO(fragment)))
    assert np.array_equal(load_grey(path), _stretch(by_pillow))


@pytest.mark.parametrize(
    "options",
    [
        {"bits_stored": 12},
        {
            "bits_stored": 12,
            "photometric": "MONOCHROME1",
            "rescale": (2, -1000),
            "window": (0, 900),
        },
        {"rescale": (-1.5, 10)},
    ],
    ids=["plain", "mono1-rescale-window", "negative-slope"],
)
def test_the_lookup_table_gives_what_the_float_image_gives(tmp_path: Path, monkeypatch, options):
    pixels = synthetic_radiograph((40, 40), seed=10, maximum=4095) + 7  # minimum 7, not 0
    path = write_dicom(tmp_path / "x.dcm", pixels, **options)
    by_table = load_grey(path)
    monkeypatch.setattr(dicom, "LOOKUP_LIMIT", 0)  # every image the float way
    assert np.array_equal(load_grey(path), by_table)


def test_preamble_less_file_and_dicom_bytes(tmp_path: Path):
    pixels = synthetic_radiograph((32, 32), seed=7)
    path = write_dicom(tmp_path / "raw.dcm", pixels, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    assert np.array_equal(load_grey(path), _stretch(pixels))
    full = write_dicom(tmp_path / "full.bin", pixels)  # found by its marker, whatever its name
    assert np.array_equal(load_grey(full.read_bytes()), _stretch(pixels))


def _refusal(source, name: str | None = None) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as caught:
        load_grey(source, name=name)
    again = pickle.loads(pickle.dumps(caught.value))
    assert (again.kind, str(again)) == (caught.value.kind, str(caught.value))
    assert caught.value.kind in KINDS
    return caught.value


def test_bad_dicoms_are_refused_with_a_kind_naming_the_file(tmp_path: Path):
    pixels = synthetic_radiograph((32, 32), seed=8, maximum=4095)
    error = _refusal(write_dicom(tmp_path / "empty.dcm", pixels, pixel_data=False))
    assert error.kind == "no pixel data" and "empty.dcm" in str(error)

    error = _refusal(write_dicom(tmp_path / "odd.dcm", pixels, transfer_syntax="1.2.3.4"))
    assert error.kind == "unsupported transfer syntax"
    assert "odd.dcm" in str(error) and "1.2.3.4" in str(error)

    whole = write_dicom(tmp_path / "whole.dcm", pixels, bits_stored=12).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(whole[: len(whole) - 500])
    error = _refusal(tmp_path / "cut.dcm")
    assert error.kind == "truncated" and "cut.dcm" in str(error) and "1,548 bytes" in str(error)
    packed = write_dicom(tmp_path / "rle.dcm", pixels, transfer_syntax=RLELossless).read_bytes()
    error = _refusal(packed[: len(packed) // 2 + 200], name="cut_rle.dcm")
    assert error.kind == "truncated" and "cut_rle.dcm" in str(error)

    two_frames = np.stack([pixels, pixels])
    error = _refusal(write_dicom(tmp_path / "frames.dcm", two_frames, bits_stored=12))
    assert error.kind == "unsupported DICOM" and "2 frames" in str(error)

    (tmp_path / "text.dcm").write_text("not a DICOM at all, just text " * 10)
    error = _refusal(tmp_path / "text.dcm")
    assert error.kind == "not an image" and "text.dcm: not a DICOM file" in str(error)


def test_size_is_checked_from_the_header_before_decoding(tmp_path: Path):
    from pydicom import dcmread

    path = write_dicom(
        tmp_path / "huge.dcm", synthetic_radiograph((32, 32)), transfer_syntax=RLELossless
    )
    ds = dcmread(path)
    ds.Rows = ds.Columns = 20_000  # the RLE stream would have to expand to 400 M pixels
    ds.save_as(path)
    error = _refusal(path)
    assert error.kind == "too large" and "20000x20000" in str(error)
    small = write_dicom(tmp_path / "small.dcm", np.zeros((8, 8), np.uint8))
    assert _refusal(small).kind == "too small"


def test_a_missing_decoder_names_the_syntax_and_the_package(tmp_path: Path, monkeypatch):
    import pydicom.pixels

    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"]

    path = write_dicom(
        tmp_path / "j2k.dcm", synthetic_radiograph(), transfer_syntax=JPEG2000Lossless
    )
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda syntax: Unavailable())
    error = _refusal(path)
    assert error.kind == "unsupported transfer syntax"
    for part in ("j2k.dcm", "1.2.840.10008.1.2.4.90", "JPEG 2000", "pylibjpeg-openjpeg"):
        assert part in str(error)
    assert "chexvision[dicom]" in str(error)


def test_header_fields_without_pixels(tmp_path: Path):
    path = write_dicom(
        tmp_path / "h.dcm",
        synthetic_radiograph((40, 48)),
        patient_id="P-17",
        sex="F",
        age="045Y",
        view="AP",
    )
    header = dicom.read_header(path)
    assert header == dicom.DicomHeader("P-17", "F", 45.0, "AP", 40, 48)
    assert dicom.parse_age("006M") == 0.5 and dicom.parse_age("51") == 51.0
    assert np.isnan(dicom.parse_age("")) and np.isnan(dicom.parse_age("old"))
    bare = dicom.read_header(write_dicom(tmp_path / "b.dcm", synthetic_radiograph()))
    assert (bare.patient_id, bare.sex, bare.view) == ("", "", "") and np.isnan(bare.age)
    with pytest.raises(dicom.DicomError, match="x.dcm: not a DICOM file"):
        (tmp_path / "x.dcm").write_text("hello")
        dicom.read_header(tmp_path / "x.dcm")


def test_a_header_cut_short_is_truncated_not_an_image_without_patient(tmp_path: Path):
    """pydicom returns the elements before a cut without a word: a file cut before Rows must not
    pass as an image with no PatientID and no ViewPosition (it would become its own patient and
    a FRONTAL view; found on a copy of the RSNA layout with a partly copied file)."""
    whole = write_dicom(
        tmp_path / "whole.dcm", synthetic_radiograph(), patient_id="P-1", sex="M", view="PA"
    )
    data = whole.read_bytes()
    rows_at = data.index(b"\x28\x00\x10\x00")  # (0028,0010) Rows, little endian
    cuts = {"before_rows.dcm": rows_at, "in_patient.dcm": data.index(b"P-1") + 1}
    for name, length in cuts.items():
        (tmp_path / name).write_bytes(data[:length])
        with pytest.raises(dicom.DicomError, match=f"{name}: truncated") as caught:
            dicom.read_header(tmp_path / name)
        assert caught.value.kind == "truncated"
    header = dicom.read_header(whole)
    assert (header.patient_id, header.view, header.rows, header.columns) == ("P-1", "PA", 64, 64)
    paths = [str(whole), str(tmp_path / "before_rows.dcm")]
    table = pd.DataFrame({"image_id": ["whole", "cut"], "path": paths})
    with pytest.raises(dicom.DicomError, match="before_rows.dcm: truncated"):
        dicom.header_columns(table, skip_bad=False)
    kept, unreadable, no_patient = dicom.header_columns(table, skip_bad=True)
    assert kept["image_id"].tolist() == ["whole"] and kept["patient"].tolist() == ["P-1"]
    assert (unreadable, no_patient) == (1, 0)


def test_a_cache_of_dicoms_with_skip_bad_counts_the_bad_one(tmp_path: Path):
    paths = [
        write_dicom(
            tmp_path / f"{k}.dcm",
            synthetic_radiograph((40, 40), seed=k, maximum=4095),
            bits_stored=12,
            photometric=("MONOCHROME1", "MONOCHROME2")[k % 2],
        )
        for k in range(4)
    ]
    write_dicom(tmp_path / "bad.dcm", synthetic_radiograph(), pixel_data=False)
    paths.append(tmp_path / "bad.dcm")
    table = pd.DataFrame({"image_id": [p.name for p in paths], "path": [str(p) for p in paths]})
    table = table.assign(
        patient=[str(k) for k in range(5)],
        age=40.0,
        sex="M",
        view="PA",
        split="train",
        **{name: UNKNOWN for name in FINDINGS},
        **{ABNORMAL: 0},
    )
    table = table.loc[:, list(INDEX_COLUMNS)]
    with pytest.raises(ImageDecodeError, match="bad.dcm"):
        prepare_cache(table, tmp_path / "strict", size=32, workers=1, progress=False)
    out = prepare_cache(
        table, tmp_path / "cache", size=32, workers=1, skip_bad=True, progress=False
    )
    index, images, info = open_cache(out)
    assert info["n_failed"] == 1 and index["ok"].tolist() == [True] * 4 + [False]
    failed = pd.read_csv(out / "failed.csv")
    assert failed["image_id"].tolist() == ["bad.dcm"] and "no pixel data" in failed["error"][0]
    for k in range(4):
        assert np.array_equal(images[k], load_grey(paths[k], 32))
    assert images[0].mean() != images[1].mean()

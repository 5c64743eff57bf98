import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import realdata
from PIL import Image

from chexvision_lib.data.image_io import (
    PNG_SIGNATURE,
    ImageDecodeError,
    image_size,
    load_grey,
    to_grey_uint8,
)

GREY = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))


def _grey_palette(image: Image.Image) -> Image.Image:
    image.putpalette([v for i in range(256) for v in (i, i, i)])
    return image


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        lambda g: Image.fromarray(g, "L"),
        lambda g: Image.fromarray(np.stack([g] * 3, -1), "RGB"),
        lambda g: Image.fromarray(np.dstack([g, g, g, np.full_like(g, 255)]), "RGBA"),
        lambda g: Image.fromarray(np.dstack([g, np.full_like(g, 255)]), "LA"),
        lambda g: _grey_palette(Image.fromarray(g, "P")),
    ],
    ids=["L", "RGB", "RGBA", "LA", "P"],
)
def test_modes_with_equal_channels_decode_to_the_grey_values(make):
    assert np.array_equal(load_grey(_png_bytes(make(GREY))), GREY)


def test_16_bit_is_stretched_from_its_own_range():
    twelve_bit = (GREY.astype(np.uint16) * 16).astype(np.uint16)  # 0..4032, as from a DICOM
    image = Image.fromarray(twelve_bit)  # mode I;16
    grey = load_grey(_png_bytes(image))
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    assert np.all(np.diff(grey[0].astype(int)) >= 0)  # monotone: order of intensities kept
    assert to_grey_uint8(Image.fromarray(np.full((4, 4), 7, np.uint16))).max() == 0


def test_resize_to_square():
    wide = Image.fromarray(np.zeros((40, 80), np.uint8), "L")
    assert load_grey(_png_bytes(wide), 32).shape == (32, 32)


def test_bad_files_name_the_file(tmp_path: Path):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(ImageDecodeError, match=r"notes.png: not a readable image"):
        load_grey(text)
    truncated = tmp_path / "cut.png"
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    truncated.write_bytes(_png_bytes(Image.fromarray(noise))[:1000])
    with pytest.raises(ImageDecodeError, match="cut.png"):
        load_grey(truncated)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tiny)
    with pytest.raises(ImageDecodeError, match=r"tiny.png: image is 1x1"):
        load_grey(tiny)
    with pytest.raises(ImageDecodeError, match="file not found"):
        load_grey(tmp_path / "absent.png")


def test_real_nih_pngs_decode_including_rgba():
    images = sorted(realdata("nih", "images").glob("*.png"))
    assert len(images) == 103
    modes = {}
    for path in images:
        with Image.open(path) as image:
            modes[path.name] = image.mode
            rgb = np.asarray(image.convert("RGB")) if image.mode == "RGBA" else None
        grey = load_grey(path)
        assert grey.shape == (1024, 1024) and grey.dtype == np.uint8
        if rgb is not None:  # R=G=B with alpha 255: grey must be exactly the channel value
            assert np.array_equal(grey, rgb[..., 0])
    assert sum(mode == "RGBA" for mode in modes.values()) == 2


# --- sizes from the header, refusals before decoding, kinds of error --------------------------
def _jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def _png_header_only(width: int, height: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    """Signature and IHDR, no image data: decoding it would fail, so a refusal that names the
    size proves the size was checked first."""
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return PNG_SIGNATURE + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))


def _with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """`jpeg` with an APP1 segment right after SOI (where EXIF and its thumbnail live)."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@pytest.mark.parametrize(
    "encode",
    [
        lambda im: _png_bytes(im),
        lambda im: _png_bytes(im.convert("RGBA")),
        lambda im: _png_bytes(Image.fromarray(np.asarray(im).astype(np.uint16) * 200)),
        lambda im: _jpeg_bytes(im),
        lambda im: _jpeg_bytes(im.convert("RGB"), progressive=True, quality=80),
        # A fake SOF inside APP1 (as an EXIF thumbnail's would be) must be skipped by length.
        lambda im: _with_app1(_jpeg_bytes(im), b"Exif\x00\x00\xff\xc0\x00\x11\x08\xfd\xe8\xfd\xe8"),
    ],
    ids=["png-L", "png-RGBA", "png-16bit", "jpeg", "jpeg-progressive", "jpeg-app1-thumbnail"],
)
def test_image_size_reads_the_header_as_pil_does(encode):
    image = Image.fromarray(np.zeros((37, 53), np.uint8), "L")
    data = encode(image)
    assert image_size(data) == (53, 37)
    with Image.open(io.BytesIO(data)) as opened:
        assert image_size(data) == opened.size
    assert load_grey(data).shape == (37, 53)


def test_image_size_is_none_for_other_formats():
    buffer = io.BytesIO()
    Image.fromarray(GREY).save(buffer, format="BMP")
    assert image_size(buffer.getvalue()) is None
    assert image_size(b"not an image") is None
    assert image_size(b"\xff\xd8\xff") is None  # a JPEG cut inside its first marker


def test_real_files_header_sizes_match_pil():
    paths = sorted(realdata("nih", "images").glob("*.png"))[:10]
    paths += sorted(realdata("pediatric", "NORMAL").glob("*.jpeg"))[:10]
    for path in paths:
        with Image.open(path) as image:
            assert image_size(path.read_bytes()) == image.size, path


@pytest.mark.parametrize(
    "data, size",
    [
        (_png_header_only(32_000, 32_000), "32000x32000"),
        (_png_header_only(20_000, 20_000, 16, 6), "20000x20000"),  # 16-bit RGBA: the PIL path
        (_png_header_only(12_001, 12_000), "12001x12000"),  # just over: PIL would only warn
    ],
    ids=["grey-bomb", "rgba16-bomb", "just-over"],
)
def test_huge_png_is_refused_from_its_header(data: bytes, size: str):
    with pytest.raises(ImageDecodeError, match=rf"big.png: image is {size} .*limit of 144,000,000"):
        load_grey(data, name="big.png")
    try:
        load_grey(data, name="big.png")
    except ImageDecodeError as error:
        assert error.kind == "too large" and "refused before decoding" in str(error)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_jpeg_and_other_formats_are_refused_before_decoding():
    jpeg = bytearray(_jpeg_bytes(Image.fromarray(GREY)))
    at = jpeg.index(b"\xff\xc0")
    jpeg[at + 5 : at + 9] = struct.pack(">HH", 60_000, 50_000)  # height, width
    with pytest.raises(ImageDecodeError, match=r"x.jpg: image is 50000x60000 .*144,000,000"):
        load_grey(bytes(jpeg), name="x.jpg")
    buffer = io.BytesIO()
    Image.fromarray(GREY).save(buffer, format="BMP")
    for width, height in ((20_000, 20_000), (12_500, 12_000)):  # over PIL's limit; over ours
        bmp = bytearray(buffer.getvalue())
        bmp[18:26] = struct.pack("<ii", width, height)
        with pytest.raises(ImageDecodeError, match=r"x.bmp: image is .*144,000,000") as caught:
            load_grey(bytes(bmp), name="x.bmp")
        assert caught.value.kind == "too large"


def test_every_refusal_has_a_kind_that_survives_pickling(tmp_path: Path):
    noise = np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8)
    png = _png_bytes(Image.fromarray(noise))
    jpeg = _jpeg_bytes(Image.fromarray(noise))
    (tmp_path / "folder.png").mkdir()
    cases = {
        "missing": tmp_path / "absent.png",
        "unreadable file": tmp_path / "folder.png",
        "empty": b"",
        "not an image": b"this is not an image",
        "truncated": png[:1000],
        "too small": _png_header_only(8, 8),
        "too large": _png_header_only(13_000, 13_000),
    }
    for kind, source in cases.items():
        with pytest.raises(ImageDecodeError) as caught:
            load_grey(source, name=None if isinstance(source, Path) else f"{kind}.png")
        assert caught.value.kind == kind, (kind, str(caught.value))
        again = pickle.loads(pickle.dumps(caught.value))
        assert (again.kind, str(again)) == (kind, str(caught.value))
    for cut in (12, 2, 500):  # a JPEG short of its last bytes
        with pytest.raises(ImageDecodeError, match="cut.jpeg: not a readable image") as caught:
            load_grey(jpeg[:-cut], name="cut.jpeg")
        assert caught.value.kind == "truncated"


def test_a_real_jpeg_short_of_12_bytes_is_truncated(tmp_path: Path):
    source = sorted(realdata("pediatric", "PNEUMONIA").glob("*.jpeg"))[0]
    cut = tmp_path / "cut.jpeg"
    cut.write_bytes(source.read_bytes()[:-12])
    with pytest.raises(ImageDecodeError, match="cut.jpeg: not a readable image") as caught:
        load_grey(cut)
    assert caught.value.kind == "truncated"
    assert load_grey(source, 64).shape == (64, 64)

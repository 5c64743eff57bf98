import io
from pathlib import Path

import numpy as np
import pytest
from conftest import realdata
from PIL import Image

from chexvision_lib.data.image_io import ImageDecodeError, load_grey, to_grey_uint8

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

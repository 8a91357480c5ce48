from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from twopass.exceptions import ImageTooLargeError, InvalidImageError
from twopass.imaging import decode_image, load_tensor, preprocess
from twopass.models.card import Preprocessing

SPEC = Preprocessing.for_input(224)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_card_recipe_resizes_shorter_side_to_size_over_crop_fraction() -> None:
    assert SPEC.resize_shorter == 256
    assert Preprocessing.for_input(260).resize_shorter == 297


def test_tensor_shape_dtype_and_normalisation() -> None:
    white = Image.new("RGB", (640, 480), (255, 255, 255))
    tensor = preprocess(white, SPEC)
    assert tensor.shape == (3, 224, 224)
    assert tensor.dtype == np.float32
    assert np.allclose(tensor, (255 - 127) / 128)


def test_centre_crop_keeps_the_middle_and_channel_order() -> None:
    # Left third red, middle green, right third blue: the centre crop of a wide image is green.
    image = Image.new("RGB", (900, 300))
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        image.paste(colour, (i * 300, 0, (i + 1) * 300, 300))
    tensor = preprocess(image, SPEC)
    centre = tensor[:, 112, 112] * 128 + 127
    assert np.allclose(centre, [0, 255, 0], atol=1)


def test_jpeg_real_photo_decodes(cat_jpeg: bytes) -> None:
    image = decode_image(cat_jpeg, max_pixels=10_000_000)
    assert image.mode == "RGB"
    assert min(image.size) >= 256
    assert load_tensor(cat_jpeg, SPEC, max_pixels=10_000_000).shape == (3, 224, 224)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK", "I;16", "1"])
def test_convertible_modes_become_rgb(mode: str) -> None:
    image = Image.new(mode, (50, 40))
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    decoded = decode_image(encode(image, fmt), max_pixels=10_000)
    assert decoded.mode == "RGB"
    assert decoded.size == (50, 40)


def test_transparent_pixels_are_composited_on_white() -> None:
    image = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    decoded = decode_image(encode(image), max_pixels=1000)
    assert decoded.getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, not an image", "not an image"),
        (b"%PDF-1.4\n1 0 obj", "not an image"),
    ],
)
def test_garbage_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        decode_image(data, max_pixels=1000)


def test_truncated_jpeg_is_refused(cat_jpeg: bytes) -> None:
    with pytest.raises(InvalidImageError, match="decoded"):
        decode_image(cat_jpeg[: len(cat_jpeg) // 2], max_pixels=10_000_000)


def test_pixel_limit() -> None:
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(encode(Image.new("RGB", (200, 200))), max_pixels=200 * 199)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions: the classic decompression bomb, refused before decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


def test_decompression_bomb_dimensions_are_refused_without_decoding() -> None:
    with pytest.raises(ImageTooLargeError):
        decode_image(_png_header_only(60000, 60000), max_pixels=40_000_000)


def test_unsupported_format_is_refused() -> None:
    data = encode(Image.new("RGB", (8, 8)), "PPM")
    with pytest.raises(InvalidImageError, match="supported format"):
        decode_image(data, max_pixels=1000)


def test_exif_orientation_is_applied() -> None:
    # A 40x20 image tagged "rotate 90° CW" (orientation 6) is shown, and must be classified, as 20x40.
    image = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(image, "JPEG", exif=exif), max_pixels=10_000)
    assert decoded.size == (20, 40)

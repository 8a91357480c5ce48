"""Safe image decoding and the model-card preprocessing, shared by both models and the model build."""

from __future__ import annotations

import io
import math
import warnings
from typing import Protocol

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from twopass.exceptions import ImageTooLargeError, InvalidImageError


class Preprocessing(Protocol):
    """What this module needs to know of a model's input: ``twopass.models.card.Preprocessing`` is one.

    A protocol rather than an import so that imaging sits below the models (they call it, never the
    reverse) and can be used with any description of the pixels that has these fields."""

    @property
    def input_size(self) -> int: ...
    @property
    def resize_shorter(self) -> int: ...
    @property
    def shorter_side(self) -> int: ...
    @property
    def resize(self) -> str: ...
    @property
    def interpolation(self) -> str: ...
    @property
    def layout(self) -> str: ...
    @property
    def channel_order(self) -> str: ...
    @property
    def pixel_scale(self) -> float: ...
    @property
    def channel_mean(self) -> tuple[float, float, float]: ...
    @property
    def channel_std(self) -> tuple[float, float, float]: ...


# Pillow would otherwise "repair" a truncated file silently and hand back grey pixels.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Formats we accept; everything else (EPS, PSD, ICO bombs, …) is refused before decoding.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
#: Longest side accepted, whatever the pixel count: JPEG's and WebP's own limits are 65535 and 16383,
#: and no camera comes near. Decoders pay per row as well as per pixel: a 1x4000000 PNG took 2.4 s to
#: decode where 2000x2000 took 0.4 s (a busy 2-core machine), while this many rows cost milliseconds.
MAX_SIDE = 65_535
#: Modes Pillow can turn into RGB without guessing.
CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I;16", "I", "F"})

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
#: Each filter's reach in output pixels, which the pre-reduction must leave around the crop.
_SUPPORT = {"nearest": 1.0, "bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}
#: Reduce by an integer factor first while the rest still shrinks by >= 3x: Pillow's "indistinguishable
#: from a fair resample" setting, at a fraction of the cost on a large photo.
_REDUCING_GAP = 3.0


def decode_image(data: bytes, *, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode ``data`` into an RGB image, refusing anything malformed or too big.

    ``draft_size`` lets JPEG decode at a reduced DCT scale that still covers that many pixels on
    the shorter side: a 12-megapixel photo then decodes in a fraction of the time.
    """
    if not data:
        raise InvalidImageError("the image is empty")
    try:
        with warnings.catch_warnings():
            # DecompressionBombWarning becomes an error; our own pixel limit is stricter anyway.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
            width, height = image.size
            if width <= 0 or height <= 0:
                raise InvalidImageError("the image has no pixels")
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
                )
            if max(width, height) > MAX_SIDE:
                raise ImageTooLargeError(f"the image is {width}x{height}; no side may be over {MAX_SIDE} pixels")
            if image.mode not in CONVERTIBLE_MODES:
                raise InvalidImageError(f"unsupported image mode {image.mode!r}")
            if draft_size and image.format == "JPEG":
                # Only ever scales down, and never below draft_size on either side.
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            # Phones store portrait photos sideways plus an EXIF "rotate me" tag. In place: without
            # a tag the default would hand back a full copy of the pixels for nothing.
            ImageOps.exif_transpose(image, in_place=True)
    except (InvalidImageError, ImageTooLargeError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"the image looks like a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError(
            "the data is not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)"
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"the image could not be decoded: {exc}") from exc
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I", "F"):
        # High bit-depth greyscale: scale into 8 bits instead of clipping everything to white.
        arr = np.asarray(image, dtype=np.float32)
        peak = float(arr.max()) or 1.0
        image = Image.fromarray((arr * (255.0 / peak)).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white: transparent pixels have arbitrary colour underneath.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resized_size(size: tuple[int, int], spec: Preprocessing) -> tuple[int, int]:
    """The size the card's resize gives: the shorter side ``resize_shorter``, both at least ``input_size``.

    A direct resize gives ``input_size`` square whatever the aspect ratio.
    """
    if spec.resize == "direct":
        return spec.input_size, spec.input_size
    width, height = size
    scale = spec.shorter_side / min(width, height)
    return max(spec.input_size, round(width * scale)), max(spec.input_size, round(height * scale))


def crop_box(size: tuple[int, int], spec: Preprocessing) -> tuple[float, float, float, float]:
    """The centre ``input_size`` square of the card's resize, in the source image's coordinates.

    The recipe is "resize the shorter side to ``resize_shorter``, then cut the centre square"; this
    maps the square back through each axis's scale, so the resized image itself is never made.
    """
    width, height = size
    side = spec.input_size
    new_w, new_h = resized_size(size, spec)
    left, top = (new_w - side) // 2, (new_h - side) // 2
    sx, sy = width / new_w, height / new_h
    return left * sx, top * sy, (left + side) * sx, (top + side) * sy


def resize_and_crop(image: Image.Image, spec: Preprocessing) -> Image.Image:
    """The centre ``input_size`` square of the image with its shorter side resized to ``spec.resize_shorter``.

    One resample of the crop's source region straight to ``input_size`` x ``input_size``: work and
    memory follow the output and the source pixels under the crop, never the resized image, which for a
    40000x1 strip would be 10 gigapixels (its shorter side goes 1 → 256). A large region is first
    reduced by an integer factor in blocks aligned to the whole image, as ``resize(...,
    reducing_gap=3.0)`` of the whole image did.

    The pixels are those of "resize the whole image, then crop" but for rounding: Pillow takes a
    resample's region in float32, so sample positions move by up to ~1e-5 pixel and some pixels come
    out 1 of 255 apart (Pillow may also run the two passes in the other order). Against the
    resize-then-crop pipeline, on every photo in ``tests/data`` and the bundled cat, for both models
    (``tests/unit/test_bounded_preprocessing.py``): the same labels; the largest difference of any class
    probability measured is 0.0127 for the int8 fast model (204 of 150528 values 1/255 apart on the cat)
    and 0.0018 for the slow one; the test allows 0.02 and 0.005.
    """
    side = spec.input_size
    width, height = image.size
    new_w, new_h = resized_size(image.size, spec)
    box = crop_box(image.size, spec)
    # The integer pre-reduction that ``resize(reducing_gap=3.0)`` of the whole image makes (1 = none);
    # Pillow makes none for nearest, which reads one source pixel per output pixel anyway.
    nearest = spec.interpolation == "nearest"
    fx = 1 if nearest else int(width / new_w / _REDUCING_GAP) or 1
    fy = 1 if nearest else int(height / new_h / _REDUCING_GAP) or 1
    # The source pixels the filter reaches around the crop (its support, in source pixels when
    # shrinking), plus a block for rounding the region out to whole blocks.
    reach = _SUPPORT[spec.interpolation] * max(width / new_w, height / new_h, 1.0) + max(fx, fy) + 1
    region = (
        max(0, math.floor(box[0] - reach)) // fx * fx,
        max(0, math.floor(box[1] - reach)) // fy * fy,
        min(width, math.ceil((box[2] + reach) / fx) * fx),
        min(height, math.ceil((box[3] + reach) / fy) * fy),
    )
    # Only the region is copied (or reduced), so the resample's coordinates stay small: Pillow holds
    # them in float32, whose step at x = 20000 would already be 1/512 of a source pixel.
    part = image.reduce((fx, fy), box=region) if fx > 1 or fy > 1 else image.crop(region)
    x0, y0 = region[0], region[1]
    local = ((box[0] - x0) / fx, (box[1] - y0) / fy, (box[2] - x0) / fx, (box[3] - y0) / fy)
    return part.resize((side, side), _RESAMPLE[spec.interpolation], box=local)


def _per_channel(values: tuple[float, float, float], spec: Preprocessing) -> np.ndarray:
    """``values`` (R, G, B, in 0–1 units) times the pixel scale, ordered and shaped to broadcast over the input."""
    ordered = values[::-1] if spec.channel_order == "BGR" else values
    scaled = np.asarray([v * spec.pixel_scale for v in ordered], dtype=np.float32)
    return scaled.reshape(3, 1, 1) if spec.layout == "NCHW" else scaled.reshape(1, 1, 3)


def to_tensor(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """HWC uint8 RGB → the card's layout (CHW or HWC) and channel order, float32 ``(x / scale - mean) / std``.

    Computed as ``(x - mean * scale) / (std * scale)``: for the bundled models (scale 1) the same
    float32 operations as before, so the same values.
    """
    # Reorder and transpose the uint8 pixels (a quarter of the bytes), convert once, normalise in
    # place: one full-size temporary instead of three.
    pixels = np.asarray(image)
    if spec.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    if spec.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    arr = pixels.astype(np.float32, order="C")
    arr -= _per_channel(spec.channel_mean, spec)
    arr /= _per_channel(spec.channel_std, spec)
    return arr


def preprocess(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """One decoded RGB image → one ``(3, S, S)`` (or ``(S, S, 3)``) float32 input, exactly as the card says."""
    return to_tensor(resize_and_crop(image, spec), spec)


def load_tensor(data: bytes, spec: Preprocessing, *, max_pixels: int) -> np.ndarray:
    """Bytes → model input in one call (decode at draft scale, resize, crop, normalise)."""
    return preprocess(decode_image(data, max_pixels=max_pixels, draft_size=spec.shorter_side), spec)

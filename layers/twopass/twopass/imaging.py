"""Safe image decoding and the model-card preprocessing, shared by both models and the model build."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from twopass.exceptions import ImageTooLargeError, InvalidImageError
from twopass.models.card import Preprocessing

# Pillow would otherwise "repair" a truncated file silently and hand back grey pixels.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: Formats we accept; everything else (EPS, PSD, ICO bombs, …) is refused before decoding.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
#: Modes Pillow can turn into RGB without guessing.
CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I;16", "I", "F"})

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


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


def resize_and_crop(image: Image.Image, spec: Preprocessing) -> Image.Image:
    """Resize the shorter side to ``spec.resize_shorter`` and cut the centre ``input_size`` square."""
    width, height = image.size
    scale = spec.resize_shorter / min(width, height)
    new_w, new_h = max(spec.input_size, round(width * scale)), max(spec.input_size, round(height * scale))
    resized = image.resize((new_w, new_h), _RESAMPLE[spec.interpolation], reducing_gap=3.0)
    left = (new_w - spec.input_size) // 2
    top = (new_h - spec.input_size) // 2
    return resized.crop((left, top, left + spec.input_size, top + spec.input_size))


def to_tensor(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """HWC uint8 RGB → CHW float32, normalised ``(x - mean) / std``."""
    # Transpose the uint8 pixels (a quarter of the bytes), convert once, normalise in place: the
    # same float32 operations, so the same values, with one full-size temporary instead of three.
    arr = np.asarray(image).transpose(2, 0, 1).astype(np.float32, order="C")
    arr -= np.float32(spec.mean)
    arr /= np.float32(spec.std)
    return arr


def preprocess(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """One decoded RGB image → one ``(3, S, S)`` float32 input, exactly as the model card says."""
    return to_tensor(resize_and_crop(image, spec), spec)


def load_tensor(data: bytes, spec: Preprocessing, *, max_pixels: int) -> np.ndarray:
    """Bytes → model input in one call (decode at draft scale, resize, crop, normalise)."""
    return preprocess(decode_image(data, max_pixels=max_pixels, draft_size=spec.resize_shorter), spec)

"""Decoding uploaded images safely: format sniffing, size limits, EXIF orientation, working resolution.
"""
from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist_jax.checks import PILLOW_ERRORS
from fmnist_jax.errors import UserError
from fmnist_jax.photos.pipeline_params import DEFAULT_PREPROCESS

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "avif", "bmp", "gif", "tif", "tiff"]
PIL_FORMATS = ("PNG", "JPEG", "WEBP", "AVIF", "BMP", "DIB", "GIF", "TIFF")  # JPEG includes MPO (multi-picture)
MAX_PIXELS = 50_000_000          # a 48-megapixel phone photo fits; decompression bombs do not
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MIN_SIDE = 8
MAX_ASPECT = 20


class ImageError(UserError):
    """An upload that cannot be used as a photo; the message says what to do instead."""


@dataclass
class PhotoResult:
    """The model input made from one photo, with every intermediate image for display."""

    model_input: np.ndarray                        # uint8 (H, W, C), what the model sees
    steps: list[tuple[str, np.ndarray]]            # (name, uint8 image) from the original to the model input
    info: dict = field(default_factory=dict)       # background colour, inverted, crop box, notes


# ----------------------------------------------------------------------------- decoding

_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP",
               b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _sniff_unsupported(data: bytes) -> str | None:
    head = data[:512].lstrip()
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypheim", b"ftypheis", b"ftyphevc", b"ftypmsf1"):
        return "HEIC photos are not supported; set the phone camera to 'Most Compatible' (JPEG) or export a JPEG"
    if head.startswith(b"<?xml") or head[:200].lower().find(b"<svg") >= 0:
        return "SVG drawings are not supported; export the drawing as a PNG or JPEG"
    if head.startswith(b"%PDF"):
        return "this is a PDF document, not an image; export the page as a PNG or JPEG"
    return None


def _open(data: bytes) -> Image.Image:
    if not data:
        raise ImageError("the file is empty (0 bytes); choose a photo file")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(f"the file is {len(data) / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB, "
                         f"so save the photo at a lower resolution or quality")
    hint = _sniff_unsupported(data)
    if hint:
        raise ImageError(hint)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"the image has more than {MAX_PIXELS / 1e6:.0f} megapixels (the limit); "
                         f"resize it to at most {MAX_PIXELS / 1e6:.0f} megapixels and try again") from None
    except UnidentifiedImageError:
        kind = next((name for magic, name in _SIGNATURES.items() if data.startswith(magic)), None)
        if kind == "PNG" and data[12:16] == b"IHDR" and 0 in struct.unpack(">II", data[16:24]):
            raise ImageError("the image has zero width or height (empty); choose a real photo") from None
        if kind:
            raise ImageError(f"the file starts like a {kind} image but its header is corrupt; re-save or re-export the photo") from None
        raise ImageError(f"this file is not an image in a supported format ({', '.join(t.upper() for t in UPLOAD_TYPES)}); "
                         f"if it is a photo, save it as a JPEG or PNG") from None
    except PILLOW_ERRORS as error:  # crafted or damaged headers
        raise ImageError(f"the image header is corrupt ({type(error).__name__}); re-save or re-export the photo") from None
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageError(f"the image is {width}x{height} pixels (empty); choose a real photo")
    if width * height > MAX_PIXELS:
        raise ImageError(f"the image is {width}x{height} = {width * height / 1e6:.0f} megapixels; the limit is "
                         f"{MAX_PIXELS / 1e6:.0f} megapixels, so resize it and try again")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"the image is only {width}x{height} pixels; it needs at least {MIN_SIDE} pixels on each side "
                         f"to show a garment")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(f"the image is {width}x{height} pixels, a strip rather than a photo (sides more than "
                         f"{MAX_ASPECT}:1); crop it to the garment")
    return image


def _to_float(image: Image.Image, work_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB float32 (H, W, 3) in [0, 1] at most `work_size` on the long side, and alpha (H, W) or None."""
    mode = image.mode
    scale = 255.0
    if mode.startswith("I;16") or mode == "I":
        high = image.getextrema()[1]
        scale = 65535.0 if (mode.startswith("I;16") or high > 255) else 255.0
        image = image.convert("I").convert("F")
    elif mode == "F":
        low, high = image.getextrema()
        image = image.point(lambda v: (v - low) * (255.0 / max(high - low, 1e-12)))
    elif mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")  # 1-bit, CMYK, YCbCr, LAB, HSV, RGBX
    if max(image.size) > work_size:
        ratio = work_size / max(image.size)
        size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0 if image.mode != "F" else None)
    array = np.asarray(image, dtype=np.float32) / scale
    alpha = None
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.shape[2] == 4:
        alpha = array[..., 3]
        array = array[..., :3]
        if alpha.min() > 0.99:
            alpha = None
    return np.clip(array, 0.0, 1.0), alpha


def decode_image(data: bytes, work_size: int = DEFAULT_PREPROCESS["work_size"]) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode an upload (first frame, EXIF orientation applied) to RGB floats and an optional alpha; ImageError if unusable."""
    image = _open(data)
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        if image.format in ("JPEG", "MPO"):
            image.draft(None, (work_size * 2, work_size * 2))  # let libjpeg decode at 1/2..1/8 scale: 12 MP in ~30 ms
        image.load()
    except PILLOW_ERRORS as error:  # truncated data, bad CRC, broken compression streams ...
        reason = str(error).split("(")[0].strip() or type(error).__name__
        raise ImageError(f"the image data is truncated or corrupt ({reason}); re-save or re-export the photo") from None
    try:
        image = ImageOps.exif_transpose(image)
    except PILLOW_ERRORS:  # a damaged EXIF block must not lose the photo; it is shown as stored
        pass
    try:
        return _to_float(image, work_size)
    except ImageError:
        raise
    except PILLOW_ERRORS as error:
        raise ImageError(f"the image could not be converted ({type(error).__name__}: {error}); save it as an 8-bit JPEG or PNG") from None

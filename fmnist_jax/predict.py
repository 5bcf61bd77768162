"""Real photo -> model input like the training data; batch prediction with top-k.

Fashion-MNIST images are product photos on white that Zalando trimmed to the garment, resized so the
longest edge is 28 px, sharpened, centred on a 28x28 canvas and negated (garment bright on black). A
phone photo shows a garment on a bed, a floor or a wall instead, so it gets the same treatment here:
estimate the background from the border (colour plus a lighting gradient), separate the garment from
it (smoothed colour distance, hysteresis threshold, morphology, the main connected part), negate
against the background's brightness when the background is light, crop, resize the longest edge,
centre and sharpen. The parameters are stored with each model (TrainedModel.preprocess) and this one
code path serves the Deploy page, the CLI, the REST API and the exported bundle.
"""
from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "avif", "bmp", "gif", "tif", "tiff"]
PIL_FORMATS = ("PNG", "JPEG", "WEBP", "AVIF", "BMP", "DIB", "GIF", "TIFF")  # JPEG includes MPO (multi-picture)
MAX_PIXELS = 50_000_000          # a 48-megapixel phone photo fits; decompression bombs do not
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MIN_SIDE = 8
MAX_ASPECT = 20
DEMO_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"

# Defaults of the photo pipeline; a model stores its own copy (with any overrides) in model.json.
DEFAULT_PREPROCESS: dict[str, Any] = {
    "mode": "garment",            # "garment": find, crop, negate and centre; "resize": plain resize (natural images)
    "work_size": 256,             # longest side the photo is analysed at (px)
    "border": 0.05,               # width of the border ring that estimates the background (fraction of the short side)
    "chroma_weight": 1.5,         # weight of colour (vs brightness) differences in the garment/background distance
    "smooth": 0.012,              # Gaussian sigma applied to the distance map (fraction of the long side): hides texture
    "noise_sigmas": 4.0,          # background texture level = median + this many robust sigmas of the border distances
    "min_contrast": 0.05,         # smallest colour distance that counts as garment
    "open_radius": 0.01,          # opening radius (fraction of the long side): removes specks, thin threads, hanger hooks
    "close_radius": 0.02,         # closing radius: joins parts of one garment split by highlights or patterns
    "shadow": 0.4,                # on light backgrounds, pixels up to this much darker with the background's colour count half
    "dark_background": 0.3,       # background luminance below this is "already negative" (no inversion)
    "fill": 0.15,                 # minimum brightness inside the garment, so light garments keep their silhouette
    "stretch_percentile": 99.0,   # this percentile of the garment is stretched to full brightness ...
    "max_gain": 4.0,              # ... by at most this factor
    "fit": 1.0,                   # longest garment edge as a fraction of the canvas side (Fashion-MNIST: 1.0)
    "center": "bbox",             # "bbox" (Fashion-MNIST) or "mass" (MNIST)
    "sharpen": 0.5,               # unsharp-mask amount after resizing (Zalando sharpened their images)
}
_CHOICES = {"mode": ("garment", "resize"), "center": ("bbox", "mass")}
_RANGES = {"work_size": (32, 1024), "border": (0.01, 0.25), "chroma_weight": (0.0, 10.0), "smooth": (0.0, 0.1),
           "noise_sigmas": (0.0, 20.0), "min_contrast": (0.0, 1.0), "open_radius": (0.0, 0.1),
           "close_radius": (0.0, 0.2), "shadow": (0.0, 0.9), "dark_background": (0.0, 1.0), "fill": (0.0, 1.0),
           "stretch_percentile": (50.0, 100.0), "max_gain": (1.0, 50.0), "fit": (0.2, 1.0), "sharpen": (0.0, 5.0)}


class ImageError(ValueError):
    """An upload that cannot be used as a photo; the message says what to do instead."""


@dataclass
class PhotoResult:
    """The model input made from one photo, with every intermediate image for display."""

    model_input: np.ndarray                        # uint8 (H, W, C), what the model sees
    steps: list[tuple[str, np.ndarray]]            # (name, uint8 image) from the original to the model input
    info: dict = field(default_factory=dict)       # background colour, inverted, crop box, notes


# ----------------------------------------------------------------------------- parameters

def resolve_preprocess(params: dict | None, input_shape: tuple[int, ...] = (28, 28, 1)) -> dict:
    """Defaults merged with a model's stored parameters; ValueError naming any unknown or out-of-range one."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULT_PREPROCESS) - {"version"})
    if unknown:
        raise ValueError(f"unknown preprocessing setting(s): {', '.join(unknown)}")
    resolved = dict(DEFAULT_PREPROCESS)
    if len(input_shape) == 3 and input_shape[2] == 3 and "mode" not in params:
        resolved["mode"] = "resize"  # colour datasets (CIFAR-10) are natural images, not garments on a background
    resolved.update({k: v for k, v in params.items() if k != "version"})
    for name, choices in _CHOICES.items():
        if resolved[name] not in choices:
            raise ValueError(f"preprocessing '{name}' must be one of {', '.join(choices)}, got {resolved[name]!r}")
    for name, (low, high) in _RANGES.items():
        value = resolved[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
            raise ValueError(f"preprocessing '{name}' must be a number from {low:g} to {high:g}, got {value!r}")
    resolved["work_size"] = int(resolved["work_size"])
    return resolved


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
    except Exception as error:  # Pillow raises many exception types for crafted headers
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
    except Exception as error:  # truncated data, bad CRC, broken compression streams ...
        reason = str(error).split("(")[0].strip() or type(error).__name__
        raise ImageError(f"the image data is truncated or corrupt ({reason}); re-save or re-export the photo") from None
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a damaged EXIF block must not lose the photo; it is shown as stored
        pass
    try:
        return _to_float(image, work_size)
    except ImageError:
        raise
    except Exception as error:
        raise ImageError(f"the image could not be converted ({type(error).__name__}: {error}); save it as an 8-bit JPEG or PNG") from None


# ----------------------------------------------------------------------------- garment segmentation

def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _features(rgb: np.ndarray, chroma_weight: float) -> np.ndarray:
    """Luminance and two weighted opponent-colour channels, so distances mix brightness and colour."""
    luma = _luma(rgb)
    red_green = (rgb[..., 0] - rgb[..., 1]) * (0.5 * chroma_weight)
    yellow_blue = ((rgb[..., 0] + rgb[..., 1]) * 0.5 - rgb[..., 2]) * (0.5 * chroma_weight)
    return np.stack([luma, red_green, yellow_blue], axis=-1)


def _border_ring(shape: tuple[int, int], fraction: float) -> np.ndarray:
    height, width = shape
    width_px = max(1, int(round(fraction * min(height, width))))
    ring = np.zeros(shape, dtype=bool)
    ring[:width_px], ring[-width_px:], ring[:, :width_px], ring[:, -width_px:] = True, True, True, True
    return ring


def _background(features: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(background features per pixel, ring inlier mask): the dominant border colour, with a bilinear brightness gradient."""
    samples = features[ring]
    # The dominant colour of the border (a garment touching the edge is the minority): densest coarse bin.
    bins = np.floor(np.clip(samples, -1.0, 1.0) * 8).astype(np.int64) + 8
    keys = bins[:, 0] * 289 + bins[:, 1] * 17 + bins[:, 2]
    values, counts = np.unique(keys, return_counts=True)
    seed = samples[keys == values[counts.argmax()]]
    centre = np.median(seed, axis=0)
    distance = np.linalg.norm(samples - centre, axis=1)
    # Typical background scatter from the closest 40% of the border, so a garment on the edge does not widen it.
    inliers = distance <= max(0.08, 2.5 * float(np.percentile(distance, 40)))
    height, width = ring.shape
    background = np.broadcast_to(np.median(samples[inliers], axis=0), features.shape).copy()
    ys, xs = np.nonzero(ring)
    ys, xs = ys[inliers], xs[inliers]
    if len(ys) >= 16 and height > 2 and width > 2:
        # Lighting falls off across a bed or a floor: fit brightness as a + b x + c y + d x y over the border.
        yn, xn = ys / (height - 1) * 2 - 1, xs / (width - 1) * 2 - 1
        design = np.stack([np.ones_like(xn), xn, yn, xn * yn], axis=1)
        coef, *_ = np.linalg.lstsq(design, samples[inliers, 0], rcond=None)
        grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
        grid_y, grid_x = grid_y / (height - 1) * 2 - 1, grid_x / (width - 1) * 2 - 1
        background[..., 0] = coef[0] + coef[1] * grid_x + coef[2] * grid_y + coef[3] * grid_x * grid_y
        background[..., 0] = np.clip(background[..., 0], samples[inliers, 0].min(), samples[inliers, 0].max())
    inlier_mask = np.zeros(ring.shape, dtype=bool)
    inlier_mask[ys, xs] = True
    return background, inlier_mask


def _shadow_free(features: np.ndarray, background: np.ndarray, params: dict) -> np.ndarray:
    """False where a pixel looks like a shadow on the background: somewhat darker, same chromaticity."""
    luma, background_luma = features[..., 0], np.maximum(background[..., 0], 0.05)
    ratio = luma / background_luma
    chromaticity = features[..., 1:] / np.maximum(luma, 0.05)[..., None]
    background_chromaticity = background[..., 1:] / background_luma[..., None]
    same_colour = np.linalg.norm(chromaticity - background_chromaticity, axis=-1) < 0.06
    return ~(same_colour & (ratio > 1.0 - params["shadow"]) & (ratio < 0.97))


def _disk(radius: int) -> np.ndarray:
    span = np.arange(-radius, radius + 1)
    return (span[:, None] ** 2 + span[None, :] ** 2) <= radius * radius + radius * 0.5


def _otsu(values: np.ndarray) -> float:
    counts, edges = np.histogram(values, bins=128)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(between.argmax())])


def _thresholds(distance: np.ndarray, inliers: np.ndarray, params: dict) -> tuple[float, float]:
    """(low, high) hysteresis thresholds: above the border's texture level, and Otsu's split when higher."""
    border_values = distance[inliers] if inliers.any() else distance.ravel()
    median = float(np.median(border_values))
    noise = median + params["noise_sigmas"] * 1.4826 * float(np.median(np.abs(border_values - median)))
    low = max(params["min_contrast"], noise)
    high = max(low, _otsu(distance)) if distance.max() > low else low
    return low, high


def _garment_mask(features: np.ndarray, background: np.ndarray, inliers: np.ndarray, params: dict,
                  alpha: np.ndarray | None, notes: list[str], shadow_free: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the garment (the main connected foreground part)."""
    height, width = inliers.shape
    long_side = max(height, width)
    if alpha is not None and (alpha < 0.5).mean() > 0.02:
        mask = alpha >= 0.5  # a cut-out with transparency says exactly where the garment is
    else:
        raw = np.linalg.norm(features - background, axis=-1)
        if shadow_free is not None:
            raw = np.where(shadow_free, raw, raw * 0.5)
        sigma = params["smooth"] * long_side
        distance = ndimage.gaussian_filter(raw, sigma) if sigma >= 0.6 else raw
        low, high = _thresholds(distance, inliers, params)
        weak = distance > low
        labels, count = ndimage.label(weak)
        if count:
            strong_labels = np.unique(labels[distance > high])
            mask = np.isin(labels, strong_labels[strong_labels > 0])
        else:
            mask = weak
        if sigma >= 0.6 and mask.any():
            # Smoothing hid the background's texture but also spread the garment by ~sigma: trim that halo
            # with a lightly smoothed map, inside the smoothed mask only.
            fine = ndimage.gaussian_filter(raw, 0.7)
            fine_low, _ = _thresholds(fine, inliers, params)
            core = ndimage.binary_erosion(mask, _disk(max(1, int(math.ceil(1.5 * sigma)))))
            trimmed = ndimage.binary_fill_holes(mask & ((fine > fine_low) | core))
            if trimmed.sum() >= 0.5 * mask.sum():
                mask = trimmed
    open_px = int(round(params["open_radius"] * long_side))
    close_px = int(round(params["close_radius"] * long_side))
    if open_px >= 1:
        opened = ndimage.binary_opening(mask, _disk(open_px))
        mask = opened if opened.sum() >= 0.25 * mask.sum() else mask  # thin garments (sandal straps) survive
    if close_px >= 1:
        padded = np.pad(mask, close_px)
        mask = ndimage.binary_closing(padded, _disk(close_px))[close_px:-close_px, close_px:-close_px]
    mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count == 0:
        notes.append("no garment stands out from the background; the whole photo is used")
        return np.ones_like(mask)
    areas = ndimage.sum_labels(np.ones_like(mask, dtype=np.float32), labels, index=np.arange(1, count + 1))
    centres = ndimage.center_of_mass(mask, labels, index=np.arange(1, count + 1))
    offsets = np.array([math.hypot((cy - (height - 1) / 2) / height, (cx - (width - 1) / 2) / width) for cy, cx in centres])
    # The garment is big and near the middle; clutter at the edges is smaller or off-centre.
    best = int(np.argmax(areas * (1.0 - offsets)))
    mask = labels == best + 1
    if mask.mean() < 0.002:
        notes.append("the garment found is tiny; the whole photo is used (photograph the garment closer)")
        return np.ones_like(mask)
    return mask


# ----------------------------------------------------------------------------- canvas

def _place(values: np.ndarray, canvas_shape: tuple[int, int], params: dict) -> np.ndarray:
    """Resize a cropped float image so its longest edge fills `fit` of the canvas, centred as the dataset is."""
    canvas_h, canvas_w = canvas_shape
    height, width = values.shape
    scale = min(params["fit"] * canvas_h / height, params["fit"] * canvas_w / width)
    new_h, new_w = max(1, min(canvas_h, round(height * scale))), max(1, min(canvas_w, round(width * scale)))
    resized = np.asarray(Image.fromarray(values.astype(np.float32)).resize((new_w, new_h), Image.Resampling.LANCZOS))
    resized = np.clip(resized, 0.0, 1.0)
    top, left = (canvas_h - new_h) // 2, (canvas_w - new_w) // 2
    if params["center"] == "mass" and resized.sum() > 0:
        cy, cx = ndimage.center_of_mass(resized)
        top = int(np.clip(round((canvas_h - 1) / 2 - cy), 0, canvas_h - new_h))
        left = int(np.clip(round((canvas_w - 1) / 2 - cx), 0, canvas_w - new_w))
    canvas = np.zeros(canvas_shape, dtype=np.float32)
    canvas[top:top + new_h, left:left + new_w] = resized
    if params["sharpen"] > 0:
        blurred = ndimage.gaussian_filter(canvas, 1.0)
        canvas = np.clip(canvas + params["sharpen"] * (canvas - blurred), 0.0, 1.0)
    return canvas


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)


def _channels(gray_or_rgb: np.ndarray, channels: int) -> np.ndarray:
    if gray_or_rgb.ndim == 2:
        gray_or_rgb = gray_or_rgb[..., None]
    if gray_or_rgb.shape[2] == channels:
        return gray_or_rgb
    if channels == 1:
        return _to_uint8(_luma(gray_or_rgb.astype(np.float32) / 255.0))[..., None]
    return np.repeat(gray_or_rgb[..., :1], channels, axis=2)


# ----------------------------------------------------------------------------- the pipeline

def preprocess_photo(data: bytes, params: dict | None = None, input_shape: tuple[int, ...] = (28, 28, 1)) -> PhotoResult:
    """Turn uploaded image bytes into the model's input, with every intermediate step; ImageError if unusable."""
    params = resolve_preprocess(params, tuple(input_shape))
    canvas_h, canvas_w, channels = (int(v) for v in input_shape)
    rgb, alpha = decode_image(data, params["work_size"])
    notes: list[str] = []
    if alpha is not None:
        # Flatten transparency onto the background a product photo would have: white, or black under a light garment.
        opaque = alpha >= 0.5
        light_garment = opaque.any() and float(_luma(rgb)[opaque].mean()) > 0.6
        backdrop = 0.0 if light_garment else 1.0
        rgb = rgb * alpha[..., None] + backdrop * (1.0 - alpha[..., None])
    original = _to_uint8(rgb)
    steps: list[tuple[str, np.ndarray]] = [("original", original)]
    luma = _luma(rgb)
    if params["mode"] == "resize":
        resized = np.asarray(Image.fromarray(original).resize((canvas_w, canvas_h), Image.Resampling.LANCZOS))
        model_input = _channels(resized, channels)
        steps.append(("model input", model_input[..., 0] if channels == 1 else model_input))
        return PhotoResult(model_input, steps, {"mode": "resize", "notes": notes})
    if np.ptp(luma) < 0.02 and np.ptp(rgb, axis=(0, 1)).max() < 0.02:
        raise ImageError("the image is a single flat colour with nothing to recognise; upload a photo of a garment")

    ring = _border_ring(luma.shape, params["border"])
    border_luma = float(np.median(luma[ring]))
    if (luma.shape == (canvas_h, canvas_w) and border_luma < 0.1 and alpha is None):
        # Already in the dataset's format (model-sized, dark background, e.g. a Fashion-MNIST test PNG): used as is.
        model_input = _channels(original, channels)
        steps.append(("model input", model_input[..., 0] if channels == 1 else model_input))
        return PhotoResult(model_input, steps, {"mode": "garment", "passthrough": True, "inverted": False, "notes": notes})

    features = _features(rgb, params["chroma_weight"])
    background, inliers = _background(features, ring)
    background_luma = background[..., 0]
    light_background = float(np.median(background_luma[ring])) >= params["dark_background"]
    shadow_free = _shadow_free(features, background, params) if light_background and params["shadow"] else None
    mask = _garment_mask(features, background, inliers, params, alpha, notes, shadow_free)
    # Negate on a light background, and for a garment darker than a dark one (black shoes on a dark floor).
    inverted = light_background or float(np.median(luma[mask] - background_luma[mask])) < 0
    if inverted:
        # A product photo on white, negated: darkness relative to the local background brightness (flat-field).
        white = np.maximum(background_luma, np.percentile(luma[mask], 99) if mask.any() else 1.0)
        values = 1.0 - luma / np.maximum(white, 0.05)
    else:
        # Already garment-bright-on-dark: brightness above the background.
        values = (luma - background_luma) / np.maximum(1.0 - background_luma, 0.05)
    values = np.clip(values, 0.0, 1.0)
    garment = values[mask]
    reference = np.percentile(garment, params["stretch_percentile"]) if garment.size else 1.0
    values = np.clip(values / max(float(reference), 1.0 / params["max_gain"]), 0.0, 1.0)
    values = np.where(mask, np.maximum(values, params["fill"]), 0.0)

    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    cropped = values[top:bottom, left:right]
    canvas = _place(cropped, (canvas_h, canvas_w), params)
    model_gray = _to_uint8(canvas)
    removed = np.where(mask[..., None], original, np.uint8(255 if inverted else 0))
    steps += [("background removed", removed), ("cropped", _to_uint8(cropped)), ("model input", model_gray)]
    model_input = np.repeat(model_gray[..., None], channels, axis=2)
    info = {"mode": "garment", "passthrough": False, "inverted": inverted,
            "background": [round(float(v), 4) for v in np.median(rgb[inliers], axis=0)] if inliers.any() else None,
            "crop_box": [left, top, right, bottom], "work_size": [int(luma.shape[1]), int(luma.shape[0])],
            "garment_fraction": round(float(mask.mean()), 4), "notes": notes}
    return PhotoResult(model_input, steps, info)


def naive_input(data: bytes, input_shape: tuple[int, ...] = (28, 28, 1)) -> np.ndarray:
    """The baseline the pipeline is measured against: grayscale and squash to the input size, nothing else."""
    image = _open(data)
    image.load()
    gray = image.convert("RGB").convert("L").resize((int(input_shape[1]), int(input_shape[0])), Image.Resampling.BILINEAR)
    return _channels(np.asarray(gray), int(input_shape[2]))


# ----------------------------------------------------------------------------- models and prediction

def load_model(source: str, home: str | Path | None = None) -> Any:
    """A TrainedModel from "demo", a run folder, an exported bundle (.zip) or a model folder; ValueError otherwise."""
    from . import bundle, settings, store
    from .train import TrainedModel

    if not isinstance(source, str) or not source.strip():
        raise ValueError("choose a model: a run folder, an exported bundle (.zip) or 'demo'")
    source = source.strip()
    if source == "demo":
        return bundle.load_model_dir(DEMO_DIR)
    if "\x00" in source or len(source) > 4096:
        raise ValueError("the model path contains a NUL character or is too long")
    path = Path(source).expanduser()
    if not path.exists() and not path.is_absolute():
        workspace = settings.home_dir(home).resolve()
        inside = (workspace / source).resolve()  # a run named relative to the workspace, never outside it
        if inside.is_relative_to(workspace):
            path = inside
    if path.is_file():
        return bundle.load_bundle(path)
    if path.is_dir() and (path / "run.json").is_file():
        try:
            model = TrainedModel.from_run(path)
            run = store.read_json(path / "run.json")
        except store.StoreError as error:
            raise ValueError(str(error)) from None
        model.preprocess = resolve_preprocess(model.preprocess, model.input_shape)
        model.card.update({"source": "run", "run": path.name, "config": run.get("config"),
                           "dataset": run.get("dataset", "fashion_mnist"), "test_accuracy": run.get("test_accuracy")})
        return model
    if path.is_dir() and (path / "model.json").is_file():
        return bundle.load_model_dir(path)
    raise ValueError(f"{source!r} is not a model: give a run folder (with run.json), an exported bundle (.zip) or 'demo'")


def _record(name: str, probs: np.ndarray, class_names: tuple[str, ...], steps: list) -> dict:
    order = np.argsort(-probs, kind="stable")
    index = int(order[0])
    return {"file": name, "label": class_names[index], "index": index, "probability": float(probs[index]),
            "top3": [[class_names[int(i)], float(probs[int(i)])] for i in order[:3]],
            "probs": [float(p) for p in probs], "steps": steps}


def predict_files(model: Any, files: list[tuple[str, bytes]]) -> list[dict]:
    """Predict each (name, bytes) upload; a file that fails gets {"file", "error"} and the others still predict."""
    results: list[dict | None] = [None] * len(files)
    ready: list[tuple[int, PhotoResult]] = []
    for position, (name, payload) in enumerate(files):
        try:
            ready.append((position, preprocess_photo(payload, model.preprocess, model.input_shape)))
        except ImageError as error:
            results[position] = {"file": name, "error": str(error)}
        except Exception as error:  # a bug on one odd file must not lose the rest of the batch
            results[position] = {"file": name, "error": f"this image could not be processed ({type(error).__name__}); "
                                                         f"re-save it as a JPEG or PNG"}
    if ready:
        probs = model.predict_proba(np.stack([photo.model_input for _, photo in ready]))
        for (position, photo), row in zip(ready, probs):
            results[position] = _record(files[position][0], row, model.class_names, photo.steps)
    return [r for r in results if r is not None]


def public_record(result: dict) -> dict:
    """The JSON contract of the CLI and the REST API: file, label, index, probability, top3 (or file, error)."""
    if "error" in result:
        return {"file": result["file"], "error": result["error"]}
    return {k: result[k] for k in ("file", "label", "index", "probability", "top3")}

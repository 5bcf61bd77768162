"""Separating the garment from its background, and placing it on the model's canvas.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage

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

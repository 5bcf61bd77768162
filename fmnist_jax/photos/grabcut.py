"""Pipeline mode "grabcut": the garment separated from a real background (floor, bed, hanger, shadows) by
OpenCV's GrabCut, then negated, cropped and fitted to the canvas like a Fashion-MNIST image.

Measured on real phone photos (bench/real_photos.py), GrabCut from a rectangle a few percent inside the
image beats estimating the background from the border, which fails on patterned floors and beds; the
final sharpening of the older "garment" mode costs accuracy on real photos, so this mode does not sharpen
by default. Nothing is downloaded: GrabCut is a classical graph-cut model fitted to each photo.
"""
from __future__ import annotations

import cv2
import numpy as np

from fmnist_jax.photos.decode import PhotoResult
from fmnist_jax.photos.segment import _channels, _luma, _place, _to_uint8

# One photo per core at a time (photos/pool.py), each on one thread: OpenCV's own thread pool would
# split a 200-pixel photo's resize and colour conversion across cores already busy with other photos.
cv2.setNumThreads(1)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed background regions (flood fill from a padded border)."""
    if not mask.any():
        return mask
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8), (0, 0), 1)
    return mask | (flood[1:-1, 1:-1] == 0)


def _main_part(garment: np.ndarray) -> np.ndarray:
    """The connected part that is big and central (clutter at the edges loses)."""
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(garment.astype(np.uint8), connectivity=8)
    if count <= 2:
        return garment
    height, width = garment.shape
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    offsets = np.hypot((centroids[1:, 0] - (width - 1) / 2) / width, (centroids[1:, 1] - (height - 1) / 2) / height)
    return labels == 1 + int(np.argmax(areas * (1.0 - offsets)))


def _shrunk(bgr: np.ndarray, side: int) -> np.ndarray:
    """`bgr` with its longest side at most `side` (area-averaged), or itself."""
    height, width = bgr.shape[:2]
    if not side or max(height, width) <= side:
        return bgr
    scale = side / max(height, width)
    return cv2.resize(bgr, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)


def _rect_cut(bgr: np.ndarray, margin: float, iterations: int) -> np.ndarray:
    """GrabCut's labels from the rectangle `margin` inside the photo. OpenCV's RNG is seeded first: its colour
    models start from k-means on OpenCV's global RNG, so otherwise a second upload could get another mask."""
    height, width = bgr.shape[:2]
    mx, my = max(1, round(margin * width)), max(1, round(margin * height))
    labels = np.zeros((height, width), np.uint8)
    cv2.setRNGSeed(0)
    cv2.grabCut(bgr, labels, (mx, my, max(1, width - 2 * mx), max(1, height - 2 * my)), np.zeros((1, 65)),
                np.zeros((1, 65)), iterations, cv2.GC_INIT_WITH_RECT)
    return labels


def _cut_labels(bgr: np.ndarray, params: dict) -> np.ndarray:
    """GrabCut's labels for `bgr`: all rounds from the rectangle, or with `coarse_size` the first round on a
    smaller copy and the others here, started from its mask (the first round from a rectangle costs about
    twice a later one; at 90 px instead of 140 it costs a fifth)."""
    coarse, iterations = _shrunk(bgr, int(params["coarse_size"])), int(params["iterations"])
    if coarse is bgr or iterations < 2:
        return _rect_cut(bgr, params["margin"], iterations)
    height, width = bgr.shape[:2]
    labels = cv2.resize(_rect_cut(coarse, params["margin"], 1), (width, height), interpolation=cv2.INTER_NEAREST)
    cv2.setRNGSeed(0)
    cv2.grabCut(bgr, labels, None, np.zeros((1, 65)), np.zeros((1, 65)), iterations - 1, cv2.GC_INIT_WITH_MASK)
    return labels


def _graph_cut(bgr: np.ndarray, params: dict) -> np.ndarray:
    """Boolean garment pixels of a BGR photo by GrabCut, all False when GrabCut cannot model the photo.

    GrabCut's cost grows with the pixel count (84 ms at 200x150 on a 2-core Xeon, most of a prediction),
    while the model sees the garment at 28x28: with `segment_size` set, the cut runs on a copy of that
    longest side and its mask is scaled back up, still several times finer than the model input.
    """
    height, width = bgr.shape[:2]
    small = _shrunk(bgr, int(params["segment_size"]))
    try:
        labels = _cut_labels(small, params)
    except cv2.error:  # a photo with too few colours for one of the models: the caller falls back to the rectangle
        return np.zeros((height, width), bool)
    garment = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.float32)
    if small is not bgr:  # back to full size: a smooth edge, cut at half
        garment = cv2.resize(garment, (width, height), interpolation=cv2.INTER_LINEAR)
    return garment >= 0.5


def grabcut_mask(rgb: np.ndarray, params: dict, notes: list[str]) -> np.ndarray:
    """Boolean garment mask (H, W) of a float RGB photo: GrabCut from the inset rectangle, cleaned up."""
    height, width = rgb.shape[:2]
    mx, my = max(1, round(params["margin"] * width)), max(1, round(params["margin"] * height))
    garment = _graph_cut(cv2.cvtColor(_to_uint8(rgb), cv2.COLOR_RGB2BGR), params)
    radius = int(round(params["open_radius"] * max(height, width)))
    if radius >= 1 and garment.any():
        opened = cv2.morphologyEx(garment.astype(np.uint8), cv2.MORPH_OPEN, _disk(radius)).astype(bool)
        if opened.sum() >= 0.5 * garment.sum():  # thin garments (straps) survive
            garment = opened
    garment = _fill_holes(_main_part(garment))
    if garment.mean() < params["min_fraction"]:
        notes.append("no garment stood out from the background; the whole photo (minus a margin) was used")
        garment = np.zeros((height, width), bool)
        garment[my:height - my, mx:width - mx] = True
    return garment


def garment_values(rgb: np.ndarray, mask: np.ndarray, params: dict) -> tuple[np.ndarray, dict]:
    """Float (H, W) in [0, 1]: the garment negated like a Fashion-MNIST image (dark garments bright), 0 outside."""
    luma = _luma(rgb)
    outside = luma[~mask]
    background_luma = float(np.median(outside)) if outside.size else 1.0
    light = background_luma >= params["dark_background"]
    if light:  # flat-field against the background: a product photo on white, negated
        white = max(background_luma, float(np.percentile(luma[mask], 99)))
    else:      # a dark floor: the image's own bright end is "white"
        white = max(float(np.percentile(luma, 99.5)), 0.3)
    values = np.clip(1.0 - luma / white, 0.0, 1.0)
    inside = values[mask]
    reference = float(np.percentile(inside, params["stretch_percentile"])) if inside.size else 1.0
    values = np.clip(values / max(reference, 1.0 / params["max_gain"]), 0.0, 1.0)
    values = np.where(mask, np.maximum(values, params["fill"]), 0.0).astype(np.float32)
    return values, {"background_luma": round(background_luma, 4), "light_background": light}


def grabcut_photo(rgb: np.ndarray, original: np.ndarray, params: dict, canvas: tuple[int, int], channels: int,
                  notes: list[str]) -> PhotoResult:
    """The model input of a decoded photo in "grabcut" mode, with each step's image."""
    mask = grabcut_mask(rgb, params, notes)
    values, tone = garment_values(rgb, mask, params)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    cropped = values[top:bottom, left:right]
    model_gray = _to_uint8(_place(cropped, canvas, params))
    removed = np.where(mask[..., None], original, np.uint8(0))
    steps = [("original", original), ("garment found", removed), ("cropped", _to_uint8(cropped)),
             ("model input", model_gray)]
    info = {"mode": "grabcut", "passthrough": False, "inverted": True, **tone, "crop_box": [left, top, right, bottom],
            "work_size": [int(rgb.shape[1]), int(rgb.shape[0])], "garment_fraction": round(float(mask.mean()), 4),
            "notes": notes}
    return PhotoResult(_channels(model_gray, channels), steps, info)

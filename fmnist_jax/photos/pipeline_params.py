"""Parameters of the photo pipeline: defaults, allowed values, and the result type.
"""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from fmnist_jax.checks import Real, Settings, Whole, choice

MODES = ("garment", "grabcut", "resize")
CENTERS = ("bbox", "mass")


def _p(default: Any, name: str, **bounds: Any) -> Any:
    return Field(default, title=f"preprocessing '{name}'", **bounds)


class PhotoParams(Settings):
    """Parameters of the photo pipeline; a model stores its own copy (with any overrides) in model.json."""

    kind: ClassVar[str] = "preprocessing"

    # "garment": border background estimate; "grabcut": GrabCut (real photos); "resize": plain
    mode: choice(MODES) = _p("garment", "mode")
    work_size: Whole = _p(256, "work_size", ge=32, le=1024)  # longest side the photo is analysed at (px)
    # Width of the border ring that estimates the background (fraction of the short side).
    border: Real = _p(0.05, "border", ge=0.01, le=0.25)
    # Weight of colour (vs brightness) differences in the garment/background distance.
    chroma_weight: Real = _p(1.5, "chroma_weight", ge=0, le=10)
    # Gaussian sigma applied to the distance map (fraction of the long side): hides texture.
    smooth: Real = _p(0.012, "smooth", ge=0, le=0.1)
    # Background texture level = median + this many robust sigmas of the border distances.
    noise_sigmas: Real = _p(4.0, "noise_sigmas", ge=0, le=20)
    min_contrast: Real = _p(0.05, "min_contrast", ge=0, le=1)  # smallest colour distance that counts as garment
    # Opening radius (fraction of the long side): removes specks, thin threads, hanger hooks.
    open_radius: Real = _p(0.01, "open_radius", ge=0, le=0.1)
    # Closing radius: joins parts of one garment split by highlights or patterns.
    close_radius: Real = _p(0.02, "close_radius", ge=0, le=0.2)
    # On light backgrounds, pixels up to this much darker with the background's colour count half.
    shadow: Real = _p(0.4, "shadow", ge=0, le=0.9)
    # Background luminance below this is "already negative" (no inversion).
    dark_background: Real = _p(0.3, "dark_background", ge=0, le=1)
    fill: Real = _p(0.15, "fill", ge=0, le=1)  # minimum brightness inside the garment: light garments keep their shape
    # This percentile of the garment is stretched to full brightness, by at most max_gain.
    stretch_percentile: Real = _p(99.0, "stretch_percentile", ge=50, le=100)
    max_gain: Real = _p(4.0, "max_gain", ge=1, le=50)
    fit: Real = _p(1.0, "fit", ge=0.2, le=1)  # longest garment edge as a fraction of the canvas side (Fashion-MNIST: 1)
    center: choice(CENTERS) = _p("bbox", "center")  # "bbox" (Fashion-MNIST) or "mass" (MNIST)
    sharpen: Real = _p(0.5, "sharpen", ge=0, le=5)  # unsharp-mask amount after resizing (Zalando sharpened theirs)
    # GrabCut: the starting rectangle is the photo minus this fraction of each side.
    margin: Real = _p(0.03, "margin", ge=0, le=0.3)
    iterations: Whole = _p(5, "iterations", ge=1, le=20)  # GrabCut: rounds of GrabCut
    # GrabCut: longest side (px) the cut runs at, its mask scaled back to work_size (0: at work_size itself).
    segment_size: Whole = _p(0, "segment_size", ge=0, le=1024)
    # GrabCut: the first round runs at this longest side and starts the others from its mask (0: all at
    # segment_size). The first round from a rectangle costs twice a later one; coarse, it costs a quarter.
    coarse_size: Whole = _p(0, "coarse_size", ge=0, le=1024)
    # GrabCut: a garment smaller than this fraction of the photo falls back to the rectangle.
    min_fraction: Real = _p(0.01, "min_fraction", ge=0, le=0.5)


DEFAULT_PREPROCESS: dict[str, Any] = PhotoParams().to_dict()
# The real-photo mode, as models adapted to phone photos use it, chosen with bench/real_photos.py --held-out 0.2
# on the demo's held-out photos of real-photos-train: 200 px segments as well as 256 px; sharpening cost
# accuracy; and (issue 45) GrabCut's three rounds at 140 px, the first at 90 px, in a 160 px photo score as
# five rounds at 200 px did, at a third of the time (bench/NOTES.md, "Photo serving").
GRABCUT_PREPROCESS: dict[str, Any] = {"mode": "grabcut", "work_size": 160, "segment_size": 140, "coarse_size": 90,
                                      "iterations": 3, "sharpen": 0.0}


# ----------------------------------------------------------------------------- parameters

def resolve_preprocess(params: dict | None, input_shape: tuple[int, ...] = (28, 28, 1)) -> dict:
    """Defaults merged with a model's stored parameters; ValueError naming any unknown or out-of-range one."""
    params = {k: v for k, v in dict(params or {}).items() if k != "version"}
    if len(input_shape) == 3 and input_shape[2] == 3 and "mode" not in params:
        params["mode"] = "resize"  # colour datasets (CIFAR-10) are natural images, not garments on a background
    return PhotoParams.from_dict(params).to_dict()


def describe(params: dict | None, input_shape: tuple[int, ...] = (28, 28, 1)) -> str:
    """What the pipeline does to a photo with these parameters, in a sentence for the Deploy page."""
    p = resolve_preprocess(params, input_shape)
    side = f"{input_shape[0]}×{input_shape[1]}"
    if p["mode"] == "resize":
        return f"resized to {side} pixels{' in colour' if input_shape[-1] == 3 else ' in grey'}, nothing removed."
    found = ("the garment separated from its background with GrabCut" if p["mode"] == "grabcut" else
             "the background estimated from the photo's border and removed")
    return (f"{found}, cropped to the garment, turned light-on-black like Fashion-MNIST and fitted to a {side} "
            f"canvas.")

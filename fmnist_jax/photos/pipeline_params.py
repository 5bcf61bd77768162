"""Parameters of the photo pipeline: defaults, allowed values, and the result type.
"""
from __future__ import annotations

import math
from typing import Any

# Defaults of the photo pipeline; a model stores its own copy (with any overrides) in model.json.
DEFAULT_PREPROCESS: dict[str, Any] = {
    "mode": "garment",            # "garment": border background estimate; "grabcut": GrabCut (real photos); "resize": plain
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
    "margin": 0.03,               # grabcut: the starting rectangle is the photo minus this fraction of each side
    "iterations": 5,              # grabcut: rounds of GrabCut
    "min_fraction": 0.01,         # grabcut: a garment smaller than this fraction of the photo falls back to the rectangle
}
# The real-photo mode, as models adapted to phone photos use it (chosen with bench/real_photos.py on photos
# held out of real-photos-train; 200 px segments as well as 256 px, faster; sharpening cost accuracy).
GRABCUT_PREPROCESS: dict[str, Any] = {"mode": "grabcut", "work_size": 200, "sharpen": 0.0}
MODES = ("garment", "grabcut", "resize")
_CHOICES = {"mode": MODES, "center": ("bbox", "mass")}
_RANGES = {"work_size": (32, 1024), "border": (0.01, 0.25), "chroma_weight": (0.0, 10.0), "smooth": (0.0, 0.1),
           "noise_sigmas": (0.0, 20.0), "min_contrast": (0.0, 1.0), "open_radius": (0.0, 0.1),
           "close_radius": (0.0, 0.2), "shadow": (0.0, 0.9), "dark_background": (0.0, 1.0), "fill": (0.0, 1.0),
           "stretch_percentile": (50.0, 100.0), "max_gain": (1.0, 50.0), "fit": (0.2, 1.0), "sharpen": (0.0, 5.0),
           "margin": (0.0, 0.3), "iterations": (1, 20), "min_fraction": (0.0, 0.5)}


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
    resolved["iterations"] = int(resolved["iterations"])
    return resolved

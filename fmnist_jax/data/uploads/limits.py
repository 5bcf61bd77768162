"""Upload limits (local and public) and the errors a user's dataset can raise.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Callable

from fmnist_jax import public_limits, settings
from fmnist_jax.errors import UserError

Progress = Callable[[float, str], None]

MIB = 2**20
GIB = 2**30
IMAGE_SIZES = (28, 32, 48, 64)  # offered in the UI; any size from MIN_IMAGE_SIZE to MAX_IMAGE_SIZE works
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 256
DEFAULT_IMAGE_SIZE = 32  # photos of mixed sizes; same-size small images keep their own size
COLORS = ("gray", "rgb")
MIN_CLASSES, MAX_CLASSES = 2, 100
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "validation", "valid": "validation",
                 "validation": "validation", "test": "test", "testing": "test"}
CLASS_LIST_FILES = ("classes.txt", "class_names.txt", "labels.txt")
JUNK = re.compile(r"(^|/)(__MACOSX|\.[^/]*|Thumbs\.db|desktop\.ini)(/|$)", re.IGNORECASE)
IDX_NAME = re.compile(r"(train|t10k|test)-(images|labels)[.-]idx([13])-ubyte(\.gz)?$", re.IGNORECASE)
MAX_SKIPPED_LISTED = 50


class UploadError(UserError):
    """An upload that cannot be used, with a message that says what to change."""


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be; everything but the image headers is checked before any member is read."""

    max_archive_bytes: int
    max_files: int
    max_uncompressed_bytes: int
    max_member_bytes: int
    max_ratio: float
    max_image_pixels: int
    max_total_pixels: int
    max_output_bytes: int

    def describe(self) -> list[str]:
        """Human-readable lines for the Data page."""
        return [f"archive or file up to {_size(self.max_archive_bytes)}",
                f"up to {self.max_files:,} files, {_size(self.max_uncompressed_bytes)} uncompressed",
                f"each image up to {self.max_image_pixels / 1e6:,.0f} megapixels, "
                f"{self.max_total_pixels / 1e9:,.0f} gigapixels in all",
                f"converted arrays up to {_size(self.max_output_bytes)}",
                f"{MIN_CLASSES} to {MAX_CLASSES} classes, images resized to {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE} px"]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


# Local mode takes real-world datasets: a 1 GB+ archive of 100,000+ photos of any size (up to the
# photo pipeline's own 50-megapixel cap, predict.MAX_PIXELS, which covers 48 MP phone cameras).
LOCAL_LIMITS = UploadLimits(max_archive_bytes=4 * GIB, max_files=250_000, max_uncompressed_bytes=16 * GIB,
                            max_member_bytes=2 * GIB, max_ratio=200.0, max_image_pixels=50_000_000,
                            max_total_pixels=1_500_000_000_000, max_output_bytes=6 * GIB)
# A public Space shares a small machine between strangers.
PUBLIC_LIMITS = UploadLimits(max_archive_bytes=100 * MIB, max_files=20_000, max_uncompressed_bytes=1 * GIB,
                             max_member_bytes=256 * MIB, max_ratio=100.0, max_image_pixels=40_000_000,
                             max_total_pixels=2_000_000_000, max_output_bytes=512 * MIB)
# Files uploaded through the browser (Streamlit keeps them in memory): the one browser upload limit, in MB.
# Local: BROWSER_UPLOAD_MB, which .streamlit/config.toml's server.maxUploadSize repeats; public: the Space's
# upload_cap_mb (FMNIST_PUBLIC_UPLOAD_MB, default 100), which the Dockerfile's STREAMLIT_SERVER_MAX_UPLOAD_SIZE
# repeats; tests/test_uploads.py checks that the three places agree. Larger datasets are imported by path
# (the Data page's folder box, the CLI) up to LOCAL_LIMITS.max_archive_bytes.
BROWSER_UPLOAD_MB = 500
# Members this small may compress well (a blank image) without being a bomb; the totals still apply.
RATIO_EXEMPT_BYTES = 1 * MIB


def limits_for_mode(public: bool | None = None) -> UploadLimits:
    """PUBLIC_LIMITS (archive cap from public.py's setting) in public mode, LOCAL_LIMITS otherwise."""
    if public is None:
        public = settings.public_mode()
    if not public:
        return LOCAL_LIMITS
    return replace(PUBLIC_LIMITS, max_archive_bytes=min(PUBLIC_LIMITS.max_archive_bytes, public_limits.upload_cap_bytes()))


def browser_upload_mb(public: bool | None = None) -> int:
    """The browser upload limit in MB for this mode (see BROWSER_UPLOAD_MB)."""
    if public is None:
        public = settings.public_mode()
    if not public:
        return BROWSER_UPLOAD_MB
    return int(public_limits.limits().upload_cap_mb)


def browser_limits(public: bool | None = None) -> UploadLimits:
    """limits_for_mode with the archive cap lowered to the browser upload limit (files sent through the page)."""
    limits = limits_for_mode(public)
    return replace(limits, max_archive_bytes=min(limits.max_archive_bytes, browser_upload_mb(public) * MIB))


def _size(n: float) -> str:
    return f"{n / GIB:,.1f} GB" if n >= GIB else f"{n / MIB:,.0f} MB"

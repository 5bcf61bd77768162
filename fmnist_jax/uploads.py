"""Bring-your-own datasets: class-folder zips, Kaggle or DLS CSV, .npz, IDX files -> the workspace cache.

An upload is checked against stated limits before anything is decoded: the archive's size, member
count, declared uncompressed sizes and compression ratios (zip bombs) and member paths (`../`,
absolute, symlinks) from its central directory; then every image's header for its pixel count. It is
converted once, with `prepare_image` (the resize the photo pipeline applies at prediction time), into
the same .npy cache TFDS datasets use, as "upload/<id>" with a manifest of hashes, so
`data.load_dataset("upload/<id>")` loads it like Fashion-MNIST. Nothing is ever unpickled or extracted
to disk: members are read into memory one at a time.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, Iterator

import numpy as np

from . import data, settings, store

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


class UploadError(ValueError):
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
# Members this small may compress well (a blank image) without being a bomb; the totals still apply.
RATIO_EXEMPT_BYTES = 1 * MIB


def limits_for_mode(public: bool | None = None) -> UploadLimits:
    """PUBLIC_LIMITS (archive cap from public.py's setting) in public mode, LOCAL_LIMITS otherwise."""
    if public is None:
        public = settings.public_mode()
    if not public:
        return LOCAL_LIMITS
    from . import public as public_mode

    return replace(PUBLIC_LIMITS, max_archive_bytes=min(PUBLIC_LIMITS.max_archive_bytes, public_mode.upload_cap_bytes()))


def _size(n: float) -> str:
    return f"{n / GIB:,.1f} GB" if n >= GIB else f"{n / MIB:,.0f} MB"


# ----------------------------------------------------------------------------- the image pipeline

# The Deploy page's photo pipeline (predict.preprocess_photo) in its plain-resize mode: what a model
# trained on an upload is given at prediction time, so training images go through exactly the same code.
PREPROCESS = {"mode": "resize"}


def prepare_image(payload: bytes, size: int, color: str) -> np.ndarray:
    """Image file bytes -> uint8 (size, size, 1|3) exactly as predict.preprocess_photo prepares a photo for this model.

    Raises predict.ImageError (a ValueError) with the pipeline's own message for unusable images.
    """
    from . import predict

    _check_options(size, color)
    shape = (size, size, 1 if color == "gray" else 3)
    return predict.preprocess_photo(payload, PREPROCESS, shape).model_input


def _png_bytes(pixels: np.ndarray) -> bytes:
    """Lossless, fast PNG encoding of one uint8 (H, W, C) array, so arrays enter the same pipeline as files."""
    from PIL import Image

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def _check_options(image_size: int | None, color: str | None) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                                   or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE):
        raise UploadError(f"image size must be a whole number from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels, "
                          f"got {image_size!r}")
    if color is not None and color not in COLORS:
        raise UploadError(f"colour must be 'gray' or 'rgb', got {color!r}")


# ----------------------------------------------------------------------------- sources (zip, folder, file)

@dataclass
class Member:
    """One file of an upload: its path inside the upload (root folder stripped) and its sizes."""

    name: str
    size: int
    compressed: int
    key: Any  # ZipInfo or filesystem Path


class Source:
    """The files of an upload, readable one at a time within the limits."""

    def __init__(self, label: str, members: list[Member], limits: UploadLimits):
        self.label = label
        self.members = members
        self.limits = limits

    def open(self, member: Member) -> IO[bytes]:
        """A binary stream of one member (at most its declared size)."""
        raise NotImplementedError

    def read(self, member: Member) -> bytes:
        """All bytes of one member (refused if larger than max_member_bytes)."""
        if member.size > self.limits.max_member_bytes:
            raise UploadError(f"{member.name} is {_size(member.size)}; one file may be at most "
                              f"{_size(self.limits.max_member_bytes)}")
        with self.open(member) as stream:
            payload = stream.read(self.limits.max_member_bytes + 1)
        if len(payload) > self.limits.max_member_bytes:
            raise UploadError(f"{member.name} is larger than {_size(self.limits.max_member_bytes)}")
        return payload

    def close(self) -> None:
        """Release the archive."""


class ZipSource(Source):
    """A zip archive, read member by member from its central directory."""

    def __init__(self, label: str, archive: zipfile.ZipFile, members: list[Member], limits: UploadLimits):
        super().__init__(label, members, limits)
        self.archive = archive

    def open(self, member: Member) -> IO[bytes]:
        try:
            return self.archive.open(member.key)
        except NotImplementedError as error:
            raise UploadError(f"{member.name} uses a compression method this reader lacks ({error}); "
                              f"re-create the zip with standard (deflate) compression") from None

    def close(self) -> None:
        self.archive.close()


class FolderSource(Source):
    """A folder on disk (CLI and local use); symlinks must stay inside it."""

    def open(self, member: Member) -> IO[bytes]:
        return open(member.key, "rb")


def _member_path_problem(name: str) -> str | None:
    """Why an archive member's path is unsafe (absolute, drive letter, '..', NUL), or None."""
    if "\x00" in name:
        return "contains a NUL character"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return "is an absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "climbs out of the archive with '..'"
    return None


def open_zip(path: Path, label: str, limits: UploadLimits) -> ZipSource:
    """Open and vet a zip from its central directory alone (sizes, count, ratio, paths, links, encryption)."""
    try:
        archive = zipfile.ZipFile(path)
        infos = archive.infolist()
    except zipfile.BadZipFile as error:
        raise UploadError(f"{label} is not a readable zip archive ({error}); re-create it with a standard zip tool") from None
    except (OSError, EOFError, ValueError) as error:
        raise UploadError(f"{label} is damaged ({error}); re-create the archive") from None
    try:
        if len(infos) > limits.max_files:
            raise UploadError(f"{label} holds {len(infos):,} files; the limit is {limits.max_files:,} "
                              f"(split the dataset or use fewer images per class)")
        archive_bytes = max(1, path.stat().st_size)
        total = 0
        members = []
        for info in infos:
            problem = _member_path_problem(info.filename)
            if problem:
                raise UploadError(f"{label} is refused: member {info.filename[:200]!r} {problem}")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UploadError(f"{label} is refused: member {info.filename[:200]!r} is a symbolic link; "
                                  f"zip the files themselves")
            if info.flag_bits & 0x1:
                raise UploadError(f"{label} is encrypted ({info.filename[:200]!r}); upload an archive without a password")
            total += info.file_size
            if info.file_size > RATIO_EXEMPT_BYTES and info.file_size > limits.max_ratio * max(1, info.compress_size):
                raise UploadError(f"{label} is refused as a likely zip bomb: {info.filename[:200]!r} expands "
                                  f"{info.file_size / max(1, info.compress_size):,.0f}x (limit {limits.max_ratio:,.0f}x)")
            if info.is_dir():
                continue
            members.append(Member(info.filename.replace("\\", "/"), info.file_size, info.compress_size, info))
        if total > limits.max_uncompressed_bytes:
            raise UploadError(f"{label} expands to {_size(total)}; the limit is {_size(limits.max_uncompressed_bytes)}")
        if total > RATIO_EXEMPT_BYTES and total > limits.max_ratio * archive_bytes:
            raise UploadError(f"{label} is refused as a likely zip bomb: it expands {total / archive_bytes:,.0f}x "
                              f"(limit {limits.max_ratio:,.0f}x)")
    except BaseException:
        archive.close()
        raise
    return ZipSource(label, archive, members, limits)


def open_folder(path: Path, limits: UploadLimits) -> FolderSource:
    """List a folder's files (not following links out of it) within the limits."""
    root = path.resolve()
    members: list[Member] = []
    total = 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            file_path = Path(folder) / name
            if file_path.is_symlink() and root not in file_path.resolve().parents:
                raise UploadError(f"{file_path.relative_to(root)} links outside the dataset folder; copy the file in instead")
            size = file_path.stat().st_size
            total += size
            members.append(Member(file_path.relative_to(root).as_posix(), size, size, file_path))
            if len(members) > limits.max_files:
                raise UploadError(f"{path.name} holds more than {limits.max_files:,} files; the limit is {limits.max_files:,}")
    if total > limits.max_archive_bytes:
        raise UploadError(f"{path.name} holds {_size(total)}; the limit is {_size(limits.max_archive_bytes)}")
    return FolderSource(path.name, members, limits)


def open_source(path: Path, limits: UploadLimits) -> Source:
    """A zip (or .npz), a folder, or a single CSV/IDX file as a Source, vetted against the limits."""
    if path.is_dir():
        return open_folder(path, limits)
    if not path.is_file():
        raise UploadError(f"{path} does not exist or is not a file")
    size = path.stat().st_size
    if size == 0:
        raise UploadError(f"{path.name} is empty (0 bytes); upload the dataset file again")
    if size > limits.max_archive_bytes:
        raise UploadError(f"{path.name} is {_size(size)}; the upload limit is {_size(limits.max_archive_bytes)}")
    with open(path, "rb") as stream:
        magic = stream.read(4)
    if magic[:2] == b"PK":
        return open_zip(path, path.name, limits)
    suffix = path.name.lower()
    if suffix.endswith((".csv", ".gz", "-ubyte", ".ubyte")) or IDX_NAME.search(path.name):
        return FolderSource(path.name, [Member(path.name, size, size, path)], limits)
    if suffix.endswith(".zip") or suffix.endswith(".npz"):
        raise UploadError(f"{path.name} is not a zip archive (its first bytes are {magic!r}); upload the original file")
    raise UploadError(f"{path.name}: unsupported upload; use a .zip of class folders, a .csv (label,pixel1,...), "
                      f"an .npz with x_train and y_train, or the four IDX *-ubyte files")


def _useful(members: list[Member]) -> list[Member]:
    """Members without OS junk (__MACOSX, dot files), with a single common root folder stripped."""
    kept = [m for m in members if not JUNK.search(m.name)]
    # Strip only while every file stays inside a folder, so "cat/1.png" alone keeps its class folder.
    while kept and all(m.name.count("/") >= 2 for m in kept):
        first = kept[0].name.split("/", 1)[0]
        if not all(m.name.split("/", 1)[0] == first for m in kept):
            break
        kept = [Member(m.name.split("/", 1)[1], m.size, m.compressed, m.key) for m in kept]
    return kept


# ----------------------------------------------------------------------------- labels and arrays

def _class_list(source: Source, members: list[Member]) -> tuple[str, ...] | None:
    """Class names from a classes.txt (one per line), the one nearest the upload's root, if there is one."""
    for member in sorted(members, key=lambda m: m.name.count("/")):
        if member.name.rsplit("/", 1)[-1].lower() in CLASS_LIST_FILES:
            text = source.read(member).decode("utf-8", errors="replace")
            return tuple(_clean_class(line.strip(), member.name) for line in text.splitlines() if line.strip())
    return None


def _clean_class(name: str, where: str) -> str:
    try:
        return store.clean_name(name, f"class name {name[:40]!r} in {where}")
    except ValueError as error:
        raise UploadError(str(error)) from None


def _labels_to_indices(labels: list[str] | np.ndarray, where: str, names: tuple[str, ...] | None,
                       known: tuple[str, ...] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels (whole numbers 0..K-1, or class-name strings) -> int32 indices and the class names."""
    values = [str(v).strip() for v in labels]
    numeric = all(re.fullmatch(r"[+-]?\d+(\.0*)?", v) for v in values)
    if not numeric and all(_is_number(v) for v in values):
        row = next(i for i, v in enumerate(values) if not re.fullmatch(r"[+-]?\d+(\.0*)?", v))
        raise UploadError(f"{where}: label {values[row]!r} in row {row + 1} is not a whole number; "
                          f"labels are class numbers 0, 1, 2, ... or class names")
    if known is not None and not numeric:
        index = {name: i for i, name in enumerate(known)}
        unknown = sorted({v for v in values if v not in index})
        if unknown:
            raise UploadError(f"{where} has labels {', '.join(map(repr, unknown[:5]))} that the training data lacks")
        return np.array([index[v] for v in values], np.int32), known
    if numeric:
        ints = np.array([int(float(v)) for v in values], np.int64)
        if len(ints) and ints.min() < 0:
            row = int(np.argmin(ints))
            raise UploadError(f"{where}: label {ints[row]} in row {row + 1} is negative; labels must be 0, 1, 2, ...")
        names = names or known
        count = len(names) if names else (int(ints.max()) + 1 if len(ints) else 0)
        if len(ints) and ints.max() >= count:
            row = int(np.argmax(ints))
            raise UploadError(f"{where}: label {ints[row]} in row {row + 1} is out of range; "
                              f"there are {count} class names, so labels must be 0 to {count - 1}")
        if count > MAX_CLASSES:
            raise UploadError(f"{where}: labels go up to {count - 1}, that is {count} classes; the limit is {MAX_CLASSES}")
        return ints.astype(np.int32), names or tuple(str(i) for i in range(count))
    for v in values:
        if not v:
            raise UploadError(f"{where} has an empty label; every row needs a class")
    classes = tuple(sorted(set(values)))
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[v] for v in values], np.int32), tuple(_clean_class(c, where) for c in classes)


def _check_classes(labels: np.ndarray, names: tuple[str, ...], where: str) -> None:
    """At least two classes, at most MAX_CLASSES, none without training examples."""
    if len(names) < MIN_CLASSES:
        raise UploadError(f"{where} has {len(names)} class ({', '.join(names) or 'none'}); "
                          f"a classifier needs at least {MIN_CLASSES} classes")
    if len(names) > MAX_CLASSES:
        raise UploadError(f"{where} has {len(names)} classes; the limit is {MAX_CLASSES}")
    counts = np.bincount(labels, minlength=len(names))
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise UploadError(f"class {empty[0]!r} has no training images{f' (and {len(empty) - 1} more)' if len(empty) > 1 else ''}; "
                          f"add images or remove the class")


def _as_image_array(array: np.ndarray, where: str) -> np.ndarray:
    """(N,H,W), (N,H,W,C) or (N,C,H,W) numbers -> uint8 (N,H,W,C); floats in 0-1 are scaled to 0-255."""
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[3] not in (1, 3, 4):
        array = array.transpose(0, 2, 3, 1)  # channels-first (PyTorch style)
    if array.ndim != 4 or array.shape[3] not in (1, 3, 4) or min(array.shape[1:3], default=0) < 1:
        raise UploadError(f"{where} has shape {array.shape}; images must be (count, height, width) or "
                          f"(count, height, width, 1|3|4 channels)")
    if len(array) == 0:
        raise UploadError(f"{where} holds no images")
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if not np.issubdtype(array.dtype, np.number):
        raise UploadError(f"{where} holds {array.dtype} values; images must be numbers")
    values = np.asarray(array, dtype=np.float64)
    if not np.isfinite(values).all():
        raise UploadError(f"{where} contains NaN or infinite pixel values")
    low, high = values.min(), values.max()
    if low < 0 or high > 255:
        raise UploadError(f"{where} has pixel values from {low:g} to {high:g}; they must lie in 0-255 (or 0-1)")
    if np.issubdtype(array.dtype, np.floating) and high <= 1.0:
        values = values * 255.0
    return np.round(values).astype(np.uint8)


def _convert_arrays(images: np.ndarray, size: int, color: str, progress: Progress, start: float, end: float,
                    part: str) -> np.ndarray:
    """Arrays already at the target size and colour pass through; others go through prepare_image one by one."""
    channels = 1 if color == "gray" else 3
    if images.shape[1:] == (size, size, channels):
        return np.ascontiguousarray(images)
    out = np.empty((len(images), size, size, channels), np.uint8)
    step = max(1, len(images) // 50)
    for i, pixels in enumerate(images):
        try:
            out[i] = prepare_image(_png_bytes(pixels), size, color)
        except ValueError as error:
            raise UploadError(f"{part} image {i + 1}: {error}") from None
        if i % step == 0:
            progress(start + (end - start) * i / len(images), f"converting {part} images {i:,}/{len(images):,}")
    return out


@dataclass
class Parts:
    """Converted arrays of each split the upload provides, before class checks."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray] | None
    class_names: tuple[str, ...]
    image_size: int
    color: str
    skipped: list[dict]
    format: str = ""


def _default_options(shapes: list[tuple[int, ...]], image_size: int | None, color: str | None,
                     channels: list[int]) -> tuple[int, str]:
    """Same-size square images up to 64 px keep their size, others get DEFAULT_IMAGE_SIZE; colour follows the data."""
    if image_size is None:
        sizes = {tuple(s[:2]) for s in shapes}
        only = next(iter(sizes)) if len(sizes) == 1 else None
        image_size = only[0] if only and only[0] == only[1] and MIN_IMAGE_SIZE <= only[0] <= 64 else DEFAULT_IMAGE_SIZE
    if color is None:
        color = "gray" if all(c == 1 for c in channels) else "rgb"
    return int(image_size), color


def _check_pixels(count: int, height: int, width: int, where: str, limits: UploadLimits) -> None:
    total = count * height * width
    if total > limits.max_total_pixels:
        raise UploadError(f"{where} declares {count:,} images of {width}x{height}, {total / 1e9:,.1f} gigapixels; "
                          f"the limit is {limits.max_total_pixels / 1e9:,.1f}")


def _check_output(count: int, size: int, color: str, limits: UploadLimits) -> None:
    total = count * size * size * (1 if color == "gray" else 3)
    if total > limits.max_output_bytes:
        raise UploadError(f"{count:,} images at {size}x{size} {color} would take {_size(total)}; the limit is "
                          f"{_size(limits.max_output_bytes)}: choose a smaller image size or grayscale")


# ----------------------------------------------------------------------------- format: IDX

def _read_idx(source: Source, member: Member, limits: UploadLimits, want_ndim: int) -> np.ndarray:
    """An IDX file (optionally gzipped): header checked against the limits before its data is read."""
    with source.open(member) as raw:
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if member.name.lower().endswith(".gz") else raw
        try:
            header = stream.read(4)
            if len(header) < 4 or header[:2] != b"\x00\x00" or header[2] != 0x08:
                raise UploadError(f"{member.name} is not an IDX file of unsigned bytes (bad header {header!r})")
            ndim = header[3]
            if ndim != want_ndim:
                raise UploadError(f"{member.name} has {ndim} dimensions; expected {want_ndim} "
                                  f"({'images' if want_ndim == 3 else 'labels'})")
            dims = np.frombuffer(stream.read(4 * ndim), dtype=">u4").astype(np.int64)
            if len(dims) != ndim:
                raise UploadError(f"{member.name} is truncated inside its header")
            if ndim == 3:
                _check_pixels(int(dims[0]), int(dims[1]), int(dims[2]), member.name, limits)
            expected = int(np.prod(dims))
            if expected > limits.max_member_bytes:
                raise UploadError(f"{member.name} declares {_size(expected)} of data; the limit is {_size(limits.max_member_bytes)}")
            payload = stream.read(expected)
        except (OSError, EOFError, zipfile.BadZipFile) as error:
            raise UploadError(f"{member.name} is damaged ({error})") from None
    if len(payload) < expected:
        raise UploadError(f"{member.name} is truncated: its header promises {expected:,} bytes, it holds {len(payload):,}")
    return np.frombuffer(payload, np.uint8).reshape(tuple(int(d) for d in dims))


def _parse_idx(source: Source, members: list[Member], image_size: int | None, color: str | None,
               limits: UploadLimits, progress: Progress) -> Parts:
    found: dict[tuple[str, str], Member] = {}
    for member in members:
        match = IDX_NAME.search(member.name.rsplit("/", 1)[-1])
        if match:
            part = "train" if match.group(1).lower() == "train" else "test"
            key = (part, match.group(2).lower())
            if key in found:
                raise UploadError(f"two {part} {key[1]} files ({found[key].name}, {member.name}); keep one of each")
            found[key] = member
    for part in ("train", "test"):
        have = [kind for kind in ("images", "labels") if (part, kind) in found]
        if part == "train" and len(have) < 2 or len(have) == 1:
            missing = [f"{part}-{kind}" for kind in ("images", "labels") if (part, kind) not in found]
            raise UploadError(f"IDX upload lacks {', '.join(missing)} (need train-images-idx3-ubyte and "
                              f"train-labels-idx1-ubyte, optionally t10k-images/t10k-labels)")
    names = _class_list(source, members)
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part in ("train", "test"):
        if (part, "images") not in found:
            continue
        progress(0.1 if part == "train" else 0.5, f"reading {part} IDX files")
        images = _read_idx(source, found[(part, "images")], limits, 3)
        labels = _read_idx(source, found[(part, "labels")], limits, 1)
        if len(labels) != len(images):
            raise UploadError(f"{found[(part, 'images')].name} has {len(images):,} images but "
                              f"{found[(part, 'labels')].name} has {len(labels):,} labels")
        arrays[part] = (images[..., None], labels)
    return _finish_arrays(arrays, names, image_size, color, limits, progress)


def _finish_arrays(arrays: dict[str, tuple[np.ndarray, np.ndarray]], names: tuple[str, ...] | None,
                   image_size: int | None, color: str | None, limits: UploadLimits, progress: Progress) -> Parts:
    """Shared tail of the array formats: labels -> indices, size/colour defaults, conversion."""
    train_labels, names = _labels_to_indices(arrays["train"][1], "training labels", names)
    converted_labels = {"train": train_labels}
    for part in ("validation", "test"):
        if part in arrays:
            converted_labels[part], _ = _labels_to_indices(arrays[part][1], f"{part} labels", None, known=names)
    shapes = [arrays[p][0].shape[1:] for p in arrays]
    size, color = _default_options(shapes, image_size, color, [s[2] for s in shapes])
    _check_output(sum(len(arrays[p][0]) for p in arrays), size, color, limits)
    out = {}
    for i, part in enumerate(arrays):
        images = _convert_arrays(arrays[part][0], size, color, progress, 0.2 + 0.25 * i, 0.45 + 0.25 * i, part)
        out[part] = (images, converted_labels[part])
    return Parts(out["train"], out.get("validation"), out.get("test"), names, size, color, [])


# ----------------------------------------------------------------------------- format: npz

NPZ_KEYS = {"train": (("x_train", "y_train"), ("train_images", "train_labels")),
            "validation": (("x_val", "y_val"), ("x_valid", "y_valid"), ("val_images", "val_labels")),
            "test": (("x_test", "y_test"), ("test_images", "test_labels"))}


def _read_npy(stream: IO[bytes], where: str, limits: UploadLimits) -> np.ndarray:
    """One .npy array; its header is checked (no objects, size within limits) before the data is read."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(stream)
        if version not in readers:
            raise ValueError(f"format version {version} is not supported; save it with numpy's np.savez")
        shape, fortran, dtype = readers[version](stream)  # the header only (numpy caps its size), no data
    except (ValueError, OSError, EOFError, SyntaxError) as error:
        raise UploadError(f"{where} is not a valid .npy array ({error})") from None
    if dtype.hasobject:
        raise UploadError(f"{where} holds Python objects, which would need pickle; save plain number arrays "
                          f"(np.savez with uint8 images and integer labels)")
    count = int(np.prod(shape)) if shape else 1
    if count * dtype.itemsize > limits.max_member_bytes:
        raise UploadError(f"{where} declares {_size(count * dtype.itemsize)}; the limit is {_size(limits.max_member_bytes)}")
    if len(shape) >= 3:
        _check_pixels(int(shape[0]), int(shape[1]), int(shape[2]), where, limits)
    payload = stream.read(count * dtype.itemsize)
    if len(payload) < count * dtype.itemsize:
        raise UploadError(f"{where} is truncated: {len(payload):,} of {count * dtype.itemsize:,} bytes")
    array = np.frombuffer(payload, dtype=dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def _parse_npz(source: Source, members: list[Member], image_size: int | None, color: str | None,
               limits: UploadLimits, progress: Progress) -> Parts:
    npz_members = [m for m in members if m.name.lower().endswith(".npz")]
    if len(npz_members) > 1:
        raise UploadError(f"the upload holds {len(npz_members)} .npz files; upload one")
    if npz_members:  # an .npz inside a zip: vet it as an archive of its own
        payload = source.read(npz_members[0])
        try:
            inner = zipfile.ZipFile(io.BytesIO(payload))
        except zipfile.BadZipFile as error:
            raise UploadError(f"{npz_members[0].name} is not a valid .npz ({error})") from None
        inner_source = _vetted_inner_zip(inner, npz_members[0].name, limits)
        return _parse_npz(inner_source, inner_source.members, image_size, color, limits, progress)
    arrays_by_name = {m.name.rsplit("/", 1)[-1][:-4]: m for m in members if m.name.lower().endswith(".npy")}
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part, candidates in NPZ_KEYS.items():
        for x_key, y_key in candidates:
            if x_key in arrays_by_name or y_key in arrays_by_name:
                if x_key not in arrays_by_name or y_key not in arrays_by_name:
                    raise UploadError(f".npz has {x_key if x_key in arrays_by_name else y_key} without "
                                      f"{y_key if x_key in arrays_by_name else x_key}; images and labels come in pairs")
                progress(0.1, f"reading {x_key}")
                with source.open(arrays_by_name[x_key]) as stream:
                    images = _as_image_array(_read_npy(stream, f"{x_key} in {source.label}", limits), x_key)
                with source.open(arrays_by_name[y_key]) as stream:
                    labels = _read_npy(stream, f"{y_key} in {source.label}", limits)
                labels = labels.reshape(-1) if labels.ndim == 2 and 1 in labels.shape else labels
                if labels.ndim != 1 or len(labels) != len(images):
                    raise UploadError(f"{y_key} has shape {labels.shape}; it needs one label per image in "
                                      f"{x_key} ({len(images):,})")
                if labels.dtype.kind == "f" and not np.isfinite(labels).all():
                    raise UploadError(f"{y_key} contains NaN or infinite labels")
                arrays[part] = (images, labels)
                break
    if "train" not in arrays:
        raise UploadError(f"{source.label} lacks x_train and y_train (found: {', '.join(sorted(arrays_by_name)) or 'nothing'})")
    names = None
    for key in ("class_names", "classes", "label_names"):
        if key in arrays_by_name:
            with source.open(arrays_by_name[key]) as stream:
                listed = _read_npy(stream, f"{key} in {source.label}", limits)
            if listed.dtype.kind not in "US" or listed.ndim != 1:
                raise UploadError(f"{key} must be a 1-D array of text, got {listed.dtype} {listed.shape}")
            names = tuple(_clean_class(str(n.decode() if isinstance(n, bytes) else n), key) for n in listed)
            break
    names = names or _class_list(source, members)
    return _finish_arrays(arrays, names, image_size, color, limits, progress)


def _vetted_inner_zip(inner: zipfile.ZipFile, label: str, limits: UploadLimits) -> ZipSource:
    """The same central-directory checks as open_zip, for an archive held in memory."""
    members = []
    total = 0
    infos = inner.infolist()
    if len(infos) > limits.max_files:
        raise UploadError(f"{label} holds {len(infos):,} arrays; the limit is {limits.max_files:,}")
    for info in infos:
        problem = _member_path_problem(info.filename)
        if problem or stat.S_ISLNK(info.external_attr >> 16):
            raise UploadError(f"{label} is refused: member {info.filename[:200]!r} {problem or 'is a symbolic link'}")
        total += info.file_size
        if info.file_size > RATIO_EXEMPT_BYTES and info.file_size > limits.max_ratio * max(1, info.compress_size):
            raise UploadError(f"{label} is refused as a likely zip bomb: {info.filename!r} expands "
                              f"{info.file_size / max(1, info.compress_size):,.0f}x")
        if not info.is_dir():
            members.append(Member(info.filename, info.file_size, info.compress_size, info))
    if total > limits.max_uncompressed_bytes:
        raise UploadError(f"{label} expands to {_size(total)}; the limit is {_size(limits.max_uncompressed_bytes)}")
    return ZipSource(label, inner, members, limits)


# ----------------------------------------------------------------------------- format: CSV

LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "y")
PATH_COLUMNS = ("image", "images", "img", "file", "filename", "file_name", "path", "image_path", "filepath", "image_id", "id")


def _csv_role(name: str) -> str:
    base = name.rsplit("/", 1)[-1].lower()
    if "test" in base:
        return "test"
    if "val" in base:
        return "validation"
    return "train"


def _csv_rows(source: Source, member: Member) -> Iterator[list[str]]:
    with source.open(member) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        yield from csv.reader(text)


def _csv_header(source: Source, member: Member) -> list[str]:
    try:
        return next(_csv_rows(source, member))
    except StopIteration:
        raise UploadError(f"{member.name} is empty; it needs a header and one row per image") from None
    except csv.Error as error:
        raise UploadError(f"{member.name} is not valid CSV ({error})") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _parse_csv(source: Source, members: list[Member], image_size: int | None, color: str | None,
               limits: UploadLimits, progress: Progress) -> Parts:
    csvs = [m for m in members if m.name.lower().endswith(".csv")]
    roles: dict[str, Member] = {}
    for member in csvs:
        role = _csv_role(member.name)
        if role in roles:
            raise UploadError(f"two {role} CSV files ({roles[role].name}, {member.name}); keep one per split")
        roles[role] = member
    if "train" not in roles:
        raise UploadError(f"no training CSV found among {', '.join(m.name for m in csvs)}; name it train.csv")
    header = _csv_header(source, roles["train"])
    lowered = [h.strip().lower() for h in header]
    if any(c in PATH_COLUMNS for c in lowered) and len(header) < 10:
        return _parse_dls_csv(source, members, roles, image_size, color, limits, progress)
    names = _class_list(source, members)
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for part, member in roles.items():
        parsed = _read_pixel_csv(source, member, limits, progress)
        if parsed is None:
            continue
        arrays[part] = parsed
    return _finish_arrays(arrays, names, image_size, color, limits, progress)


def _read_pixel_csv(source: Source, member: Member, limits: UploadLimits,
                    progress: Progress) -> tuple[np.ndarray, np.ndarray] | None:
    """Kaggle form: a label column and N pixel columns (N = side^2 or 3*side^2); None if it has no labels."""
    header = _csv_header(source, member)
    has_header = not all(_is_number(h) for h in header)
    lowered = [h.strip().lower() for h in header]
    if has_header:
        label_columns = [i for i, h in enumerate(lowered) if h in LABEL_COLUMNS]
        if not label_columns:
            if _csv_role(member.name) == "test":
                return None  # e.g. Kaggle's unlabelled test.csv: nothing to evaluate against
            raise UploadError(f"{member.name} has no 'label' column; the header must be label,pixel1,...,pixelN")
        label_col = label_columns[0]
    else:
        label_col = 0
    pixel_count = len(header) - 1
    channels = 3 if pixel_count % 3 == 0 and round((pixel_count // 3) ** 0.5) ** 2 == pixel_count // 3 \
        and round(pixel_count ** 0.5) ** 2 != pixel_count else 1
    side = round((pixel_count // channels) ** 0.5)
    if pixel_count < 1 or side * side * channels != pixel_count:
        raise UploadError(f"{member.name} has {pixel_count} pixel columns; that is not a square image "
                          f"(28x28 needs 784, 32x32 RGB needs 3072)")
    rows_estimate = member.size // max(1, 2 * pixel_count)
    _check_pixels(rows_estimate, side, side, member.name, limits)
    progress(0.1, f"reading {member.name}")
    try:
        with source.open(member) as raw, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": reported below as a clear error
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace")
            table = np.loadtxt(text, delimiter=",", skiprows=1 if has_header else 0, dtype=np.float32, ndmin=2,
                               usecols=[i for i in range(len(header)) if i != label_col])
    except ValueError:
        raise UploadError(_describe_csv_problem(source, member, header, has_header, label_col)) from None
    if table.shape[0] == 0:
        raise UploadError(f"{member.name} has a header but no rows")
    rows = [row for row in _csv_rows(source, member) if any(cell.strip() for cell in row)]
    if any(len(row) != len(header) for row in rows):  # loadtxt's usecols would silently drop extra values
        raise UploadError(_describe_csv_problem(source, member, header, has_header, label_col))
    labels = [row[label_col] for i, row in enumerate(rows) if i > 0 or not has_header]
    if len(labels) != len(table):
        raise UploadError(f"{member.name} has {len(labels):,} labels for {len(table):,} rows of pixels; check for quoted line breaks")
    if np.isnan(table).any():
        row, col = np.argwhere(np.isnan(table))[0]
        raise UploadError(f"{member.name} row {row + 1}: pixel column {col + 1} is empty or not a number")
    low, high = float(table.min()), float(table.max())
    if low < 0 or high > 255:
        row = int(np.argwhere((table < 0) | (table > 255))[0][0])
        raise UploadError(f"{member.name} row {row + 1}: pixel values must be 0-255, found {low:g} to {high:g}")
    if high <= 1.0 and not np.array_equal(table, np.round(table)):
        table = table * 255.0  # pixels given as fractions 0-1
    images = np.round(table).astype(np.uint8)
    images = images.reshape(len(images), side, side, channels) if channels == 3 else images.reshape(len(images), side, side, 1)
    return images, np.asarray(labels)


def _describe_csv_problem(source: Source, member: Member, header: list[str], has_header: bool, label_col: int) -> str:
    """Find the first row that breaks the pixel-CSV form and say what is wrong with it."""
    for line, row in enumerate(_csv_rows(source, member), start=1):
        if line == 1 and has_header:
            continue
        if len(row) != len(header):
            return (f"{member.name} line {line} has {len(row)} values but the header has {len(header)} columns; "
                    f"every row needs a label and {len(header) - 1} pixels")
        for col, value in enumerate(row):
            if col != label_col and not _is_number(value):
                name = header[col] if has_header else f"column {col + 1}"
                return f"{member.name} line {line}, {name}: {value[:20]!r} is not a number; pixels must be 0-255"
    return f"{member.name} could not be read as numbers; check it is comma-separated"


def _parse_dls_csv(source: Source, members: list[Member], roles: dict[str, Member], image_size: int | None,
                   color: str | None, limits: UploadLimits, progress: Progress) -> Parts:
    """DLS form: train.csv (and optionally val.csv/test.csv) with an image-path column and a label column."""
    by_path = {m.name: m for m in members}
    by_base: dict[str, list[Member]] = {}
    for m in members:
        by_base.setdefault(m.name.rsplit("/", 1)[-1], []).append(m)
    entries: dict[str, list[tuple[Member, str]]] = {}
    for part, csv_member in roles.items():
        rows = _csv_rows(source, csv_member)
        try:
            header = [h.strip().lower() for h in next(rows)]
            path_col = next(i for i, h in enumerate(header) if h in PATH_COLUMNS)
            label_col = next((i for i, h in enumerate(header) if h in LABEL_COLUMNS),
                             next((i for i in range(len(header)) if i != path_col), None))
            if label_col is None:
                raise UploadError(f"{csv_member.name} needs a label column beside the image column")
            folder = csv_member.name.rsplit("/", 1)[0] + "/" if "/" in csv_member.name else ""
            listed = []
            for line, row in enumerate(rows, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) <= max(path_col, label_col):
                    raise UploadError(f"{csv_member.name} line {line} has {len(row)} values; it needs an image path and a label")
                path = row[path_col].strip().replace("\\", "/").lstrip("./")
                problem = _member_path_problem(row[path_col].strip())
                if problem:
                    raise UploadError(f"{csv_member.name} line {line}: image path {row[path_col][:100]!r} {problem}")
                member = by_path.get(folder + path) or by_path.get(path) or by_path.get("images/" + path)
                if member is None and len(by_base.get(path.rsplit("/", 1)[-1], [])) == 1:
                    member = by_base[path.rsplit("/", 1)[-1]][0]
                if member is None:
                    raise UploadError(f"{csv_member.name} line {line}: image {path[:100]!r} is not in the upload")
                listed.append((member, row[label_col]))
        except csv.Error as error:
            raise UploadError(f"{csv_member.name} is not valid CSV ({error})") from None
        except StopIteration:
            raise UploadError(f"{csv_member.name} is empty; it needs a header (image,label) and one row per image") from None
        if not listed:
            raise UploadError(f"{csv_member.name} lists no images")
        entries[part] = listed
    train_labels, names = _labels_to_indices([label for _, label in entries["train"]], roles["train"].name,
                                             _class_list(source, members))
    labelled = {"train": [(m, int(i)) for (m, _), i in zip(entries["train"], train_labels)]}
    for part in ("validation", "test"):
        if part in entries:
            indices, _ = _labels_to_indices([label for _, label in entries[part]], roles[part].name, None, known=names)
            labelled[part] = [(m, int(i)) for (m, _), i in zip(entries[part], indices)]
    parts = _convert_image_members(source, labelled, names, image_size, color, limits, progress)
    parts.format = "CSV of image paths and labels (DLS)"
    return parts


# ----------------------------------------------------------------------------- format: image files

def _parse_folders(source: Source, members: list[Member], image_size: int | None, color: str | None,
                   limits: UploadLimits, progress: Progress) -> Parts:
    """train/<class>/*, val|validation/<class>/*, test/<class>/*; or just <class>/*."""
    files = [m for m in members if "/" in m.name]
    tops = {m.name.split("/", 1)[0].lower() for m in files}
    split_layout = bool(tops & set(SPLIT_FOLDERS)) and all(t in SPLIT_FOLDERS for t in tops)
    if tops & set(SPLIT_FOLDERS) and not split_layout and "train" in tops:
        others = sorted(t for t in tops if t not in SPLIT_FOLDERS)
        raise UploadError(f"the upload mixes split folders (train/) with other folders ({', '.join(others[:3])}); "
                          f"put every class folder inside train/, val/ or test/")
    grouped: dict[str, dict[str, list[Member]]] = {}
    skipped: list[dict] = []
    for member in members:
        if member.name.lower() in CLASS_LIST_FILES:
            continue
        parts = member.name.split("/")
        if split_layout:
            if len(parts) < 3:
                skipped.append({"file": member.name, "reason": "not inside a class folder"})
                continue
            part, cls = SPLIT_FOLDERS[parts[0].lower()], parts[1]
        else:
            if len(parts) < 2:
                skipped.append({"file": member.name, "reason": "not inside a class folder"})
                continue
            part, cls = "train", parts[0]
        grouped.setdefault(part, {}).setdefault(cls, []).append(member)
    if "train" not in grouped:
        raise UploadError("no class folders found; the zip needs <class>/<image> or train/<class>/<image>")
    names = tuple(sorted(_clean_class(c, "folder names") for c in grouped["train"]))
    raw_names = sorted(grouped["train"])
    index = {raw: i for i, raw in enumerate(raw_names)}
    labelled: dict[str, list[tuple[Member, int]]] = {}
    for part, classes in grouped.items():
        unknown = sorted(set(classes) - set(index))
        if unknown:
            raise UploadError(f"{part}/ has class folder(s) {', '.join(map(repr, unknown[:3]))} that train/ lacks")
        labelled[part] = [(m, index[cls]) for cls in sorted(classes) for m in classes[cls]]
    if len(names) < MIN_CLASSES:
        raise UploadError(f"found {len(names)} class folder ({', '.join(names)}); a classifier needs at least "
                          f"{MIN_CLASSES} classes, one folder per class")
    parts = _convert_image_members(source, labelled, names, image_size, color, limits, progress)
    parts.skipped[:0] = skipped
    return parts


def _image_header(source: Source, member: Member, limits: UploadLimits) -> tuple[tuple[int, int], str] | str:
    """(size, mode) from an image's header without decoding its pixels, or the reason it is unusable."""
    from PIL import Image, UnidentifiedImageError

    name = member.name.lower()
    if name.endswith(".svg"):
        return "SVG is a vector format; export it as PNG"
    if not name.endswith(IMAGE_SUFFIXES):
        return f"not an image file ({Path(member.name).suffix or 'no extension'})"
    if member.size == 0:
        return "empty file (0 bytes)"
    try:
        with source.open(member) as stream, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(stream)
            size, mode = image.size, image.mode
    except Image.DecompressionBombError:
        raise UploadError(f"{member.name} is a decompression bomb (far more pixels than any photo); remove it") from None
    except UnidentifiedImageError:
        return "not a readable image (unknown or damaged format)"
    except Exception as error:  # hostile headers make PIL raise many types; the file is skipped, not fatal
        return f"the image header is damaged or truncated ({type(error).__name__})"
    if size[0] * size[1] > limits.max_image_pixels:
        raise UploadError(f"{member.name} is {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:,.0f} megapixels); "
                          f"the limit is {limits.max_image_pixels / 1e6:,.0f} megapixels per image")
    return size, mode


def _convert_image_members(source: Source, labelled: dict[str, list[tuple[Member, int]]], names: tuple[str, ...],
                           image_size: int | None, color: str | None, limits: UploadLimits, progress: Progress) -> Parts:
    """Check every header (pixel limits), then decode, prepare and store each image; bad files are skipped."""
    headers: dict[str, list[tuple[Member, int, tuple[int, int], str]]] = {}
    skipped: list[dict] = []
    total_pixels = 0
    count = sum(len(v) for v in labelled.values())
    done = 0
    for part, items in labelled.items():
        for member, label in items:
            info = _image_header(source, member, limits)
            done += 1
            if done % 500 == 0:
                progress(0.05 + 0.1 * done / count, f"checking image headers {done:,}/{count:,}")
            if isinstance(info, str):
                skipped.append({"file": member.name, "reason": info})
                continue
            total_pixels += info[0][0] * info[0][1]
            if total_pixels > limits.max_total_pixels:
                raise UploadError(f"the images hold more than {limits.max_total_pixels / 1e9:,.1f} gigapixels in all; "
                                  f"use fewer or smaller images")
            headers.setdefault(part, []).append((member, label, info[0], info[1]))
    if not headers.get("train"):
        raise UploadError(f"none of the {count:,} training files is a readable image"
                          + (f" (first: {skipped[0]['file']}: {skipped[0]['reason']})" if skipped else ""))
    all_headers = [h for items in headers.values() for h in items]
    size, color = _default_options([(h[2][1], h[2][0]) for h in all_headers], image_size, color,
                                   [1 if h[3] in GRAY_MODES else 3 for h in all_headers])
    _check_output(len(all_headers), size, color, limits)
    channels = 1 if color == "gray" else 3
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    done = 0
    for part, items in headers.items():
        images = np.empty((len(items), size, size, channels), np.uint8)
        labels = np.empty(len(items), np.int32)
        kept = 0
        for member, label, _, _ in items:
            done += 1
            try:
                images[kept] = prepare_image(source.read(member), size, color)
            except UploadError:
                raise
            except ValueError as error:  # predict.ImageError: truncated, corrupt, too small ... this file is skipped
                skipped.append({"file": member.name, "reason": str(error)})
                continue
            except Exception as error:  # an odd file must not lose the rest of the dataset
                skipped.append({"file": member.name, "reason": f"could not be processed ({type(error).__name__})"})
                continue
            labels[kept] = label
            kept += 1
            if done % 200 == 0:
                progress(0.15 + 0.8 * done / len(all_headers), f"converting images {done:,}/{len(all_headers):,}")
        if kept:
            out[part] = (images[:kept], labels[:kept])
    if "train" not in out:
        raise UploadError("no training image could be decoded" + (f" (first: {skipped[0]['file']}: {skipped[0]['reason']})" if skipped else ""))
    return Parts(out["train"], out.get("validation"), out.get("test"), names, size, color, skipped)


# ----------------------------------------------------------------------------- detection and import

def detect_format(members: list[Member]) -> str:
    """'idx', 'npz', 'csv' or 'folders' from the upload's file names (UploadError if none fits)."""
    names = [m.name.lower() for m in members]
    if any(IDX_NAME.search(n.rsplit("/", 1)[-1]) for n in names):
        return "idx"
    if any(n.endswith(".npz") for n in names) or any(n.rsplit("/", 1)[-1] in ("x_train.npy", "train_images.npy") for n in names):
        return "npz"
    if any(n.endswith(".csv") for n in names):
        return "csv"
    if any(n.endswith(IMAGE_SUFFIXES) for n in names):
        return "folders"
    if not names:
        raise UploadError("the upload holds no files")
    raise UploadError(f"cannot tell the dataset format from files like {', '.join(n[:60] for n in names[:3])}; "
                      f"use class folders of images, a CSV, an .npz or IDX files")


FORMAT_LABELS = {"idx": "IDX files", "npz": "NumPy .npz", "csv": "CSV of labels and pixels (Kaggle)",
                 "folders": "class folders of images"}
PARSERS = {"idx": _parse_idx, "npz": _parse_npz, "csv": _parse_csv, "folders": _parse_folders}


def source_digest(path: Path) -> str:
    """SHA-256 of an upload (a file's bytes, or a folder's relative paths and bytes)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(MIB), b""):
                digest.update(block)
    return digest.hexdigest()


def upload_id(path: Path, digest: str, image_size: int | None, color: str | None) -> str:
    """A stable, path-safe id: the file's name as a slug plus a hash of its bytes and the chosen options."""
    stem = path.name.split(".")[0] if path.is_file() else path.name
    options = hashlib.sha256(f"{digest}:{image_size or 'auto'}:{color or 'auto'}".encode()).hexdigest()[:12]
    return f"{store.slugify(stem)[:30]}-{options}"


def _datasets_dir(home: str | os.PathLike | None) -> Path:
    return settings.home_dir(home) / "datasets"


def import_upload(path: str | os.PathLike, image_size: int | None = None, color: str | None = None,
                  progress: Progress | None = None, limits: UploadLimits | None = None,
                  home: str | os.PathLike | None = None, display_name: str | None = None) -> dict:
    """Convert an upload once into the workspace (arrays + manifest); returns the manifest (cached after the first time)."""
    progress = progress or (lambda fraction, message: None)
    limits = limits or limits_for_mode()
    _check_options(image_size, color)
    path = Path(path)
    source = open_source(path, limits)  # size, count, ratio and path checks: nothing is read yet
    try:
        progress(0.02, "hashing the upload")
        digest = source_digest(path)
        identifier = upload_id(path, digest, image_size, color)
        name = f"upload/{identifier}"
        final = _datasets_dir(home) / name.replace("/", "__")
        if (final / "manifest.json").exists():
            try:
                manifest = store.read_json(final / "manifest.json")
                progress(1.0, "already converted")
                return manifest
            except store.StoreError:
                shutil.rmtree(final, ignore_errors=True)  # a damaged earlier import: convert again
        started = time.perf_counter()
        members = _useful(source.members)
        kind = detect_format(members)
        progress(0.05, f"reading {FORMAT_LABELS[kind]}")
        parts = PARSERS[kind](source, members, image_size, color, limits, progress)
    finally:
        source.close()
    _check_classes(parts.train[1], parts.class_names, "the training data")
    empty_test = np.zeros((0,) + parts.train[0].shape[1:], np.uint8), np.zeros(0, np.int32)
    test = parts.test or empty_test
    dataset = data.Dataset(name, parts.train[0], parts.train[1], test[0], test[1], parts.class_names,
                           *(parts.val or (None, None)))
    manifest = {
        "id": identifier, "name": name, "display_name": display_name or path.name, "format": parts.format or FORMAT_LABELS[kind],
        "source": {"file": path.name, "sha256": digest, "bytes": _total_bytes(path)},
        "image_size": parts.image_size, "color": parts.color, "input_shape": list(dataset.input_shape),
        "class_names": list(parts.class_names), "num_classes": len(parts.class_names),
        "counts": {"train": len(parts.train[1]), "validation": len(parts.val[1]) if parts.val else None,
                   "test": len(test[1])},
        "class_counts": {part: np.bincount(labels, minlength=len(parts.class_names)).tolist()
                         for part, labels in (("train", parts.train[1]), ("validation", (parts.val or (None, None))[1]),
                                              ("test", test[1])) if labels is not None},
        "preprocess": dict(PREPROCESS),
        "skipped_count": len(parts.skipped), "skipped": parts.skipped[:MAX_SKIPPED_LISTED],
        "arrays": {key: data.array_digest(getattr(dataset, key)) for key in data.ARRAY_KEYS + data.VAL_KEYS
                   if getattr(dataset, key) is not None},
        "created": time.time(), "seconds": round(time.perf_counter() - started, 3),
        "limits": limits.to_dict(),
    }
    progress(0.96, "saving arrays")
    _save_atomically(dataset, manifest, final)
    data.forget_shared(name, home)
    progress(1.0, f"converted {manifest['counts']['train']:,} training images of {len(parts.class_names)} classes")
    return store.read_json(final / "manifest.json")


def _total_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _save_atomically(dataset: data.Dataset, manifest: dict, final: Path) -> None:
    """Write into a staging folder, then rename it into place: an import is all there or not there at all."""
    staging = final.with_name(f".staging-{final.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        data.save_cached(dataset, folder=staging)
        store.atomic_write_json(staging / "manifest.json", manifest)
        try:
            os.replace(staging, final)
        except OSError:
            if not (final / "manifest.json").exists():  # not a lost race with an identical import
                raise
    except OSError as error:
        raise store.StoreError(f"cannot save the converted dataset in {final.parent}: "
                               f"{error.strerror or error} (is the workspace read-only or full?)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_upload(path: str | os.PathLike, image_size: int | None = None, color: str | None = None,
                progress: Progress | None = None, limits: UploadLimits | None = None,
                home: str | os.PathLike | None = None) -> data.Dataset:
    """Import an upload (once) and load it from the workspace cache as "upload/<id>"."""
    manifest = import_upload(path, image_size, color, progress, limits, home)
    return data.load_dataset(manifest["name"], home=home)


def import_stream(stream: IO[bytes], filename: str, image_size: int | None = None, color: str | None = None,
                  progress: Progress | None = None, limits: UploadLimits | None = None,
                  home: str | os.PathLike | None = None) -> dict:
    """import_upload for an uploaded file object (Streamlit, REST): copied to a temp file under the cap, then removed."""
    limits = limits or limits_for_mode()
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(filename)).name)[-80:].lstrip(".") or "upload"
    folder = _datasets_dir(home) / ".incoming"
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f"{os.getpid()}-{time.monotonic_ns()}-{safe_name}"
    try:
        written = 0
        with open(temp, "wb") as out:
            for block in iter(lambda: stream.read(MIB), b""):
                written += len(block)
                if written > limits.max_archive_bytes:
                    raise UploadError(f"{safe_name} is larger than the upload limit of {_size(limits.max_archive_bytes)}")
                out.write(block)
        return import_upload(temp, image_size, color, progress, limits, home, display_name=str(filename)[:200])
    except OSError as error:
        raise store.StoreError(f"cannot store the upload: {error.strerror or error} (is the workspace full?)") from None
    finally:
        temp.unlink(missing_ok=True)


def list_uploads(home: str | os.PathLike | None = None) -> list[dict]:
    """Manifests of the uploaded datasets in a workspace, newest first."""
    out = []
    for folder in sorted(_datasets_dir(home).glob("upload__*")):
        try:
            out.append(store.read_json(folder / "manifest.json"))
        except store.StoreError:
            continue
    return sorted(out, key=lambda m: m.get("created", 0), reverse=True)


def read_manifest(name: str, home: str | os.PathLike | None = None) -> dict:
    """The manifest of "upload/<id>" (or a bare id); StoreError if it is not in the workspace."""
    identifier = name[len("upload/"):] if name.startswith("upload/") else name
    folder = store.safe_child(_datasets_dir(home), f"upload__{identifier}")
    return store.read_json(folder / "manifest.json")


def preprocess_settings(dataset_name: str, home: str | os.PathLike | None = None) -> dict | None:
    """The prediction-time photo settings of an uploaded dataset, or None for TFDS datasets."""
    if not dataset_name.startswith("upload/"):
        return None
    return read_manifest(dataset_name, home).get("preprocess")


def delete_upload(name: str, home: str | os.PathLike | None = None) -> None:
    """Remove an uploaded dataset from the workspace."""
    identifier = name[len("upload/"):] if name.startswith("upload/") else name
    folder = store.safe_child(_datasets_dir(home), f"upload__{identifier}")
    trash = folder.with_name(f".deleted-{folder.name}-{time.monotonic_ns()}")
    try:
        os.replace(folder, trash)
    except FileNotFoundError:
        raise store.StoreError(f"uploaded dataset {identifier!r} does not exist") from None
    shutil.rmtree(trash, ignore_errors=True)
    data.forget_shared(f"upload/{identifier}", home)

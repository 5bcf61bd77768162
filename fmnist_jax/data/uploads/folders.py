"""Upload format: image files in class folders.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from fmnist_jax.checks import PILLOW_ERRORS
from fmnist_jax.data.uploads.arrays import (
    Parts,
    _check_output,
    _clean_class,
    _default_options,
)
from fmnist_jax.data.uploads.images import prepare_image
from fmnist_jax.data.uploads.limits import (
    CLASS_LIST_FILES,
    GRAY_MODES,
    IMAGE_SUFFIXES,
    MIN_CLASSES,
    SPLIT_FOLDERS,
    Progress,
    UploadError,
    UploadLimits,
)
from fmnist_jax.data.uploads.sources import Member, Source

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
    except PILLOW_ERRORS as error:  # hostile headers: the file is skipped, not fatal
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
    train_files: list[str] = []
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
            except ValueError as error:  # ImageError: truncated, corrupt, too small ... this file is skipped
                skipped.append({"file": member.name, "reason": str(error)})
                continue
            labels[kept] = label
            kept += 1
            if part == "train":
                train_files.append(member.name)
            if done % 200 == 0:
                progress(0.15 + 0.8 * done / len(all_headers), f"converting images {done:,}/{len(all_headers):,}")
        if kept:
            out[part] = (images[:kept], labels[:kept])
    if "train" not in out:
        raise UploadError("no training image could be decoded" + (f" (first: {skipped[0]['file']}: {skipped[0]['reason']})" if skipped else ""))
    return Parts(out["train"], out.get("validation"), out.get("test"), names, size, color, skipped,
                 train_files=train_files)

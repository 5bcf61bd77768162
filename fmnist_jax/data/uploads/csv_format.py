"""Upload format: CSV of labels and pixels (Kaggle) and Deep Learning Studio's CSV of labels and paths.
"""
from __future__ import annotations

import csv
import io
from typing import Iterator

import numpy as np

from fmnist_jax.data.uploads.arrays import (
    Parts,
    _check_pixels,
    _class_list,
    _is_number,
    _labels_to_indices,
)
from fmnist_jax.data.uploads.folders import _convert_image_members
from fmnist_jax.data.uploads.formats import _finish_arrays
from fmnist_jax.data.uploads.limits import Progress, UploadError, UploadLimits
from fmnist_jax.data.uploads.sources import Member, Source, _member_path_problem

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
    scan = _scan_pixels(source, member, header, has_header, label_col)
    if scan["rows"] == 0:
        raise UploadError(f"{member.name} has a header but no rows")
    low, high = scan["low"], scan["high"]
    if low < 0 or high > 255:
        raise UploadError(f"{member.name} row {scan['out_of_range_row']}: pixel values must be 0-255, found {low:g} to {high:g}")
    scale = 255.0 if high <= 1.0 and scan["fractional"] else 1.0  # pixels given as fractions 0-1
    progress(0.5, f"converting {member.name}")
    images = np.empty((scan["rows"], pixel_count), np.uint8)
    labels = []
    for position, (label, pixels) in enumerate(_pixel_rows(source, member, header, has_header, label_col)):
        images[position] = np.round(pixels * scale)
        labels.append(label)
    images = images.reshape(len(images), side, side, channels) if channels == 3 else images.reshape(len(images), side, side, 1)
    return images, np.asarray(labels)


def _pixel_rows(source: Source, member: Member, header: list[str], has_header: bool,
                label_col: int) -> Iterator[tuple[str, np.ndarray]]:
    """(label text, float32 pixels) per data row, one row in memory at a time; UploadError naming the bad row."""
    rows = _csv_rows(source, member)
    if has_header:
        next(rows, None)
    try:
        for number, row in enumerate(rows, start=2 if has_header else 1):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise UploadError(_describe_csv_problem(source, member, header, has_header, label_col))
            cells = row[:label_col] + row[label_col + 1:]
            try:
                pixels = np.asarray(cells, dtype=np.float32)
            except ValueError:
                raise UploadError(_describe_csv_problem(source, member, header, has_header, label_col)) from None
            if np.isnan(pixels).any():
                column = int(np.flatnonzero(np.isnan(pixels))[0])
                raise UploadError(f"{member.name} row {number - (1 if has_header else 0)}: pixel column {column + 1} "
                                  f"is empty or not a number")
            yield row[label_col], pixels
    except csv.Error as error:
        raise UploadError(f"{member.name} is not valid CSV ({error})") from None


def _scan_pixels(source: Source, member: Member, header: list[str], has_header: bool, label_col: int) -> dict:
    """First pass over a pixel CSV in bounded memory: row count, value range, and whether values are fractional."""
    scan = {"rows": 0, "low": float("inf"), "high": float("-inf"), "fractional": False, "out_of_range_row": None}
    for _, pixels in _pixel_rows(source, member, header, has_header, label_col):
        scan["rows"] += 1
        low, high = float(pixels.min()), float(pixels.max())
        if (low < 0 or high > 255) and scan["out_of_range_row"] is None:
            scan["out_of_range_row"] = scan["rows"]
        scan["low"], scan["high"] = min(scan["low"], low), max(scan["high"], high)
        scan["fractional"] = scan["fractional"] or not np.array_equal(pixels, np.round(pixels))
    return scan


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

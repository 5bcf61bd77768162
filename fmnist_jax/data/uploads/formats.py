"""Upload formats with arrays inside: IDX files and NumPy .npz.
"""
from __future__ import annotations

import gzip
import io
import stat
import zipfile
from typing import IO

import numpy as np

from fmnist_jax.data.uploads.arrays import (
    Parts,
    _as_image_array,
    _check_output,
    _check_pixels,
    _class_list,
    _clean_class,
    _convert_arrays,
    _default_options,
    _labels_to_indices,
)
from fmnist_jax.data.uploads.limits import (
    IDX_NAME,
    RATIO_EXEMPT_BYTES,
    Progress,
    UploadError,
    UploadLimits,
    _size,
)
from fmnist_jax.data.uploads.sources import (
    Member,
    Source,
    ZipSource,
    _member_path_problem,
)

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

"""Sources of an upload (zip archive, folder): listing members safely before anything is read.
"""
from __future__ import annotations

import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from fmnist_jax.data.uploads.limits import (
    IDX_NAME,
    JUNK,
    RATIO_EXEMPT_BYTES,
    UploadError,
    UploadLimits,
    _size,
)

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

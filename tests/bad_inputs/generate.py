"""The bad-input corpus: hostile or broken files and values, each with the answer every entry point must give.

Run `python tests/bad_inputs/generate.py OUT_DIR` to write the file cases to a folder (to try them in the
UI by hand); tests/test_bad_inputs.py generates them into a temporary folder at test time, since some
are large (a zip with 100,000 members, a zip bomb) and none needs to live in git.

Each case has a kind that decides its entry points:
    image    -> photo (Deploy upload: predict.preprocess_photo), upload-image (inside a dataset zip),
                cli-predict and rest (when the deploy helper's commands exist)
    dataset  -> upload (local limits), upload-public (public limits), cli-train (--dataset PATH)
    project  -> project (Workspace.create_project), project-rename (Workspace.update_project)
    spec     -> spec (layers.describe), cli-train-model (--model FILE)
    config   -> config (TrainConfig.from_dict + validate), cli-train-config (--config FILE)
    bundle   -> bundle (bundle.load_bundle), predict-load (predict.load_model)
`expect` maps an entry point to a regex the error message must match, "ok" when the input must be
accepted, or "skip:<regex>" when a dataset keeps going without that one file (listed with the reason).
"""
from __future__ import annotations

import gzip
import io
import json
import stat
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

CLASS_A, CLASS_B = "shirts", "shoes"


@dataclass
class Case:
    """One bad input: how to make it and what each entry point must answer."""

    id: str
    kind: str
    build: Callable[[Path], Any]
    expect: dict[str, str] = field(default_factory=dict)
    large: bool = False
    spec: list | None = None  # the model the CLI trains for a config case (default: a tiny conv net)


# ----------------------------------------------------------------------------- image bytes

def png_bytes(image: Image.Image, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **params)
    return buffer.getvalue()


def garment(size: tuple[int, int] = (120, 160)) -> Image.Image:
    """A dark T-shirt-like blob on a light background: a valid photo."""
    width, height = size
    pixels = np.full((height, width, 3), 225, np.uint8)
    pixels[height // 5: 4 * height // 5, width // 4: 3 * width // 4] = (40, 60, 120)
    pixels[height // 5: height // 3, width // 8: 7 * width // 8] = (40, 60, 120)
    return Image.fromarray(pixels, "RGB")


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def huge_png_header(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG that declares width x height pixels but carries almost no data (a decompression bomb's header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def corrupt_crc_png() -> bytes:
    """A valid PNG with one byte of its image data flipped, so the chunk's CRC no longer matches."""
    data = bytearray(png_bytes(garment()))
    position = data.index(b"IDAT") + 20
    data[position] ^= 0xFF
    return bytes(data)


def exif_rotated_jpeg() -> bytes:
    """A JPEG stored sideways with EXIF Orientation=6 (rotate 90 degrees clockwise to view)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(garment((160, 120)), exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [garment().convert("P"), garment((120, 160)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def palette_with_transparency() -> bytes:
    image = garment().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return png_bytes(image, transparency=0)


def sixteen_bit_png() -> bytes:
    values = (np.asarray(garment().convert("L"), np.uint16) * 257).astype(np.uint16)
    return png_bytes(Image.fromarray(values))  # uint16 -> mode I;16


IMAGE_CASES = [
    # id, bytes maker, Deploy photo answer, answer inside a dataset upload
    ("zero-byte-image", lambda: b"", r"empty \(0 bytes\)", r"skip:empty file"),
    ("text-renamed-png", lambda: b"hello, I am not a picture\n" * 10, r"not an image in a supported format", r"skip:not a readable image"),
    ("truncated-jpeg", lambda: jpeg_bytes(garment())[:600], r"truncated or corrupt|header is corrupt",
     r"skip:truncated or corrupt|damaged or truncated"),
    ("png-corrupt-crc", corrupt_crc_png, r"truncated or corrupt", r"skip:truncated or corrupt"),
    ("decompression-bomb-30000", huge_png_header, r"megapixels", r"decompression bomb|megapixels"),
    ("one-pixel", lambda: png_bytes(Image.new("RGB", (1, 1), (200, 10, 10))), r"at least 8 pixels", r"skip:only 1x1 pixels"),
    ("strip-1x10000", lambda: png_bytes(Image.new("L", (1, 10000), 128)), r"at least 8 pixels|strip", r"skip:1x10000"),
    ("sixteen-bit-png", sixteen_bit_png, "ok", "ok"),
    ("cmyk-jpeg", lambda: jpeg_bytes(garment().convert("CMYK")), "ok", "ok"),
    ("palette-transparency", palette_with_transparency, "ok", "ok"),
    ("animated-gif", animated_gif, "ok", "ok"),
    ("exif-rotated-jpeg", exif_rotated_jpeg, "ok", "ok"),
    ("svg-drawing", lambda: b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>",
     r"SVG", r"skip:SVG"),
    ("flat-colour", lambda: png_bytes(Image.new("RGB", (64, 64), (90, 90, 90))), r"single flat colour", "ok"),
    ("heic-renamed", lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, r"HEIC", r"skip:not a readable image"),
    ("pdf-renamed", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n", r"PDF", r"skip:not a readable image"),
]


# ----------------------------------------------------------------------------- dataset uploads

def _good_png(label: int, index: int) -> bytes:
    rng = np.random.default_rng(label * 100 + index)
    pixels = rng.integers(0, 40, (28, 28), dtype=np.uint8)
    if label == 0:
        pixels[8:14, :] = 230
    else:
        pixels[:, 8:14] = 230
    return png_bytes(Image.fromarray(pixels, "L"))


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, payload in entries:
            archive.writestr(name, payload)
    return path


def good_entries(per_class: int = 4, prefix: str = "train/") -> list[tuple[str, bytes]]:
    """Two valid class folders of 28x28 PNGs."""
    return [(f"{prefix}{name}/{i}.png", _good_png(label, i)) for label, name in enumerate((CLASS_A, CLASS_B))
            for i in range(per_class)]


def _raw_name(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("placeholder")
    info.filename = name  # ZipInfo cleans names on creation; a hostile tool does not
    return info


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _encrypted_zip(path: Path) -> Path:
    _zip(path, good_entries())
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set the 'encrypted' flag bit everywhere
        start = 0
        while (start := data.find(signature, start)) >= 0:
            data[start + offset] |= 0x01
            start += 4
    path.write_bytes(bytes(data))
    return path


def _bomb(path: Path) -> Path:
    """One member of 512 MB of zeros, deflated to about half a megabyte."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open(f"train/{CLASS_A}/bomb.png", "w", force_zip64=True) as member:
            block = bytes(2**24)
            for _ in range(32):
                member.write(block)
        for name, payload in good_entries(1):
            archive.writestr(name, payload)
    return path


def _many_files(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(100_000):
            archive.writestr(f"{(CLASS_A, CLASS_B)[i % 2]}/{i:06d}.png", b"")
    return path


def _csv(rows: list[str], header_pixels: int = 784) -> str:
    header = "label," + ",".join(f"pixel{i + 1}" for i in range(header_pixels))
    return header + "\n" + "\n".join(rows) + "\n"


def _row(label: Any, pixels: int = 784, value: Any = 0) -> str:
    return f"{label}," + ",".join([str(value)] * pixels)


def _good_rows(count: int = 6) -> list[str]:
    return [_row(i % 2, value=(i * 37) % 256) for i in range(count)]


def _write(path: Path, payload: bytes | str) -> Path:
    path.write_bytes(payload.encode() if isinstance(payload, str) else payload)
    return path


def _npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _npz_with_object_array(path: Path) -> Path:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    images = io.BytesIO()
    np.lib.format.write_array(images, np.zeros((2, 28, 28), np.uint8))
    return _zip(path, [("x_train.npy", images.getvalue()), ("y_train.npy", buffer.getvalue())])


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.astype(np.uint8).tobytes()


def _idx_folder(folder: Path, images: bytes, labels: bytes | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    if labels is not None:
        (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return folder


def _images(count: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (count, 28, 28), dtype=np.uint8)


def _labels(count: int) -> np.ndarray:
    return np.arange(count) % 2


DATASET_CASES = [
    Case("zip-bomb", "dataset", lambda d: _bomb(d / "bomb.zip"), {"*": r"likely zip bomb"}, large=True),
    Case("zip-parent-path", "dataset", lambda d: _zip(d / "parent.zip", good_entries() + [(_raw_name("../../evil.png"), b"x")]),
         {"*": r"climbs out of the archive"}),
    Case("zip-absolute-path", "dataset", lambda d: _zip(d / "absolute.zip", good_entries() + [(_raw_name("/etc/cron.d/x.png"), b"x")]),
         {"*": r"absolute path"}),
    Case("zip-windows-drive-path", "dataset", lambda d: _zip(d / "drive.zip", good_entries() + [(_raw_name("C:\\Windows\\x.png"), b"x")]),
         {"*": r"absolute path"}),
    Case("zip-symlink", "dataset", lambda d: _zip(d / "link.zip", good_entries() + [(_symlink(f"train/{CLASS_A}/l.png"), b"/etc/passwd")]),
         {"*": r"symbolic link"}),
    Case("zip-100000-tiny-files", "dataset", lambda d: _many_files(d / "many.zip"),
         {"*": r"none of the 100,000 training files is a readable image", "upload-public": r"holds 100,000 files; the limit is 20,000"},
         large=True),
    Case("zip-encrypted", "dataset", lambda d: _encrypted_zip(d / "secret.zip"), {"*": r"encrypted"}),
    Case("zip-not-a-zip", "dataset", lambda d: _write(d / "fake.zip", "just text, renamed to .zip\n"), {"*": r"not a zip archive"}),
    Case("zip-truncated", "dataset", lambda d: _write(d / "cut.zip", _zip(d / "whole.zip", good_entries()).read_bytes()[:700]),
         {"*": r"not a readable zip archive"}),
    Case("zip-empty", "dataset", lambda d: _zip(d / "empty.zip", []), {"*": r"holds no files"}),
    Case("zero-byte-upload", "dataset", lambda d: _write(d / "nothing.zip", b""), {"*": r"is empty \(0 bytes\)"}),
    Case("unsupported-file-type", "dataset", lambda d: _write(d / "data.rar", b"Rar!\x1a\x07\x00" + b"\0" * 40), {"*": r"unsupported upload"}),
    Case("one-class-folder", "dataset", lambda d: _zip(d / "one.zip", [(f"{CLASS_A}/{i}.png", _good_png(0, i)) for i in range(4)]),
         {"*": r"found 1 class folder .*at least 2 classes"}),
    Case("empty-class-folder", "dataset", lambda d: _zip(d / "emptyclass.zip", good_entries() + [("train/hats/readme.txt", b"todo")]),
         {"*": r"class 'hats' has no training images"}),
    Case("mixed-split-and-class-folders", "dataset",
         lambda d: _zip(d / "mixed.zip", good_entries() + [(f"{CLASS_B}/x.png", _good_png(1, 9))]), {"*": r"mixes split folders"}),
    Case("test-class-missing-from-train", "dataset",
         lambda d: _zip(d / "testclass.zip", good_entries() + [("test/hats/1.png", _good_png(0, 1))]), {"*": r"test/ has class folder\(s\) 'hats'"}),
    Case("no-readable-images", "dataset",
         lambda d: _zip(d / "texts.zip", [(f"{c}/{i}.png", b"not a png") for c in (CLASS_A, CLASS_B) for i in range(3)]),
         {"*": r"none of the 6 training files is a readable image"}),
    Case("csv-missing-values", "dataset", lambda d: _write(d / "missing.csv", _csv(_good_rows() + [_row(1, 783)])),
         {"*": r"line 8 has 784 values but the header has 785 columns"}),
    Case("csv-extra-columns", "dataset", lambda d: _write(d / "extra.csv", _csv(_good_rows()[:2] + [_row(1, 785)] + _good_rows())),
         {"*": r"line 4 has 786 values but the header has 785"}),
    Case("csv-non-numeric-pixels", "dataset",
         lambda d: _write(d / "words.csv", _csv(_good_rows() + ["1," + ",".join(["0"] * 400 + ["dark"] + ["0"] * 383)])),
         {"*": r"line 8, pixel401: 'dark' is not a number"}),
    Case("csv-label-out-of-range", "dataset",
         lambda d: _zip(d / "range.zip", [("train.csv", _csv(_good_rows() + [_row(5)]).encode()),
                                          ("classes.txt", f"{CLASS_A}\n{CLASS_B}\n".encode())]),
         {"*": r"label 5 in row 7 is out of range; there are 2 class names"}),
    Case("csv-too-many-classes", "dataset", lambda d: _write(d / "many-classes.csv", _csv(_good_rows() + [_row(150)])),
         {"*": r"151 classes; the limit is 100"}),
    Case("csv-negative-label", "dataset", lambda d: _write(d / "negative.csv", _csv(_good_rows() + [_row(-1)])),
         {"*": r"label -1 in row 7 is negative"}),
    Case("csv-fractional-label", "dataset", lambda d: _write(d / "fraction.csv", _csv(_good_rows() + [_row(1.5)])),
         {"*": r"'1.5' in row 7 is not a whole number"}),
    Case("csv-pixel-300", "dataset", lambda d: _write(d / "bright.csv", _csv(_good_rows() + [_row(1, value=300)])),
         {"*": r"pixel values must be 0-255, found 0 to 300"}),
    Case("csv-not-square", "dataset", lambda d: _write(d / "oblong.csv", _csv([_row(i % 2, 90) for i in range(6)], 90)),
         {"*": r"90 pixel columns; that is not a square image"}),
    Case("csv-one-class", "dataset", lambda d: _write(d / "single.csv", _csv([_row(0, value=i) for i in range(6)])),
         {"*": r"has 1 class .*at least 2 classes"}),
    Case("csv-header-only", "dataset", lambda d: _write(d / "header.csv", _csv([])), {"*": r"has a header but no rows"}),
    Case("csv-no-label-column", "dataset",
         lambda d: _write(d / "nolabel.csv", "a,b,c\n1,2,3\n"), {"*": r"has no 'label' column"}),
    Case("dls-csv-missing-image", "dataset",
         lambda d: _zip(d / "dls.zip", [("train.csv", b"image,label\nimages/a.png,shirt\nimages/gone.png,shoe\n"),
                                         ("images/a.png", _good_png(0, 0))]), {"*": r"image 'images/gone.png' is not in the upload"}),
    Case("dls-csv-path-traversal", "dataset",
         lambda d: _zip(d / "dls-escape.zip", [("train.csv", b"image,label\n../../etc/passwd,shirt\n"),
                                                ("images/a.png", _good_png(0, 0))]), {"*": r"climbs out of the archive"}),
    Case("npz-pickled-object-array", "dataset", lambda d: _npz_with_object_array(d / "pickle.npz"), {"*": r"pickle"}),
    Case("npz-missing-labels", "dataset", lambda d: _npz(d / "nolabels.npz", x_train=_images(4)), {"*": r"x_train without y_train"}),
    Case("npz-label-count-mismatch", "dataset", lambda d: _npz(d / "mismatch.npz", x_train=_images(6), y_train=_labels(5)),
         {"*": r"one label per image in x_train \(6\)"}),
    Case("npz-nan-pixels", "dataset",
         lambda d: _npz(d / "nan.npz", x_train=np.where(_images(6) > 250, np.nan, _images(6) / 255.0), y_train=_labels(6)),
         {"*": r"NaN or infinite pixel values"}),
    Case("npz-flat-images", "dataset", lambda d: _npz(d / "flat.npz", x_train=_images(6).reshape(6, 784), y_train=_labels(6)),
         {"*": r"has shape \(6, 784\); images must be"}),
    Case("npz-truncated", "dataset",
         lambda d: _write(d / "cut.npz", _npz(d / "whole.npz", x_train=_images(50), y_train=_labels(50)).read_bytes()[:5000]),
         {"*": r"not a readable zip archive"}),
    Case("idx-truncated-data", "dataset", lambda d: _idx_folder(d / "idx-cut", _idx(_images(20))[:4000], _idx(_labels(20))),
         {"*": r"is truncated: its header promises 15,680 bytes"}),
    Case("idx-count-mismatch", "dataset", lambda d: _idx_folder(d / "idx-count", _idx(_images(30)), _idx(_labels(20))),
         {"*": r"has 30 images but .* has 20 labels"}),
    Case("idx-missing-labels", "dataset", lambda d: _idx_folder(d / "idx-half", _idx(_images(20)), None),
         {"*": r"lacks train-labels"}),
    Case("idx-bad-magic", "dataset", lambda d: _idx_folder(d / "idx-magic", b"\x12\x34" + _idx(_images(4))[2:], _idx(_labels(4))),
         {"*": r"not an IDX file"}),
]


# ----------------------------------------------------------------------------- names, specs, configs

PROJECT_CASES = [
    Case("name-with-slash", "project", lambda d: "shirts/shoes", {"*": "ok"}),
    Case("name-dot-dot", "project", lambda d: "..", {"*": "ok"}),
    Case("name-with-nul", "project", lambda d: "evil\x00name", {"*": r"control characters"}),
    Case("name-10000-characters", "project", lambda d: "x" * 10_000, {"*": r"10000 characters long; the limit is 80"}),
    Case("name-only-spaces", "project", lambda d: "      ", {"*": r"is empty; type a name"}),
    Case("name-not-text", "project", lambda d: ["a", "list"], {"*": r"must be text"}),
    Case("name-duplicate", "project", lambda d: "good project", {"*": r"already exists", "project-rename": r"already exists"}),
]

SPEC_CASES = [
    Case("spec-unknown-layer", "spec", lambda d: [{"type": "transformer"}], {"*": r"unknown layer type"}),
    Case("spec-negative-size", "spec", lambda d: [{"type": "conv2d", "filters": -3}, {"type": "flatten"}, {"type": "dense", "units": 2}],
         {"*": r"'filters' must be at least 1, got -3"}),
    Case("spec-shrinks-below-one-pixel", "spec", lambda d: [{"type": "conv2d", "filters": 4, "kernel": 3}] * 20,
         {"*": r"below 1 pixel"}),
    Case("spec-10000-layers", "spec", lambda d: [{"type": "dropout", "rate": 0.1}] * 10_000, {"*": r"10000 layers; the limit is"}),
    Case("spec-not-a-list", "spec", lambda d: {"type": "dense", "units": 2}, {"*": r"must be a list of layers"}),
    Case("spec-empty", "spec", lambda d: [], {"*": r"no layers"}),
    Case("spec-unknown-parameter", "spec", lambda d: [{"type": "conv2d", "filters": 4, "colour": 3}], {"*": r"unknown parameter\(s\) colour"}),
    Case("spec-huge-layer", "spec", lambda d: [{"type": "conv2d", "filters": 10**9}], {"*": r"at most 4096"}),
    Case("spec-dropout-above-one", "spec", lambda d: [{"type": "dropout", "rate": 1.5}], {"*": r"'rate' must be at most"}),
]

CONFIG_CASES = [
    Case("config-lr-nan", "config", lambda d: {"learning_rate": float("nan")}, {"*": r"learning rate"}),
    Case("config-lr-infinite", "config", lambda d: {"learning_rate": float("inf")}, {"*": r"learning rate"}),
    Case("config-lr-1e6", "config", lambda d: {"learning_rate": 1e6}, {"*": r"learning rate"}),
    Case("config-negative-epochs", "config", lambda d: {"epochs": -1}, {"*": r"epochs must be at least 1, got -1"}),
    Case("config-zero-epochs", "config", lambda d: {"epochs": 0}, {"*": r"epochs must be at least 1, got 0"}),
    Case("config-batch-larger-than-data", "config", lambda d: {"batch_size": 5000}, {"*": r"larger than the training split"}),
    Case("config-zero-batch", "config", lambda d: {"batch_size": 0}, {"*": r"batch size must be at least 1"}),
    Case("config-unknown-setting", "config", lambda d: {"colour": "red"}, {"*": r"unknown training setting\(s\): colour"}),
    Case("config-unknown-optimizer", "config", lambda d: {"optimizer": "sgdx"}, {"*": r"optimizer"}),
    Case("config-text-epochs", "config", lambda d: {"epochs": "ten"}, {"*": r"epochs must be a finite number"}),
    Case("config-not-an-object", "config", lambda d: [1, 2, 3], {"*": r"must be a JSON object"}),
    Case("config-diverging-lr", "config", lambda d: {"learning_rate": 10.0, "optimizer": "sgd", "momentum": 0.99},
         {"config": "ok", "cli-train-config": r"the loss became (NaN|infinite) in epoch 1; lower the learning rate"},
         spec=[{"type": "flatten"}, {"type": "dense", "units": 64}, {"type": "dense", "units": 64}, {"type": "dense", "units": 10}]),
]


# ----------------------------------------------------------------------------- model bundles

def _patch_declared_size(path: Path, member: str, size: int) -> Path:
    data = bytearray(path.read_bytes())
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:
        name_length = struct.unpack("<H", data[start + 28:start + 30])[0]
        if data[start + 46:start + 46 + name_length].decode() == member:
            data[start + 24:start + 28] = struct.pack("<I", size)
        start += 4
    path.write_bytes(bytes(data))
    return path


def _bundle_case(mutate: Callable[[dict[str, bytes]], list[tuple[str | zipfile.ZipInfo, bytes]]]) -> Callable[[Path, dict], Path]:
    def build(folder: Path, good: dict[str, bytes]) -> Path:
        return _zip(folder / "model.zip", mutate(dict(good)))
    return build


def _with(files: dict[str, bytes], **changes: bytes) -> list[tuple[str, bytes]]:
    files.update(changes)
    return list(files.items())


def _json_edit(files: dict[str, bytes], **changes: Any) -> list[tuple[str, bytes]]:
    description = json.loads(files["model.json"])
    description.update(changes)
    return _with(files, **{"model.json": json.dumps(description).encode()})


def _wider_spec(files: dict[str, bytes]) -> list[tuple[str, bytes]]:
    description = json.loads(files["model.json"])
    spec = description["spec"]
    for layer in spec:
        if layer.get("type") == "conv2d":
            layer["filters"] = int(layer.get("filters", 8)) * 2
            break
    return _json_edit(files, spec=spec)


BUNDLE_CASES = [
    ("bundle-not-a-zip", lambda folder, good: _write(folder / "model.zip", b"PK? no, just text"), r"not a zip bundle"),
    ("bundle-pickle-inside", _bundle_case(lambda f: _with(f, **{"weights.pkl": b"\x80\x04cos\nsystem\n."})), r"pickle"),
    ("bundle-unexpected-member", _bundle_case(lambda f: _with(f, **{"run.sh": b"rm -rf ~"})), r"unexpected files"),
    ("bundle-wrong-shapes", _bundle_case(_wider_spec), r"shape"),
    ("bundle-missing-weights", _bundle_case(lambda f: [(k, v) for k, v in f.items() if k != "model.msgpack"]), r"lacks model.msgpack"),
    ("bundle-bad-json", _bundle_case(lambda f: _with(f, **{"model.json": b"{not json"})), r"not valid JSON"),
    ("bundle-newer-format", _bundle_case(lambda f: _json_edit(f, version=99)), r"newer version"),
    ("bundle-huge-declared-size", lambda folder, good: _patch_declared_size(_zip(folder / "model.zip", list(good.items())),
                                                                            "model.msgpack", 2_000_000_000), r"declares 2,000,000,000 bytes"),
    ("bundle-garbage-weights", _bundle_case(lambda f: _with(f, **{"model.msgpack": b"\xc1" * 100})), r"corrupt|weights"),
]


def all_cases() -> list[Case]:
    """Every case of the corpus (image and bundle cases are wrapped with their builders)."""
    cases: list[Case] = []
    for case_id, make, photo, upload in IMAGE_CASES:
        cases.append(Case(case_id, "image", lambda d, make=make: make(),
                          {"photo": photo, "cli-predict": photo, "rest": photo, "upload-image": upload}))
    cases += DATASET_CASES + PROJECT_CASES + SPEC_CASES + CONFIG_CASES
    for case_id, build, message in BUNDLE_CASES:
        cases.append(Case(case_id, "bundle", build, {"*": message}))
    return cases


def write_corpus(folder: Path, good_bundle: dict[str, bytes] | None = None, include_large: bool = True) -> dict[str, Any]:
    """Write each file case into folder/<case id>/ and return {case id: path or value}."""
    built: dict[str, Any] = {}
    for case in all_cases():
        if case.large and not include_large:
            continue
        target = folder / case.id
        target.mkdir(parents=True, exist_ok=True)
        if case.kind == "image":
            built[case.id] = _write(target / f"{case.id}.img", case.build(target))
        elif case.kind == "bundle":
            if good_bundle is not None:
                built[case.id] = case.build(target, good_bundle)
        else:
            built[case.id] = case.build(target)
    return built


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/bad_inputs/generate.py OUT_DIR")
    written = write_corpus(Path(sys.argv[1]))
    for case_id, value in written.items():
        print(f"{case_id:<36} {value if isinstance(value, Path) else repr(value)[:60]}")

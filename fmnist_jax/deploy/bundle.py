"""Model folders, one-file bundles and ONNX export: everything a trained model needs, with no pickle.

A model folder (models/demo) and a bundle (a zip of the same files) hold:
    model.json     format, spec, input shape, class names, preprocessing parameters
    model.msgpack  weights (flax msgpack of arrays, keyed by tree path)
    card.json      metrics and provenance: test accuracy, photo-like accuracy, date, command
    config.json    the training config (optional)
Bundles come from strangers, so loading one trusts nothing: only these member names, bounded declared
and actual sizes, no links, and weights that must fit the spec's shapes exactly.

"""
from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path
from typing import Any

from fmnist_jax.errors import UserError
from fmnist_jax.model import layer_specs
from fmnist_jax.training.trained import TrainedModel

FORMAT = "fmnist-studio-model"
FORMAT_VERSION = 1
MEMBER_LIMITS = {"model.json": 1_000_000, "model.msgpack": 500_000_000, "card.json": 1_000_000, "config.json": 1_000_000,
                 "model.tflite": 500_000_000}  # the TensorFlow Lite model, for phones (optional; never loaded here)
REQUIRED = ("model.json", "model.msgpack")
MAX_BUNDLE_BYTES = 600_000_000
MAX_COMPRESSION_RATIO = 200
ONNX_TOLERANCE = 1e-4


class BundleError(UserError):
    """A model folder or bundle that cannot be loaded; the message says why."""


class ExportError(UserError):
    """An export that failed its own check (e.g. ONNX probabilities differ from JAX)."""


# ----------------------------------------------------------------------------- model files

def model_files(model: TrainedModel, config: dict | None = None) -> dict[str, bytes]:
    """The files of a model folder or bundle, as name -> bytes."""
    from fmnist_jax.photos.pipeline_params import resolve_preprocess

    description = {"format": FORMAT, "version": FORMAT_VERSION, "spec": model.spec, "input_shape": list(model.input_shape),
                   "class_names": list(model.class_names),
                   "preprocess": resolve_preprocess(model.preprocess, model.input_shape),
                   "calibration": model.calibration}
    card = {k: v for k, v in model.card.items() if k != "config"}
    files = {"model.json": _json_bytes(description), "model.msgpack": model.weights_bytes(), "card.json": _json_bytes(card)}
    config = config if config is not None else model.card.get("config")
    if config:
        files["config.json"] = _json_bytes(config)
    return files


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v)) + "\n").encode()


def _parse_json(name: str, payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{name} is not valid JSON ({error})") from None


def model_from_files(files: dict[str, bytes], where: str) -> TrainedModel:
    """Build a TrainedModel from a model folder's files (BundleError naming what is wrong)."""
    from fmnist_jax.photos.pipeline_params import resolve_preprocess

    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise BundleError(f"{where} lacks {', '.join(missing)}; export the model again")
    description = _parse_json("model.json", files["model.json"])
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise BundleError(f"{where}: model.json is not a Fashion-MNIST Studio model description")
    if not isinstance(description.get("version"), int) or description["version"] > FORMAT_VERSION:
        raise BundleError(f"{where} was written by a newer version (format {description.get('version')}); upgrade Fashion-MNIST Studio")
    card = _parse_json("card.json", files["card.json"]) if "card.json" in files else {}
    config = _parse_json("config.json", files["config.json"]) if "config.json" in files else None
    if not isinstance(card, dict):
        raise BundleError(f"{where}: card.json must be a JSON object")
    try:
        class_names = description["class_names"]
        if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
            raise ValueError("class_names must be a list of names")
        input_shape = layer_specs.check_input_shape(description["input_shape"])
        preprocess = resolve_preprocess(description.get("preprocess"), input_shape)
        model = TrainedModel(description["spec"], input_shape, tuple(class_names), files["model.msgpack"], preprocess,
                             {**card, "config": config} if config is not None else card,
                             calibration=description.get("calibration"))
    except KeyError as error:
        raise BundleError(f"{where}: model.json lacks {error}") from None
    except (ValueError, TypeError) as error:
        raise BundleError(f"{where}: {error}") from None
    return model


def save_model_dir(model: TrainedModel, folder: str | Path, config: dict | None = None) -> Path:
    """Write a model folder (model.json, model.msgpack, card.json, config.json)."""
    from fmnist_jax import store

    folder = Path(folder)
    for name, payload in model_files(model, config).items():
        store.atomic_write_bytes(folder / name, payload)
    return folder


def load_model_dir(folder: str | Path) -> TrainedModel:
    """Load a model folder such as models/demo."""
    folder = Path(folder)
    files = {}
    for name, limit in MEMBER_LIMITS.items():
        path = folder / name
        if path.is_file():
            if path.stat().st_size > limit:
                raise BundleError(f"{path} is larger than the {limit:,}-byte limit")
            files[name] = path.read_bytes()
    return model_from_files(files, str(folder))


# ----------------------------------------------------------------------------- bundles

def bundle_bytes(model: TrainedModel, config: dict | None = None, tflite: bytes | None = None) -> bytes:
    """One zip with the model's files (for downloads and `export --format bundle`), and its checked
    TensorFlow Lite file when one is given."""
    buffer = io.BytesIO()
    files = {**model_files(model, config), **({"model.tflite": bytes(tflite)} if tflite else {})}
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, payload in files.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # reproducible bytes
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, payload)
    return buffer.getvalue()


def write_bundle(model: TrainedModel, path: str | Path, config: dict | None = None, tflite: bytes | None = None) -> Path:
    """Write the bundle zip to `path`."""
    from fmnist_jax import store

    path = Path(path)
    store.atomic_write_bytes(path, bundle_bytes(model, config, tflite))
    return path


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    limit = MEMBER_LIMITS[info.filename]
    with archive.open(info) as stream:
        payload = stream.read(limit + 1)
    if len(payload) > limit or len(payload) != info.file_size:
        raise BundleError(f"bundle member {info.filename} is larger than it declares (or than {limit:,} bytes); refused")
    return payload


def read_bundle_files(source: str | Path | bytes) -> dict[str, bytes]:
    """The members of a bundle zip, after checking it is not hostile (BundleError otherwise)."""
    if isinstance(source, (bytes, bytearray)):
        if len(source) > MAX_BUNDLE_BYTES:
            raise BundleError(f"the bundle is larger than {MAX_BUNDLE_BYTES // 10**6} MB")
        stream: Any = io.BytesIO(bytes(source))
        where = "the bundle"
    else:
        path = Path(source)
        if path.stat().st_size > MAX_BUNDLE_BYTES:
            raise BundleError(f"{path.name} is larger than {MAX_BUNDLE_BYTES // 10**6} MB")
        stream, where = path, path.name
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise BundleError(f"{where} is not a zip bundle ({error}); export it again with `export --format bundle`") from None
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        pickles = [n for n in names if n.lower().endswith((".pkl", ".pickle", ".pt", ".pth", ".joblib", ".npy", ".npz"))]
        if pickles:
            raise BundleError(f"{where} contains {', '.join(pickles[:3])}: pickle-like files can run code and are refused")
        unexpected = [n for n in names if n not in MEMBER_LIMITS]
        if unexpected:
            shown = ", ".join(repr(n) for n in unexpected[:3]) + (" ..." if len(unexpected) > 3 else "")
            raise BundleError(f"{where} contains unexpected files ({shown}); a bundle holds only {', '.join(MEMBER_LIMITS)}")
        if len(set(names)) != len(names):
            raise BundleError(f"{where} lists a file twice; refused")
        files = {}
        for info in infos:
            if stat.S_ISLNK(info.external_attr >> 16) or info.is_dir():
                raise BundleError(f"{where}: {info.filename} is a link or folder; refused")
            if info.file_size > MEMBER_LIMITS[info.filename]:
                raise BundleError(f"{where}: {info.filename} declares {info.file_size:,} bytes, over the "
                                  f"{MEMBER_LIMITS[info.filename]:,}-byte limit; refused")
            if info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO and info.file_size > 10**6:
                raise BundleError(f"{where}: {info.filename} expands {info.file_size / info.compress_size:.0f}-fold "
                                  f"(a zip bomb?); refused")
            try:
                files[info.filename] = _read_member(archive, info)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
                raise BundleError(f"{where}: {info.filename} is corrupt ({error})") from None
    return files


def load_bundle(source: str | Path | bytes) -> TrainedModel:
    """Load a bundle zip (path or bytes) written by write_bundle, refusing anything else."""
    where = "the bundle" if isinstance(source, (bytes, bytearray)) else Path(source).name
    return model_from_files(read_bundle_files(source), where)

"""Bring-your-own datasets: every format round-trips, trains, and refuses bad archives before reading them."""
from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import upload_samples as samples
from PIL import Image

from fmnist_jax import store
from fmnist_jax.cli import main as cli
from fmnist_jax.data import catalogue, splitting
from fmnist_jax.data.uploads import images, importer
from fmnist_jax.data.uploads import limits as upload_limits
from fmnist_jax.deploy import predict
from fmnist_jax.model import layer_specs, layers, presets
from fmnist_jax.photos import decode, pipeline_params
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.loop import run_to_completion, train
from fmnist_jax.training.trained import TrainedModel

TINY_SPEC = [{"type": "conv2d", "filters": 8, "kernel": 3, "padding": "same", "activation": "relu"},
             {"type": "maxpool", "pool": 2, "stride": 2}, {"type": "flatten"}, {"type": "dense", "units": 3}]
PER_SPLIT = {"train": 6, "val": 2, "test": 3}


def _zip_arrays(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, payload in files.items():
            archive.writestr(name, payload)
    return path


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def make_upload(kind: str, folder: Path) -> tuple[Path, dict]:
    """An upload of `kind` and what its manifest must say: class names and split counts."""
    train_x, train_y = samples.arrays(6, seed=1)
    test_x, test_y = samples.arrays(3, seed=2)
    numbered = ["0", "1", "2"]
    if kind == "folders":
        path = samples.folder_zip(folder / "photos.zip", PER_SPLIT)
        return path, {"names": list(samples.CLASSES), "counts": {"train": 18, "validation": 6, "test": 9}}
    if kind == "flat-folders":
        path = samples.folder_zip(folder / "flat.zip", {"train": 6}, root="flat")
        return path, {"names": list(samples.CLASSES), "counts": {"train": 18, "validation": None, "test": 0}}
    if kind == "kaggle-csv":
        path = folder / "fashion-mnist_train.csv"
        path.write_text(samples.kaggle_csv_text(train_x, train_y))
        return path, {"names": numbered, "counts": {"train": 18, "validation": None, "test": 0}, "arrays": train_x}
    if kind == "kaggle-csv-zip":
        path = _zip_arrays(folder / "kaggle.zip", {
            "data/fashion-mnist_train.csv": samples.kaggle_csv_text(train_x, train_y).encode(),
            "data/fashion-mnist_test.csv": samples.kaggle_csv_text(test_x, test_y).encode(),
            "data/classes.txt": "bars\ncolumns\nsquares\n".encode()})
        return path, {"names": list(samples.CLASSES), "counts": {"train": 18, "validation": None, "test": 9}, "arrays": train_x}
    if kind == "dls-csv":
        path = samples.dls_zip(folder / "dls.zip", {"train": 6, "test": 3})
        return path, {"names": list(samples.CLASSES), "counts": {"train": 18, "validation": None, "test": 9}}
    if kind == "npz":
        path = folder / "arrays.npz"
        path.write_bytes(_npz_bytes(x_train=train_x[..., 0], y_train=train_y, x_test=test_x[..., 0], y_test=test_y,
                                    x_val=test_x[:3, ..., 0], y_val=test_y[:3], class_names=np.array(samples.CLASSES)))
        return path, {"names": list(samples.CLASSES), "counts": {"train": 18, "validation": 3, "test": 9}, "arrays": train_x}
    if kind == "idx-folder":
        path = samples.idx_files(folder / "idx", (train_x, train_y), (test_x, test_y), gz=True)
        return path, {"names": numbered, "counts": {"train": 18, "validation": None, "test": 9}, "arrays": train_x}
    if kind == "idx-zip":
        raw = samples.idx_files(folder / "raw-idx", (train_x, train_y), (test_x, test_y), gz=False)
        path = _zip_arrays(folder / "idx.zip", {f"mnist/{p.name}": p.read_bytes() for p in raw.iterdir()})
        return path, {"names": numbered, "counts": {"train": 18, "validation": None, "test": 9}, "arrays": train_x}
    raise AssertionError(kind)


FORMATS = ["folders", "flat-folders", "kaggle-csv", "kaggle-csv-zip", "dls-csv", "npz", "idx-folder", "idx-zip"]


@pytest.mark.parametrize("kind", FORMATS)
def test_each_format_round_trips(kind: str, tmp_path: Path) -> None:
    path, expected = make_upload(kind, tmp_path)
    messages: list[str] = []
    manifest = importer.import_upload(path, progress=lambda fraction, message: messages.append(message))
    assert manifest["class_names"] == expected["names"]
    assert manifest["counts"] == expected["counts"]
    assert messages and manifest["skipped_count"] == 0
    dataset = catalogue.load_dataset(manifest["name"])
    assert dataset.class_names == tuple(expected["names"])
    assert len(dataset.train_labels) == expected["counts"]["train"]
    assert dataset.has_val == (expected["counts"]["validation"] is not None)
    assert manifest["arrays"]["train_images"] == splitting.array_digest(dataset.train_images)
    if "arrays" in expected:  # same-size arrays pass through bit for bit
        assert np.array_equal(dataset.train_images, expected["arrays"])
    # the split controls give three usable splits whatever the upload provided
    splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.2))
    assert all(count >= 3 for count in splits.counts().values())
    assert splits.counts() == splitting.split_counts(dataset, splits.spec)


@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_photos_go_through_the_prediction_pipeline(color: str, tmp_path: Path) -> None:
    path = samples.folder_zip(tmp_path / "photos.zip", {"train": 5})
    dataset = importer.load_upload(path, image_size=24, color=color)
    assert dataset.input_shape == (24, 24, 1 if color == "gray" else 3)
    with zipfile.ZipFile(path) as archive:  # each training image is exactly what the Deploy page makes of the file
        first = sorted(n for n in archive.namelist() if n.startswith("train/bars/"))[0]
        expected = images.prepare_image(archive.read(first), 24, color)
    assert any(np.array_equal(image, expected) for image in dataset.train_images[dataset.train_labels == 0])


def test_default_options_follow_the_data(tmp_path: Path) -> None:
    mixed = importer.import_upload(samples.folder_zip(tmp_path / "mixed.zip", {"train": 5}))
    assert (mixed["image_size"], mixed["color"]) == (upload_limits.DEFAULT_IMAGE_SIZE, "rgb")
    small_x, small_y = samples.arrays(4, size=20)
    path = tmp_path / "small.npz"
    path.write_bytes(_npz_bytes(x_train=small_x, y_train=small_y))
    small = importer.import_upload(path)
    assert (small["image_size"], small["color"], small["input_shape"]) == (20, "gray", [20, 20, 1])


def test_given_splits_are_respected_and_pooled_mode_pools_them(tmp_path: Path) -> None:
    dataset = importer.load_upload(samples.folder_zip(tmp_path / "splits.zip", {"train": 8, "val": 3, "test": 4}))
    official = splitting.make_splits(dataset, splitting.SplitSpec(mode="official"))
    assert official.counts() == {"train": 24, "validation": 9, "test": 12}
    assert np.array_equal(official.val_images, dataset.val_images)
    assert np.array_equal(official.test_images, dataset.test_images)
    pooled = splitting.make_splits(dataset, splitting.SplitSpec(mode="pooled", fractions=(0.6, 0.2, 0.2), seed=3))
    assert sum(pooled.counts().values()) == 45 and pooled.counts()["train"] == 27


def test_a_tiny_model_learns_an_upload_in_one_epoch(tmp_path: Path) -> None:
    dataset = importer.load_upload(samples.folder_zip(tmp_path / "learn.zip", {"train": 40, "test": 4}),
                                  image_size=16, color="gray")
    splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.1))
    cfg = TrainConfig(epochs=1, batch_size=8, learning_rate=3e-3, chunk_steps=50, seed=0)
    done = run_to_completion(train(TINY_SPEC, cfg, splits))
    model = TrainedModel(TINY_SPEC, splits.input_shape, splits.class_names, done["weights"])
    accuracy = float((model.predict_proba(splits.train_images).argmax(1) == splits.train_labels).mean())
    assert accuracy > 0.6, f"training accuracy {accuracy:.2f} is not clearly above chance (0.33)"
    assert model.class_names == samples.CLASSES


def test_rgb_32_builds_every_preset_that_fits() -> None:
    rows = presets.preset_table((32, 32, 3), 3)
    assert any(row["fits"] for row in rows)
    for row in rows:
        spec = presets.preset(row["name"], 3)
        if not row["fits"]:
            assert row["reason"]  # says why (too deep for the input)
            continue
        info = layer_specs.describe(spec, (32, 32, 3), 3)
        model = layers.build_model(spec, (32, 32, 3), 3)
        assert layers.count_params(model) == info["total_params"] == row["params"]
        import jax.numpy as jnp
        logits = model(jnp.zeros((2, 32, 32, 3)), layers.Context(train=False))
        assert logits.shape == (2, 3)


def test_too_deep_preset_says_so() -> None:
    rows = {row["name"]: row for row in presets.preset_table((4, 4, 1), 3)}
    assert not rows["fast"]["fits"] and "layer" in rows["fast"]["reason"]


def test_cli_trains_on_an_upload_and_evaluate_finds_it(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      workspace: Path) -> None:
    path = samples.folder_zip(tmp_path / "cli.zip", {"train": 12, "test": 3})
    spec = tmp_path / "spec.json"
    spec.write_text(__import__("json").dumps(TINY_SPEC))
    run_dir = tmp_path / "run"
    status = cli.main(["train", "--dataset", str(path), "--image-size", "16", "--color", "gray", "--model", str(spec),
                       "--epochs", "1", "--batch-size", "4", "--json", "--out", str(run_dir)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    out = captured.out.strip().splitlines()[-1]
    result = __import__("json").loads(out)
    assert status == 0 and result["dataset"].startswith("upload/") and result["train_size"] > 0
    run = store.read_json(run_dir / "run.json")
    assert run["class_names"] == list(samples.CLASSES) and run["input_shape"] == [16, 16, 1]
    assert run["preprocess"] == images.PREPROCESS  # photos will get the resize the training images got
    assert cli.main(["evaluate", str(run_dir), "--json"]) == 0


def test_deploy_prediction_uses_the_uploads_class_names(tmp_path: Path) -> None:
    path = samples.folder_zip(tmp_path / "deploy.zip", {"train": 30})
    dataset = importer.load_upload(path, image_size=16, color="gray")
    splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.1))
    done = run_to_completion(train(TINY_SPEC, TrainConfig(epochs=2, batch_size=8, learning_rate=3e-3), splits))
    model = TrainedModel(TINY_SPEC, splits.input_shape, splits.class_names, done["weights"],
                         preprocess=pipeline_params.resolve_preprocess(images.PREPROCESS, splits.input_shape))
    with zipfile.ZipFile(path) as archive:
        files = [(name, archive.read(name)) for name in sorted(archive.namelist()) if name.startswith("train/")][:6]
    results = predict.predict_files(model, files)
    assert all(r["label"] in samples.CLASSES for r in results)
    assert {r["top3"][0][0] for r in results} <= set(samples.CLASSES)


def test_second_import_is_served_from_the_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = samples.folder_zip(tmp_path / "again.zip", {"train": 4})
    first = importer.import_upload(path)
    monkeypatch.setattr(importer, "PARSERS", {})  # any re-conversion would fail
    assert importer.import_upload(path) == first
    assert [m["name"] for m in importer.list_uploads()] == [first["name"]]
    assert importer.read_manifest(first["name"])["id"] == first["id"]
    importer.delete_upload(first["name"])
    assert importer.list_uploads() == []
    with pytest.raises(catalogue.DataUnavailable, match="upload it again"):
        catalogue.load_dataset(first["name"])


def test_import_stream_copies_under_the_cap_and_cleans_up(tmp_path: Path, workspace: Path) -> None:
    payload = samples.folder_zip(tmp_path / "stream.zip", {"train": 4}).read_bytes()
    manifest = importer.import_stream(io.BytesIO(payload), "../../My Photos.zip")
    assert manifest["display_name"] == "../../My Photos.zip" and manifest["counts"]["train"] == 12
    assert not any((workspace / "datasets" / ".incoming").iterdir())
    small = upload_limits.UploadLimits(**{**upload_limits.LOCAL_LIMITS.to_dict(), "max_archive_bytes": 1000})
    with pytest.raises(upload_limits.UploadError, match="larger than the upload limit"):
        importer.import_stream(io.BytesIO(payload), "big.zip", limits=small)
    assert not any((workspace / "datasets" / ".incoming").iterdir())


def test_damaged_images_are_skipped_and_listed(tmp_path: Path) -> None:
    good = samples.folder_zip(tmp_path / "good.zip", {"train": 4})
    path = tmp_path / "mixed.zip"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        png = source.read(next(n for n in source.namelist() if n.endswith(".png")))
        target.writestr("train/bars/truncated.png", png[: len(png) // 2])
        target.writestr("train/bars/notes.txt", b"not an image")
        target.writestr("train/bars/drawing.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>")
    manifest = importer.import_upload(path)
    reasons = {entry["file"].rsplit("/", 1)[-1]: entry["reason"] for entry in manifest["skipped"]}
    assert set(reasons) == {"truncated.png", "notes.txt", "drawing.svg"}
    assert "SVG" in reasons["drawing.svg"] and "corrupt" in reasons["truncated.png"]
    assert manifest["counts"]["train"] == 12


# ----------------------------------------------------------------------------- refused before extraction

class _NoReads:
    """Make any attempt to read an archive member fail the test (the checks must come first)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: pytest.fail("a member was read before the checks"))


def _assert_no_leftovers(workspace: Path) -> None:
    datasets = workspace / "datasets"
    assert not datasets.exists() or not [p for p in datasets.iterdir() if p.name != ".incoming"]


def _zip_with(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, payload in entries:
            archive.writestr(info, payload)
    return path


def _refused(path: Path, match: str, limits: upload_limits.UploadLimits | None = None) -> None:
    with pytest.raises(upload_limits.UploadError, match=match):
        importer.import_upload(path, limits=limits)


def test_oversized_archive_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace: Path) -> None:
    path = samples.folder_zip(tmp_path / "big.zip", {"train": 4})
    _NoReads(monkeypatch)
    small = upload_limits.UploadLimits(**{**upload_limits.PUBLIC_LIMITS.to_dict(), "max_archive_bytes": 1024})
    _refused(path, "upload limit is 0 MB|the upload limit", small)
    _assert_no_leftovers(workspace)


def test_too_many_files_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace: Path) -> None:
    path = _zip_with(tmp_path / "many.zip", [(f"a/{i}.png", b"") for i in range(60)])
    _NoReads(monkeypatch)
    few = upload_limits.UploadLimits(**{**upload_limits.LOCAL_LIMITS.to_dict(), "max_files": 50})
    _refused(path, "holds 60 files; the limit is 50", few)
    _assert_no_leftovers(workspace)


def test_zip_bomb_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace: Path) -> None:
    path = _zip_with(tmp_path / "bomb.zip", [("train/a/zeros.png", bytes(64 * 2**20))])
    _NoReads(monkeypatch)
    _refused(path, "likely zip bomb")
    _assert_no_leftovers(workspace)


@pytest.mark.parametrize("member, message", [
    ("../evil/a.png", r"climbs out of the archive"),
    ("/etc/a.png", "absolute path"),
    ("C:/Windows/a.png", "absolute path"),
    ("train\\..\\..\\a.png", "climbs out"),
])
def test_unsafe_member_paths_are_refused(member: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         workspace: Path) -> None:
    info = zipfile.ZipInfo("placeholder.png")
    info.filename = member  # ZipInfo normalises names on creation; set the raw hostile name afterwards
    path = _zip_with(tmp_path / "unsafe.zip", [(info, b"x")])
    _NoReads(monkeypatch)
    _refused(path, message)
    _assert_no_leftovers(workspace)


def test_symlink_member_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace: Path) -> None:
    info = zipfile.ZipInfo("train/a/link.png")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    path = _zip_with(tmp_path / "link.zip", [(info, b"/etc/passwd")])
    _NoReads(monkeypatch)
    _refused(path, "symbolic link")
    _assert_no_leftovers(workspace)


def test_decompression_bomb_image_is_refused_before_decoding(tmp_path: Path, workspace: Path) -> None:
    buffer = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buffer, "PNG")  # 144 megapixels, a few hundred kB
    path = _zip_with(tmp_path / "pixels.zip", [("a/huge.png", buffer.getvalue()), ("b/ok.png", buffer.getvalue())])
    _refused(path, "megapixels", upload_limits.PUBLIC_LIMITS)
    _assert_no_leftovers(workspace)


def test_total_pixels_are_checked_from_headers(tmp_path: Path, workspace: Path) -> None:
    buffer = io.BytesIO()
    Image.new("L", (1000, 1000)).save(buffer, "PNG")
    path = _zip_with(tmp_path / "total.zip", [(f"{c}/{i}.png", buffer.getvalue()) for c in "ab" for i in range(3)])
    few_pixels = upload_limits.UploadLimits(**{**upload_limits.LOCAL_LIMITS.to_dict(), "max_total_pixels": 5_000_000})
    _refused(path, "gigapixels", few_pixels)
    _assert_no_leftovers(workspace)


def test_limits_are_stated_and_public_is_lower() -> None:
    local, public = upload_limits.LOCAL_LIMITS, upload_limits.PUBLIC_LIMITS
    assert local.max_archive_bytes >= 2**30 and local.max_files >= 100_000
    for field, value in public.to_dict().items():
        assert value <= local.to_dict()[field], field
    assert any("GB" in line for line in local.describe())
    assert upload_limits.limits_for_mode(public=True).max_archive_bytes <= public.max_archive_bytes
    assert local.max_image_pixels <= decode.MAX_PIXELS  # the header check never admits what the pipeline refuses


def test_write_failure_leaves_no_partial_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace: Path) -> None:
    path = samples.folder_zip(tmp_path / "full.zip", {"train": 4})
    real_save = np.save

    def disk_full(file, *args, **kwargs):
        if "test_images" in str(file):
            raise OSError(28, "No space left on device")
        return real_save(file, *args, **kwargs)

    monkeypatch.setattr(catalogue.np, "save", disk_full)
    with pytest.raises(store.StoreError, match="read-only or full"):
        importer.import_upload(path)
    _assert_no_leftovers(workspace)


def test_one_browser_upload_limit_in_the_code_the_streamlit_config_and_the_dockerfile() -> None:
    import tomllib
    from pathlib import Path

    from fmnist_jax.studio import public
    repo = Path(__file__).resolve().parents[1]
    config = tomllib.loads((repo / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == upload_limits.BROWSER_UPLOAD_MB == upload_limits.browser_upload_mb(False)
    docker = (repo / "Dockerfile").read_text()
    space_mb = public.PublicLimits().upload_cap_mb
    assert f"STREAMLIT_SERVER_MAX_UPLOAD_SIZE={space_mb}" in docker and f"FMNIST_PUBLIC_UPLOAD_MB={space_mb}" in docker
    assert upload_limits.browser_limits(public=True).max_archive_bytes == space_mb * 2**20
    assert upload_limits.browser_limits(public=False).max_archive_bytes == upload_limits.BROWSER_UPLOAD_MB * 2**20


def test_a_folder_sent_as_files_imports_like_a_zip_and_cannot_escape(tmp_path) -> None:
    import io as _io

    from PIL import Image as _Image
    rng = np.random.default_rng(0)

    def png(value: int) -> bytes:
        buffer = _io.BytesIO()
        _Image.fromarray(np.full((8, 8), value, np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    files = [(f"../../outside/{cls}/{i}.png", png(int(rng.integers(0, 255)))) for cls in ("a", "b") for i in range(6)]
    manifest = importer.import_files(files, "outside", home=tmp_path)
    assert manifest["num_classes"] == 2 and manifest["class_names"] == ["a", "b"]
    assert not (tmp_path.parent / "outside").exists()  # the '..' parts were dropped, nothing written outside
    with pytest.raises(importer.UploadError, match="the folder has no files"):
        importer.import_files([("../", b"")], "empty", home=tmp_path)
    small = upload_limits.UploadLimits(**{**upload_limits.LOCAL_LIMITS.to_dict(), "max_archive_bytes": 100})
    with pytest.raises(importer.UploadError, match="the upload limit is"):
        importer.import_files(files, "big", limits=small, home=tmp_path)

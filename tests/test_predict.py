"""Photo pipeline: synthetic photos of test-set garments come out like the originals; bad files are refused clearly."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist_jax.cli import main as cli
from fmnist_jax.deploy import predict
from fmnist_jax.photos import decode, pipeline, pipeline_params, synthetic

SAMPLES = Path(__file__).parent / "data" / "fashion_mnist_test_samples.npz"
# Pipeline acceptance, measured on 20 garments (2 per class) x 7 photo variants:
MIN_MEDIAN_CORRELATION = 0.7    # median Pearson r of the 28x28 model input vs the original test image, per variant (measured 0.75-0.90)
MIN_AGREEMENT = 0.85            # demo model: share of photos labelled like the original image, all variants (measured 0.95)


@pytest.fixture(scope="module")
def samples() -> tuple[np.ndarray, np.ndarray]:
    """Two Fashion-MNIST test images per class (28x28 uint8) and their labels (shipped in tests/data)."""
    with np.load(SAMPLES, allow_pickle=False) as stored:
        images, labels = stored["images"], stored["labels"]
    pick = np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(10)])
    return images[pick], labels[pick]


@pytest.fixture(scope="module")
def demo_model():
    return predict.load_model("demo")


@pytest.fixture(scope="module")
def base_model():
    """The Fashion-MNIST-only model with the "garment" pipeline, which the photo-like renderings check: they
    keep dark-background renderings already negative, which only that mode expects (real photos are judged
    with the demo model's "grabcut" mode in test_real_photos.py)."""
    return predict.load_model(str(predict.DEMO_DIR.parent / "fashion-base"))


def _png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def _spec(index: int, light: bool, rng: np.random.Generator) -> synthetic.PhotoSpec:
    return synthetic.PhotoSpec(
        light_background=light, size=(240, 180), garment_fraction=0.7, angle=float(rng.uniform(-8, 8)),
        offset=(float(rng.uniform(-0.7, 0.7)), float(rng.uniform(-0.7, 0.7))), tint=tuple(rng.uniform(0.5, 1.0, 3)),
        texture=("fabric", "wood", "wall")[index % 3], background_level=0.85 if light else 0.12,
        shadow=0.2 if light and index % 2 else 0.0, noise=0.01, jpeg_quality=80)


def photo_variants(index: int, image: np.ndarray, rng: np.random.Generator) -> dict[str, bytes]:
    """One garment as seven kinds of upload: light and dark textured JPEGs, EXIF-rotated, RGBA cut-out, 16-bit PNG, GIF."""
    light = synthetic.render(image, _spec(index, True, rng), rng)
    dark = synthetic.render(image, _spec(index, False, rng), rng)
    light_image = Image.fromarray(np.round(light * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": stored sideways, as phones do
    rotated = io.BytesIO()
    light_image.transpose(Image.Transpose.ROTATE_90).save(rotated, "JPEG", quality=85, exif=exif.tobytes())
    negative = np.asarray(Image.fromarray(image).resize((140, 140), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    alpha = np.round(np.clip(negative / 0.08, 0, 1) * 255).astype(np.uint8)
    colour = np.round((1 - negative)[..., None] * np.array([0.8, 0.35, 0.3]) * 255).astype(np.uint8)
    colour[alpha == 0] = rng.integers(0, 256, (int((alpha == 0).sum()), 3), dtype=np.uint8)  # junk under transparency
    gray16 = np.round(synthetic.render(image, _spec(index + 1, True, rng), rng).mean(axis=-1) * 65535).astype(np.uint16)
    gif = io.BytesIO()
    light_image.quantize(64).save(gif, "GIF")
    return {"light background": synthetic.encode(light, 80), "dark background": synthetic.encode(dark, 80),
            "exif rotated": rotated.getvalue(), "rgba cut-out": _png(Image.fromarray(np.dstack([colour, alpha]), "RGBA")),
            "16-bit png": _png(Image.fromarray(gray16)), "palette gif": gif.getvalue(),
            "plain png": synthetic.encode(light, 0)}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


@pytest.fixture(scope="module")
def pipeline_results(samples, base_model):
    images, _ = samples
    rng = np.random.default_rng(0)
    results: dict[str, list[tuple[np.ndarray, decode.PhotoResult]]] = {}
    for index, image in enumerate(images):
        for kind, payload in photo_variants(index, image, rng).items():
            results.setdefault(kind, []).append((image, pipeline.preprocess_photo(payload, base_model.preprocess, (28, 28, 1))))
    return results


def test_synthetic_photos_correlate_with_the_original(pipeline_results):
    medians = {kind: float(np.median([_correlation(r.model_input[..., 0], original) for original, r in rows]))
               for kind, rows in pipeline_results.items()}
    assert all(m >= MIN_MEDIAN_CORRELATION for m in medians.values()), medians


def test_base_model_labels_photos_like_the_originals(pipeline_results, base_model):
    originals = np.stack([original for rows in pipeline_results.values() for original, _ in rows])
    inputs = np.stack([r.model_input for rows in pipeline_results.values() for _, r in rows])
    agreement = float(np.mean(base_model.predict_proba(originals).argmax(1) == base_model.predict_proba(inputs).argmax(1)))
    assert agreement >= MIN_AGREEMENT, agreement


def test_exif_orientation_is_applied(samples):
    image = samples[0][0]
    rng = np.random.default_rng(1)
    upright = Image.fromarray(np.round(synthetic.render(image, _spec(0, True, rng), rng) * 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(sideways, "PNG", exif=exif.tobytes())
    decoded, _ = decode.decode_image(sideways.getvalue(), work_size=1024)
    assert decoded.shape[:2] == (upright.height, upright.width)
    assert np.abs(decoded - np.asarray(upright, dtype=np.float32) / 255).max() < 1e-6


def test_steps_show_the_whole_path(samples):
    rng = np.random.default_rng(2)
    payload = synthetic.encode(synthetic.render(samples[0][0], _spec(0, True, rng), rng), 85)
    result = pipeline.preprocess_photo(payload)
    assert [name for name, _ in result.steps] == ["original", "background removed", "cropped", "model input"]
    assert all(step.dtype == np.uint8 for _, step in result.steps)
    assert result.model_input.shape == (28, 28, 1) and result.model_input.dtype == np.uint8
    assert np.array_equal(result.steps[-1][1], result.model_input[..., 0])
    assert result.info["inverted"] is True


def test_dataset_images_pass_through_unchanged(samples):
    for image in samples[0][:5]:
        result = pipeline.preprocess_photo(_png(Image.fromarray(image)))
        assert np.array_equal(result.model_input[..., 0], image)
        assert result.info["passthrough"]


def test_upscaled_dataset_image_is_not_inverted(samples):
    image = samples[0][3]
    result = pipeline.preprocess_photo(_png(Image.fromarray(image).resize((112, 112), Image.Resampling.BICUBIC)))
    assert result.info["inverted"] is False
    assert _correlation(result.model_input[..., 0], image) > 0.9


def test_preprocess_parameters_are_validated():
    assert pipeline_params.resolve_preprocess(None)["mode"] == "garment"
    assert pipeline_params.resolve_preprocess(None, (32, 32, 3))["mode"] == "resize"
    with pytest.raises(ValueError, match="unknown preprocessing setting"):
        pipeline_params.resolve_preprocess({"colour": 1})
    with pytest.raises(ValueError, match="preprocessing 'fit' must be at most 1, got 3"):
        pipeline_params.resolve_preprocess({"fit": 3})


def test_resize_mode_for_colour_models():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    result = pipeline.preprocess_photo(_png(photo), None, (32, 32, 3))
    assert result.model_input.shape == (32, 32, 3)


# ----------------------------------------------------------------------------- refusals

def _png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims another size (how decompression bombs and empty images look)."""
    payload = _png(Image.new("L", (1, 1)))
    header = struct.pack(">II", width, height) + payload[24:29]
    return payload[:16] + header + struct.pack(">I", zlib.crc32(payload[12:16] + header)) + payload[33:]


def _bad_files() -> dict[str, tuple[bytes, str]]:
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    png = bytearray(_png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))))
    png[45] ^= 0xFF  # inside the IDAT data: its CRC no longer matches
    return {
        "empty.png": (b"", "empty"),
        "notes.png": (b"these are my notes, not a picture\n" * 10, "not an image"),
        "truncated.jpg": (jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "truncated or corrupt"),
        "bad-crc.png": (bytes(png), "corrupt"),
        "bomb.png": (_png_with_size(30000, 30000), "megapixels"),
        "zero.png": (_png_with_size(0, 0), "corrupt|empty"),
        "dot.png": (_png(Image.new("RGB", (1, 1))), "at least 8 pixels"),
        "strip.png": (_png(Image.new("RGB", (10000, 1))), "at least 8 pixels|strip"),
        "ribbon.png": (_png(Image.new("RGB", (4000, 10))), "strip"),
        "flat.png": (_png(Image.new("RGB", (64, 64), (200, 30, 30))), "single flat colour"),
        "drawing.svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        "phone.heic": (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, "HEIC"),
    }


@pytest.mark.parametrize("name", list(_bad_files()))
def test_bad_file_is_refused_with_a_clear_message(name):
    payload, expected = _bad_files()[name]
    with pytest.raises(decode.ImageError, match=expected):
        pipeline.preprocess_photo(payload)


def test_oversized_file_is_refused(monkeypatch):
    monkeypatch.setattr(decode, "MAX_UPLOAD_BYTES", 1000)
    with pytest.raises(decode.ImageError, match="limit is"):
        pipeline.preprocess_photo(b"\x89PNG" + b"\x00" * 2000)


def test_bad_files_do_not_stop_the_batch(demo_model, samples):
    good = _png(Image.fromarray(samples[0][0]))
    bad = _bad_files()
    files = [("first.png", good)] + [(name, payload) for name, (payload, _) in bad.items()] + [("last.png", good)]
    results = predict.predict_files(demo_model, files)
    assert [r["file"] for r in results] == [name for name, _ in files]
    assert "label" in results[0] and "label" in results[-1]
    assert all(set(r) == {"file", "error"} for r in results[1:-1])
    assert results[0]["label"] == demo_model.class_names[int(samples[1][0])]


def test_prediction_record_fields(demo_model, samples):
    [result] = predict.predict_files(demo_model, [("a.png", _png(Image.fromarray(samples[0][0])))])
    assert set(result) == {"file", "label", "index", "probability", "top3", "probs", "steps", "unsure"}
    assert result["label"] == demo_model.class_names[result["index"]] == result["top3"][0][0]
    assert len(result["top3"]) == 3 and result["top3"][0][1] == pytest.approx(result["probability"])
    assert sum(result["probs"]) == pytest.approx(1.0, abs=1e-5)


def test_load_model_refuses_unknown_sources(tmp_path):
    for source in ("", "nonsense", str(tmp_path)):
        with pytest.raises(ValueError, match="model"):
            predict.load_model(source)


# ----------------------------------------------------------------------------- CLI

def test_predict_json_schema(tmp_path, capsys, samples):
    good = tmp_path / "good.png"
    good.write_bytes(_png(Image.fromarray(samples[0][0])))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    status = cli.main(["predict", "demo", str(good), str(bad), str(tmp_path / "missing.jpg"), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert status == 2
    assert [set(r) for r in rows] == [{"file", "label", "index", "probability", "top3", "unsure"}, {"file", "error"}, {"file", "error"}]
    assert isinstance(rows[0]["unsure"], bool)
    first = rows[0]
    assert first["file"] == str(good) and isinstance(first["index"], int) and 0 <= first["probability"] <= 1
    assert all(isinstance(label, str) and 0 <= p <= 1 for label, p in first["top3"])
    assert cli.main(["predict", "demo", str(good), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1


def test_predict_cli_with_an_unknown_model_is_one_line(capsys):
    assert cli.main(["predict", "no-such-model", "x.png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1

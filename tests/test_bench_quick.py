"""Every benchmark in bench/ runs end to end in --quick mode and prints the JSON keys the README relies on."""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow  # starts servers, browsers or trains: out of the quick inner loop


def _run(script: str, *args: str, timeout: float = 600) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "bench" / script), "--quick", "--json", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) > 1, "a table is printed before the JSON line"
    return json.loads(lines[-1])


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is a benchmark-only dependency (requirements-bench.txt)")
def test_throughput_quick() -> None:
    out = _run("throughput.py")
    for key in ("jax_img_s_128", "torch_img_s_128", "ratio_128", "jax_img_s_512", "torch_img_s_512", "ratio_512",
                "flop_utilisation_512"):
        assert isinstance(out[key], float) and out[key] > 0, key
    assert out["ratio_512"] == pytest.approx(out["jax_img_s_512"] / out["torch_img_s_512"], rel=0.01)
    assert out["eval_img_s"] > 0


def test_throughput_quick_without_torch() -> None:
    out = _run("throughput.py", "--no-torch", "--batch-sizes", "32")
    assert out["jax_img_s_32"] > 0 and out["torch_img_s_32"] is None and out["ratio_32"] is None
    if out["devices"] > 1:  # the CPU split into devices (cpu_devices): the same chunk on one device beside it
        assert out["jax_one_device_img_s_32"] > 0
        assert out["ratio_devices_32"] == pytest.approx(out["jax_img_s_32"] / out["jax_one_device_img_s_32"], rel=0.5)
    else:
        assert out["jax_one_device_img_s_32"] is None and out["ratio_devices_32"] is None


def test_throughput_quick_in_bfloat16() -> None:
    with_torch = importlib.util.find_spec("torch") is not None  # PyTorch's side (autocast) where it is installed
    out = _run("throughput.py", "--precision", "bfloat16", "--batch-sizes", "32", *([] if with_torch else ["--no-torch"]))
    assert out["precision"] == "bfloat16" and out["jax_img_s_32"] > 0 and out["peak_gflops"] > 0
    assert (out["torch_img_s_32"] > 0) if with_torch else out["torch_img_s_32"] is None


def test_step_variants_quick() -> None:
    out = _run("step_variants.py")
    for name, variants in (("masks", {"threefry", "hash"}), ("pieces", {"32 images", "8 images", "16 images"}),
                           ("pool", {"reduction", "mask"}), ("devices", {"one device", "per core"}),
                           ("conv", {"xla_dots", "im2col"}), ("kgrad", {"row-major patches", "transposed patches"}),
                           ("winograd", {"xla_dots", "F3", "F2"})):
        result = out[name]["32"]
        assert set(result) == variants | {"ratio"}, name
        assert all(result[v] > 0 for v in variants) and result["ratio"] > 0, name
    layers = [row["layer"] for row in out["breakdown"]]
    assert layers[0] == "1: conv2d" and layers[-1].endswith(": dense") and len(layers) == 11
    assert out["breakdown"][-1]["cumulative_ms"] > 0


def test_step_variants_breakdown_of_a_batchnorm_preset() -> None:
    """The per-layer breakdown also times stacks with BatchNorm (it raised NNX's TraceContextError on them)."""
    out = _run("step_variants.py", "--preset", "fast256", "--compare", "pool")
    assert out["preset"] == "fast256" and set(out["pool"]["32"]) == {"reduction", "mask", "ratio"}
    layers = [row["layer"] for row in out["breakdown"]]
    assert layers[:3] == ["1: conv2d", "2: batchnorm", "3: activation"] and len(layers) == 16
    assert layers[-1] == "16: dense" and out["breakdown"][-1]["cumulative_ms"] > 0


def test_winograd_branches_quick() -> None:
    """Gradients match the reference that shares the program's pre-activations; any gap to the plain reference
    comes with a ReLU pre-activation that changed sign."""
    out = _run("winograd_branches.py")
    for impl in ("xla_dots", "winograd"):
        result = out[impl]
        assert len(result["sign_changes"]) == 3 and len(result["gradient_errors"]) == 10
        assert all(e["vs_same_values"] < 2e-5 for e in result["gradient_errors"]), impl
        if any(e["vs_plain"] > 2e-5 for e in result["gradient_errors"]):
            assert sum(result["sign_changes"]) > 0, impl
    assert out["xla_dots"]["sign_changes"] == [0, 0, 0]  # XLA's own forward: the same values, bit for bit


def test_step_variants_outside_the_default_set_quick() -> None:  # the dense upper bound and the precision comparison
    out = _run("step_variants.py", "--compare", "dense,precision")
    for name, variants in (("dense", {"trained", "frozen head"}), ("precision", {"float32", "bfloat16"})):
        result = out[name]["32"]
        assert set(result) == variants | {"ratio"} and min(result.values()) > 0, name


def test_time_to_accuracy_quick() -> None:
    out = _run("time_to_accuracy.py")
    assert set(out) >= {"preset", "seconds_to_93", "seconds_to_94", "seconds_to_95", "best_test_accuracy", "epochs"}
    assert out["preset"] == "fast" and out["epochs"] == 1 and 0.0 <= out["best_test_accuracy"] <= 1.0
    for key in ("seconds_to_93", "seconds_to_94", "seconds_to_95"):
        assert out[key] is None or out[key] > 0
    assert out["curve"][0]["epoch"] == 1 and out["config_file"] == "bench/configs/fast_best.json"


def test_startup_quick() -> None:
    out = _run("startup.py", timeout=900)
    assert 0 < out["app_first_page_s"] < 120
    assert out["train_first_record_cold_s"] > 0 and out["train_first_record_warm_s"] > 0
    assert out["compile_warm_s"] <= out["compile_cold_s"] + 1.0  # the persistent cache was used
    assert out["compile_retuned_s"] <= out["compile_cold_s"] + 1.0  # and served other epochs, rate and size


def test_inference_quick() -> None:
    out = _run("inference.py")
    for key in ("eval_img_s", "predict_28_p50_ms", "predict_12mp_p50_ms"):
        assert isinstance(out[key], float) and out[key] > 0, key
    # the 12 MP photo is decoded, cropped and resized before the same model runs: it cannot be cheaper
    assert out["predict_12mp_p50_ms"] > out["predict_28_p50_ms"]
    assert out["rest"]["28x28 PNG"]["errors"] == 0 and out["rest"]["12 MP JPEG (4000x3000)"]["errors"] == 0
    assert out["onnx_max_abs_diff"] < 1e-4 and out["onnx"]["argmax_agreement"] == 1.0
    assert out["evaluation"]["images"] == 1000
    stages = out["stages"]["12 MP JPEG (4000x3000)"]  # where the time goes: each stage timed, none negative
    assert set(stages) >= {"decode and resize", "GrabCut", "rest of the pipeline", "model", "REST request around it"}
    assert all(value >= 0 for value in stages.values()) and stages["GrabCut"] > stages["model"]


def test_sweep_quick() -> None:
    out = _run("sweep.py", "--candidate", 'sgd={"optimizer": "sgd", "learning_rate": 0.05}')
    names = [c["name"] for c in out["candidates"]]
    assert names == ["base", "sgd"] and out["best"] in names
    assert out["candidates"][1]["config"]["optimizer"] == "sgd"
    assert out["candidates"][1]["config"]["augment"] == out["candidates"][0]["config"]["augment"]  # merged, not replaced
    for candidate in out["candidates"]:
        assert [c["epoch"] for c in candidate["curve"]] == [1]
        assert 0.0 <= candidate["final_val_accuracy"] <= 1.0


def test_csv_memory_quick() -> None:
    out = _run("csv_memory.py")
    assert out["rows"] == 2000 and out["counts"]["train"] == 2000
    assert out["peak_kib"] >= out["baseline_kib"] > 0 and out["seconds"] > 0


def test_real_photos_bench_scores_a_folder(tmp_path) -> None:
    """bench/real_photos.py on a small photo folder made here (the real development set is the README's run)."""
    from test_photos_adapt import _photo_folder

    root = _photo_folder(tmp_path / "photos")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "bench" / "real_photos.py"), str(root), "--model", "demo", "--json",
                             "--sheet", str(tmp_path / "sheet.png")], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(out["per_folder"]) == {"tops", "trousers", "other"} and out["n"] == 36
    assert {k: v["total"] for k, v in out["per_folder"].items()} == {"tops": 12, "trousers": 12, "other": 12}
    assert 0 <= out["accuracy"] <= 1 and 0 <= out["unsure_unknown"] <= 1
    assert (tmp_path / "sheet.png").stat().st_size > 0


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian's chromium (.ci/run installs it)")
def test_load_test_short_mode_public_space_stays_up_and_refuses_the_hostile_jobs() -> None:
    """bench/load_test.py --quick: visitors predicting over /api, a training page, a hostile visitor."""
    out = _run("load_test.py")
    assert out["requests"] > 30 and out["errors"] == 0 and out["ok"] > 0, {k: out.get(k) for k in ("requests", "ok", "errors", "error_kinds", "p95_ms", "max_ms")}
    assert out["p95_ms"] is not None and out["server_rss_peak_mb"] > 0
    assert all(t["done"] for t in out["trainings"]), out["trainings"]
    assert out["hostile_page"]["refused"] and out["hostile_page"]["seconds"] < 30
    assert [r["exit"] for r in out["hostile_cli"]] == [2, 2]
    assert all(r["message"].startswith("error: this model has") for r in out["hostile_cli"])


def test_load_test_of_photo_serving_posts_distinct_photos_and_counts_every_answer(tmp_path: Path) -> None:
    """bench/photo_load.py --quick: a real `serve demo` answers each client's own photos, re-encoded at 640 px."""
    from PIL import Image, ImageDraw

    for number in range(24):  # garment-like shapes on light floors, in two subfolders as a photo dataset has
        folder = tmp_path / ("tops" if number % 2 else "other")
        folder.mkdir(exist_ok=True)
        image = Image.new("RGB", (1280, 960), (200 + number, 196, 188 - number))
        ImageDraw.Draw(image).polygon([(500, 180), (780, 180), (940, 340), (840, 400), (820, 800), (460, 800), (440, 400),
                                       (340, 340)], fill=(30 + 5 * number, 60, 120))
        image.save(folder / f"{number:02d}.jpg", quality=90)
    out = _run("photo_load.py", str(tmp_path))
    assert out["photos"] == 24 and out["cores"] >= 1
    (row,) = out["rows"]
    assert row["target"] == "serve" and row["clients"] == 4 and row["errors"] == 0
    assert row["answers"] >= 8 and row["photos_per_s"] == pytest.approx(row["answers"] / row["seconds"], rel=0.05)
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["max_ms"] and row["server_cpu_ms_per_answer"] > 0


def test_label_issues_bench_finds_flipped_labels_through_the_cli() -> None:
    """bench/label_issues.py --quick: 5% of 1,200 synthetic labels flipped, `label-issues` trains 2 fold models."""
    out = _run("label_issues.py")
    assert out["n"] == 1200 and out["flipped"] == 60 and out["folds"] == 2
    assert out["precision"] >= 0.6 and out["recall"] >= 0.6, out  # the issue's bounds, on learnable synthetic data
    assert out["suggested_is_original"] >= 0.7 and out["seconds"] > out["check_seconds"] > 0


def test_explanations_bench_scores_every_method_and_the_cli() -> None:
    """bench/explanations.py --quick: the deletion test on the 50 shipped test images, for every method."""
    out = _run("explanations.py")
    assert out["images"] == 50 and out["default"] == "integrated" and out["cli"]["method"] == ["integrated"]
    assert set(out["methods"]) == {"integrated", "hirescam", "gradinput", "gradcam", "occlusion"}
    best = out["methods"]["integrated"]
    assert best["beats_random"] and best["on_garment"] >= 0.8 and out["cli"]["on_garment"] >= 0.8
    assert best["salient_area"] < out["methods"]["gradcam"]["salient_area"] and best["ms_per_image"] > 0


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as Zalando ships them: magic (0x08 = unsigned byte, number of dims), big-endian sizes, gzip."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_accelerator_script_reads_the_idx_files_itself_and_runs_every_step(tmp_path: Path) -> None:
    """bench/accelerator.py on CPU in --quick mode, on IDX files written here (no TFDS involved)."""
    from fmnist_jax.data import catalogue

    data = catalogue.synthetic_dataset(num_train=1200, num_test=200, seed=5)
    for name, array in (("train-images-idx3-ubyte.gz", data.train_images[..., 0]), ("train-labels-idx1-ubyte.gz", data.train_labels),
                        ("t10k-images-idx3-ubyte.gz", data.test_images[..., 0]), ("t10k-labels-idx1-ubyte.gz", data.test_labels)):
        _write_idx(tmp_path / name, array)
    out = _run("accelerator.py", "--data", str(tmp_path))
    assert out["throughput"] and all(row["img_s"] > 0 for row in out["throughput"])
    assert {row["precision"] for row in out["throughput"]} == {"float32", "bfloat16"}
    assert len(out["curve"]) == 1 and 0.0 <= out["best_test_accuracy"] <= 1.0
    assert set(out) >= {"seconds_to_94", "seconds_to_95", "devices", "recipe"}


def test_tta_gain_quick() -> None:
    out = _run("tta_gain.py", "bench/configs/best_94.json")
    (result,) = out["results"]
    assert result["epochs"] == 1 and 0.0 <= result["val_accuracy"] <= 1.0 and 0.0 <= result["val_accuracy_tta"] <= 1.0
    views = result["val_accuracy_shift_views"]
    assert set(views) == {"mirror + left/right 1 px", "mirror + up/down 1 px", "mirror + 4 shifts of 1 px"}
    assert all(0.0 <= accuracy <= 1.0 for accuracy in views.values())


def test_tta_gain_shift_image_moves_whole_pixels_with_black_fill() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    import tta_gain

    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4) + 1
    right = tta_gain.shift_image(images, 0, 1)
    assert (right[:, :, 0] == 0).all() and (right[:, :, 1:] == images[:, :, :-1]).all()
    up = tta_gain.shift_image(images, -1, 0)
    assert (up[:, -1] == 0).all() and (up[:, :-1] == images[:, 1:]).all()
    assert (tta_gain.shift_image(images, 0, 0) == images).all()


def test_augment_cost_quick() -> None:
    out = _run("augment_cost.py")
    names = [s["name"] for s in out["settings"]]
    assert names[0] == "none" and "flip + crop 1" in names and out["settings"][0]["ratio_to_none"] == 1.0
    for setting in out["settings"]:
        assert setting["images_per_s"] > 0 and setting["augment_us_per_batch"] > 0
    assert next(s for s in out["settings"] if s["name"] == "flip + crop 1")["augment"] == {"flip": 0.5, "crop": 1}


def test_model_cost_quick() -> None:
    tiny = {"layers": [{"type": "conv2d", "filters": 8, "kernel": 3, "padding": "same", "activation": "relu"},
                       {"type": "maxpool", "pool": 2, "stride": 2}, {"type": "flatten"},
                       {"type": "dense", "units": 10}]}
    out = _run("model_cost.py", "--candidate", "nadam={\"optimizer\": \"nadam\"}", "--candidate", "tiny=" + json.dumps(tiny))
    rows = {row["name"]: row for row in out["rows"]}
    assert list(rows) == ["base", "nadam", "tiny"] and rows["base"]["ratio_to_base"] == 1.0
    assert rows["base"]["preset"] == rows["nadam"]["preset"] == "fast256" and rows["tiny"]["preset"] == "custom"
    # the same network whatever the optimizer; the custom stack's own size: 8*9 + 8 conv, 14*14*8*10 + 10 dense
    assert rows["nadam"]["params"] == rows["base"]["params"] == 390_634
    assert rows["tiny"]["params"] == 8 * 9 + 8 + 14 * 14 * 8 * 10 + 10
    assert rows["tiny"]["forward_flops"] < rows["base"]["forward_flops"]
    for row in rows.values():
        assert row["images_per_s"] > 0
        assert row["ratio_to_base"] == pytest.approx(row["images_per_s"] / rows["base"]["images_per_s"], abs=0.002)

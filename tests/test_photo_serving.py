"""Photo serving (issue 45): GrabCut on a smaller copy, the coarse first round, the pipeline's worker pool
at a lower priority, and the held-out photos a model adapted with `train --photos` never trained on."""
from __future__ import annotations

import io
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from test_photos_adapt import _photo_folder

from fmnist_jax.data import catalogue
from fmnist_jax.deploy import predict
from fmnist_jax.photos import decode, folders, grabcut, pool
from fmnist_jax.photos.pipeline_params import GRABCUT_PREPROCESS, resolve_preprocess


def _floor_photo(seed: int = 0) -> bytes:
    """A 640x480 JPEG of a dark garment shape on a textured light floor."""
    rng = np.random.default_rng(seed)
    floor = np.clip(rng.normal(200, 12, (480, 640, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(floor)
    ImageDraw.Draw(image).polygon([(250, 90), (390, 90), (470, 170), (420, 200), (410, 400), (230, 400), (220, 200),
                                   (170, 170)], fill=(40, 60, 120))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _mask(params: dict) -> np.ndarray:
    rgb, _ = decode.decode_image(_floor_photo(), params["work_size"])
    return grabcut.grabcut_mask(rgb, params, [])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_grabcut_on_a_smaller_copy_and_from_a_coarse_round_finds_the_same_garment() -> None:
    full = resolve_preprocess({"mode": "grabcut", "work_size": 160, "iterations": 3})
    truth = _mask(full)
    assert 0.15 < truth.mean() < 0.4  # the shape covers about a quarter of the photo
    for changes in ({"segment_size": 140}, {"segment_size": 140, "coarse_size": 90}, {"segment_size": 80, "coarse_size": 40}):
        mask = _mask({**full, **changes})
        assert mask.shape == truth.shape and _iou(mask, truth) > 0.95, changes
        assert np.array_equal(mask, _mask({**full, **changes})), changes  # seeded: the same mask every time
    # a size at or above the photo's is no size at all: exactly the full-size cut
    assert np.array_equal(_mask({**full, "segment_size": 160, "coarse_size": 400}), truth)


def test_the_real_photo_preset_cuts_small_and_coarse_first() -> None:
    params = resolve_preprocess(GRABCUT_PREPROCESS)
    assert params["coarse_size"] < params["segment_size"] < params["work_size"]
    assert predict.load_model("demo").preprocess == params  # the demo serves what `train --photos` adapts with


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
def test_the_pipeline_workers_run_nicer_than_the_server_and_one_per_core() -> None:
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = [pool.submit(lambda: (threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))).result()
            for _ in range(4 * pool.cores())]
    assert {nice for _, nice in seen} == {min(19, caller + pool.PRIORITY_STEP)}
    assert len({thread for thread, _ in seen}) <= pool.cores()
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller  # the caller itself is untouched


def test_several_uploads_keep_their_order_and_a_bad_one_keeps_its_place() -> None:
    model = predict.demo_model()
    files = [("a.jpg", _floor_photo(1)), ("broken.jpg", b"\xff\xd8\xff" + b"\x00" * 500), ("c.jpg", _floor_photo(2))]
    results = predict.predict_files(model, files)
    assert [r["file"] for r in results] == ["a.jpg", "broken.jpg", "c.jpg"]
    assert "error" in results[1] and "label" in results[0] and "label" in results[2]
    alone = predict.predict_files(model, [files[2]])[0]
    # the same answer whether it came alone or with others (to float rounding: batches of 1 and 2 differ)
    assert alone["label"] == results[2]["label"] and np.allclose(alone["probs"], results[2]["probs"], atol=1e-6)


def test_held_out_part_is_the_cut_train_photos_keeps_out_of_training(tmp_path: Path) -> None:
    root = _photo_folder(tmp_path / "photos")
    folder = folders.read_photo_folder(root, catalogue.CLASS_NAMES)
    inputs = folders.photo_inputs(folder, {"mode": "grabcut"}, home=tmp_path / "home")
    _, held = folders.split_photos(inputs, 0.25, seed=0)
    part = folders.held_out_part(folder, 0.25, seed=0)
    assert [f"{name}/{path.name}" for name, path in part.files] == [inputs.files[i] for i in held]
    assert len(part.files) == 9 and part.acceptable == folder.acceptable

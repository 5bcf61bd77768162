"""Real phone photos (../shared/data/real-photos, the development set): the "grabcut" pipeline's steps on a
few of them, and the same answer and the same "not sure" from every path that serves the demo model
(library, CLI, REST, exported bundle, ONNX) for every fourth development photo."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from fmnist_jax.cli import main as cli
from fmnist_jax.deploy import bundle, onnx_export, predict, serve
from fmnist_jax.photos import folders, pipeline

DEV = REPO.parent / "shared" / "data" / "real-photos"
requires_photos = pytest.mark.skipif(not (DEV / "classes.json").is_file(),
                                     reason=f"the real-photo development set is not at {DEV} (see README)")


@pytest.fixture(scope="module")
def demo():
    return predict.load_model("demo")


def _few() -> list[Path]:
    return [sorted((DEV / name).iterdir())[0] for name in ("shoes", "t-shirt", "pants", "hat")]


@requires_photos
def test_grabcut_steps_on_real_photos(demo) -> None:
    for path in _few():
        payload = path.read_bytes()
        result = pipeline.preprocess_photo(payload, demo.preprocess, demo.input_shape)
        assert [name for name, _ in result.steps] == ["original", "garment found", "cropped", "model input"]
        original = result.steps[0][1]
        assert max(original.shape[:2]) == demo.preprocess["work_size"]          # analysed at the working size
        assert 0.03 < result.info["garment_fraction"] < 0.97, path.name          # a garment, not all or nothing
        model_input = result.model_input[..., 0]
        assert model_input.shape == (28, 28)
        border = np.concatenate([model_input[0], model_input[-1], model_input[:, 0], model_input[:, -1]])
        assert border.mean() < 40 < model_input.mean() + 40                      # garment bright on black
        assert max(np.ptp(np.flatnonzero(model_input.any(0))), np.ptp(np.flatnonzero(model_input.any(1)))) >= 26  # fills the canvas
        again = pipeline.preprocess_photo(payload, demo.preprocess, demo.input_shape)
        assert np.array_equal(again.model_input, result.model_input)             # GrabCut is seeded: deterministic


@requires_photos
def test_most_known_garments_are_recognised_and_most_hats_shorts_skirts_are_not_sure(demo) -> None:
    photo_folder = folders.read_photo_folder(DEV, demo.class_names)
    right = {"known": 0, "unknown": 0}
    for name in ("shoes", "t-shirt", "pants", "hat", "shorts", "skirt"):
        paths = sorted((DEV / name).iterdir())[:10]
        for row in predict.predict_files(demo, [(p.name, p.read_bytes()) for p in paths]):
            accept = photo_folder.acceptable[name]
            if accept:
                right["known"] += row["index"] in accept and not row["unsure"]
            else:
                right["unknown"] += row["unsure"]
    assert right["known"] >= 24 and right["unknown"] >= 15, right  # of 30 each (measured: see bench/real_photos.py)


@pytest.mark.slow
@requires_photos
def test_every_path_gives_the_same_answer_and_the_same_unsure(demo, tmp_path: Path, capsys) -> None:
    import onnxruntime
    from starlette.testclient import TestClient

    photo_folder = folders.read_photo_folder(DEV, demo.class_names)
    # every fourth photo (85 of 341, every folder): each path runs its own GrabCut, five times per photo in all
    paths = [path for _, path in photo_folder.files][::4]
    assert {path.parent.name for path in paths} == {path.parent.name for _, path in photo_folder.files}
    library = predict.predict_files(demo, [(str(p), p.read_bytes()) for p in paths])
    assert cli.main(["predict", "demo", *map(str, paths), "--json"]) == 0
    from_cli = json.loads(capsys.readouterr().out)
    exported = bundle.load_bundle(bundle.bundle_bytes(demo))
    from_bundle = predict.predict_files(exported, [(str(p), p.read_bytes()) for p in paths])
    with TestClient(serve.create_app(demo)) as client:
        from_rest = []
        for start in range(0, len(paths), serve.MAX_FILES):
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths[start:start + serve.MAX_FILES]]
            response = client.post("/predict", files=files)
            assert response.status_code == 200, response.text
            from_rest += response.json()
    payload, _ = onnx_export.onnx_bytes(demo)
    session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    inputs = np.stack([pipeline.preprocess_photo(p.read_bytes(), json.loads(meta["preprocess"]), demo.input_shape).model_input
                       for p in paths]).astype(np.float32) / 255.0
    onnx_probs = session.run(None, {"images": inputs})[0]
    onnx_unsure = onnx_probs.max(1) < float(meta["unsure_threshold"])
    for i, row in enumerate(library):
        answers = {(row["index"], row["unsure"]), (from_cli[i]["index"], from_cli[i]["unsure"]),
                   (from_bundle[i]["index"], from_bundle[i]["unsure"]), (from_rest[i]["index"], from_rest[i]["unsure"]),
                   (int(onnx_probs[i].argmax()), bool(onnx_unsure[i]))}
        assert len(answers) == 1, (paths[i], answers)

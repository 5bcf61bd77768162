"""The label check (issue 44 item 1): stratified folds, confident learning's ranking, the file of each flag in
an image upload, the CLI contract, and its errors. The fold models' training is replaced by designed
probabilities here; bench/label_issues.py --quick (tests/test_bench_quick.py) trains them for real."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmnist_jax import label_issues
from fmnist_jax.cli import main as cli
from fmnist_jax.data import catalogue
from fmnist_jax.data.uploads import importer


def test_folds_are_stratified_even_and_seeded() -> None:
    labels = np.repeat(np.arange(5), [40, 41, 39, 7, 13])
    folds = label_issues.fold_of_each(labels, 4, seed=3)
    assert np.array_equal(folds, label_issues.fold_of_each(labels, 4, seed=3))
    assert not np.array_equal(folds, label_issues.fold_of_each(labels, 4, seed=4))
    sizes = np.bincount(folds, minlength=4)
    assert sizes.max() - sizes.min() <= 1
    for cls in range(5):  # every class spread over the folds as evenly as its count allows
        per_fold = np.bincount(folds[labels == cls], minlength=4)
        assert per_fold.max() - per_fold.min() <= 1, cls


def _designed(labels: np.ndarray, wrong: dict[int, int], classes: int = 4) -> np.ndarray:
    """Probabilities like a fold model's: the given label at 55-95% (models are not equally sure of every image),
    except rows in `wrong`, which the models put in another class at 90-98%."""
    rng = np.random.default_rng(len(labels))
    probs = np.full((len(labels), classes), 0.02, np.float32)
    probs[np.arange(len(labels)), labels] = rng.uniform(0.55, 0.95, len(labels))
    for row, cls in wrong.items():
        probs[row] = 0.01
        probs[row, cls] = 0.98 - 0.04 * (row % 3)  # differently sure, so the ranking has an order to find
    return probs / probs.sum(axis=1, keepdims=True)


def test_confident_learning_flags_the_contradicted_rows_most_sure_first() -> None:
    labels = np.repeat(np.arange(4), 30)
    wrong = {5: 2, 40: 0, 77: 3, 100: 1}
    issues = label_issues.rank_issues(labels, _designed(labels, wrong))
    assert {issue["index"] for issue in issues} == set(wrong)
    assert all(issue["suggested"] == wrong[issue["index"]] and issue["given"] == labels[issue["index"]] for issue in issues)
    qualities = [issue["quality"] for issue in issues]
    assert qualities == sorted(qualities) and all(q < 0.05 for q in qualities)


def test_classes_missing_from_the_training_part_do_not_confuse_the_ranking() -> None:
    labels = np.repeat(np.array([0, 2, 3]), 30)  # class 1 has no images
    probs = _designed(labels, {3: 2})  # a class-0 image the models call class 2
    probs[:, 1] = 0.001
    probs /= probs.sum(axis=1, keepdims=True)
    (issue,) = label_issues.rank_issues(labels, probs)
    assert (issue["index"], issue["given"], issue["suggested"]) == (3, 0, 2)


def _image_zip(path: Path) -> list[str]:
    """class folders of small PNGs, written in an unsorted order; returns the sorted paths."""
    names = [f"{cls}/{n:02d}.png" for cls in ("shirt", "bag", "coat") for n in (7, 1, 4, 12, 3, 9, 0, 11, 5, 2, 8, 6)]
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(buffer, format="PNG")
            archive.writestr(name, buffer.getvalue())
    return sorted(names)


def test_an_image_upload_names_the_file_of_each_flag_and_counts_it_in_sorted_path_order(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FMNIST_HOME", str(tmp_path / "home"))
    archive = tmp_path / "clothes.zip"
    sorted_paths = _image_zip(archive)
    manifest = importer.import_upload(archive)
    files = manifest["train_files"]
    dataset = catalogue.load_dataset(manifest["name"])
    assert sorted(files) == sorted_paths and len(files) == len(dataset.train_labels)
    # each row's label is its file's folder
    assert all(dataset.class_names[label] == name.split("/")[0] for name, label in zip(files, dataset.train_labels))
    row = files.index("coat/04.png")
    wrong = {row: (int(dataset.train_labels[row]) + 1) % 3}
    monkeypatch.setattr(label_issues, "out_of_fold_probs",
                        lambda images, labels, *rest, **kw: _designed(np.asarray(labels), wrong, classes=3))
    result = label_issues.find_issues(dataset, label_issues.LabelCheck(folds=2), files)
    (issue,) = result["issues"]
    assert issue["file"] == "coat/04.png" and issue["row"] == row
    assert issue["index"] == sorted_paths.index("coat/04.png")
    assert result["n"] == 36 and result["folds"] == 2 and result["seconds"] >= 0


def test_the_cli_prints_the_json_contract_for_an_npz(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FMNIST_HOME", str(tmp_path / "home"))
    data = catalogue.synthetic_dataset(num_train=200, num_test=20, seed=2)
    npz = tmp_path / "set.npz"
    np.savez(npz, x_train=data.train_images[..., 0], y_train=data.train_labels, x_test=data.test_images[..., 0],
             y_test=data.test_labels, class_names=np.asarray(data.class_names))
    wrong = {17: (int(data.train_labels[17]) + 3) % 10}
    monkeypatch.setattr(label_issues, "out_of_fold_probs",
                        lambda images, labels, *rest, **kw: _designed(np.asarray(labels), wrong, classes=10))
    assert cli.main(["label-issues", "--dataset", str(npz), "--folds", "3", "--limit", "150", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"n", "folds", "seconds", "issues"} and out["n"] == 150 and out["folds"] == 3
    assert out["issues"] == [{"index": 17, "given": int(data.train_labels[17]), "suggested": wrong[17],
                              "quality": out["issues"][0]["quality"]}]
    assert cli.main(["label-issues", "--dataset", str(npz), "--folds", "3"]) == 0  # the table
    table = capsys.readouterr().out
    assert "1 likely label issue among 200 training images" in table and data.class_names[wrong[17]] in table


@pytest.mark.parametrize("flags, message", [
    (["--folds", "1"], "--folds must be 2-20"),
    (["--epochs", "0"], "--epochs must be 1-100"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--limit", "30"], "needs at least 10 per class"),
])
def test_impossible_settings_get_one_line_and_status_2(flags, message, capsys) -> None:
    assert cli.main(["label-issues", "--dataset", "synthetic", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_dataset_of_one_class_is_refused() -> None:
    data = catalogue.synthetic_dataset(num_train=100, num_test=10, seed=0)
    one = catalogue.Dataset("one", data.train_images, np.zeros(100, np.int32), data.test_images, data.test_labels,
                            data.class_names)
    with pytest.raises(label_issues.LabelCheckError, match="at least two classes"):
        label_issues.find_issues(one)


# ----------------------------------------------------------------------------- label versions (the overlay)

def test_a_version_relabels_and_excludes_without_touching_the_shared_arrays() -> None:
    from fmnist_jax.data import label_versions

    data = catalogue.synthetic_dataset(num_train=50, num_test=10, seed=4)
    data.train_images.flags.writeable = False  # as catalogue.shared_dataset hands them out
    before = data.train_labels.copy()
    edits = label_versions.LabelEdits.from_dict({"relabel": {"3": 7, "10": 1}, "exclude": [0, 49]})
    assert label_versions.apply(data, edits, 0) is data  # version 0 is the original, as it is
    cleaned = label_versions.apply(data, edits, 2)
    assert cleaned.name.endswith("@labels-v2") and len(cleaned.train_labels) == 48
    assert np.array_equal(data.train_labels, before)  # the original stays as it was
    assert cleaned.train_labels[2] == 7 and cleaned.train_labels[9] == 1  # rows 3 and 10, one row earlier
    assert np.array_equal(cleaned.train_images, data.train_images[1:49])
    assert np.array_equal(cleaned.test_labels, data.test_labels)
    assert label_versions.LabelEdits.from_dict(edits.to_dict()) == edits
    csv_text = label_versions.corrected_csv(data, edits)
    assert csv_text.splitlines()[0] == "index,given,corrected"
    assert f"3,{data.class_names[before[3]]},{data.class_names[7]}" in csv_text and csv_text.count("excluded") == 2


@pytest.mark.parametrize("values, message", [
    ({"relabel": {"50": 1}}, "row 50 is not a training row"),
    ({"relabel": {"2": 10}}, "has classes 0-9"),
    ({"exclude": list(range(50))}, "every training image would be excluded"),
    ({"relabel": "nonsense"}, "label edits must be"),
])
def test_edits_that_do_not_fit_the_dataset_are_refused_in_one_line(values, message) -> None:
    from fmnist_jax.data import label_versions

    data = catalogue.synthetic_dataset(num_train=50, num_test=10, seed=4)
    with pytest.raises(label_versions.LabelEditError, match=message):
        label_versions.LabelEdits.from_dict(values).check(data)

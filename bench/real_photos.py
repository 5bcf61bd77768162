"""Real phone photos: how often a model gives an acceptable answer, per folder, beside a naive resize.

FOLDER holds one subfolder per kind of garment and a classes.json mapping each folder to the model classes
that count as right (an empty list: none fits, and "not sure" is the right answer). A photo in a known
folder is right when the top class is acceptable and the model is sure; "not sure" counts as wrong there.
Every photo goes through the model's own photo pipeline, exactly as the Deploy page, the CLI and the REST
API send it; "naive" squashes the photo to 28x28 grey instead (what an app without the pipeline would do).

    python bench/real_photos.py ../shared/data/real-photos --model demo
    python bench/real_photos.py ../shared/data/real-photos --model demo --json --sheet failures.png
    python bench/real_photos.py ../shared/data/real-photos-train --held-out 0.2   # the demo's held-out photos
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit_json, load_average, print_table  # noqa: E402

from fmnist_jax.deploy import exported, predict  # noqa: E402
from fmnist_jax.photos import folders, pipeline, pipeline_params  # noqa: E402
from fmnist_jax.photos.decode import ImageError  # noqa: E402
from fmnist_jax.training.trained import check_calibration  # noqa: E402


def wilson(right: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if total == 0:
        return (float("nan"), float("nan"))
    p = right / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def score(model, photo_folder: folders.PhotoFolder) -> dict:
    """Per-photo predictions through the pipeline and through a naive resize."""
    rows = []
    for name, path in photo_folder.files:
        payload = path.read_bytes()
        try:
            result = pipeline.preprocess_photo(payload, model.preprocess, model.input_shape)
        except ImageError as error:
            rows.append({"folder": name, "file": path.name, "error": str(error)})
            continue
        rows.append({"folder": name, "file": path.name, "input": result.model_input, "steps": result.steps,
                     "naive": pipeline.naive_input(payload, model.input_shape)})
    good = [r for r in rows if "error" not in r]
    for key, out in (("input", "probs"), ("naive", "naive_probs")):
        probs = model.predict_proba(np.stack([r[key] for r in good]))
        for row, p, unsure in zip(good, probs, model.is_unsure(probs)):
            row[out], row[out + "_unsure"] = p, bool(unsure)
    return {"rows": rows}


def load(source: str):
    """A studio model, or an exported .onnx / .tflite file in its own runtime."""
    if Path(source).suffix.lower() in exported.SUFFIXES:
        return exported.ExportedModel(source)
    return predict.load_model(source)


def answer(row: dict) -> str:
    return "not sure" if row["probs_unsure"] else str(int(np.argmax(row["probs"])))


def same_answers(rows: list[dict], other: list[dict]) -> dict:
    """Per photo, whether two models' answers (class, or "not sure") through their pipelines are the same."""
    pairs = [(a, b) for a, b in zip(rows, other) if "probs" in a and "probs" in b]
    same = sum(answer(a) == answer(b) for a, b in pairs)
    return {"photos": len(pairs), "same": same, "agreement": same / max(len(pairs), 1)}


def summarise(model, photo_folder: folders.PhotoFolder, rows: list[dict]) -> dict:
    """Accuracy on known folders, "not sure" rates, per-folder counts and most frequent wrong answers."""
    per_folder, wrong = {}, {}
    tallies = {"right": 0, "naive_right": 0, "known": 0, "unsure_known": 0, "unknown": 0, "unsure_unknown": 0}
    for name in sorted(photo_folder.acceptable):
        accept = set(photo_folder.acceptable[name])
        mine = [r for r in rows if r["folder"] == name and "probs" in r]
        if accept:
            right = [int(np.argmax(r["probs"])) in accept and not r["probs_unsure"] for r in mine]
            naive = [int(np.argmax(r["naive_probs"])) in accept and not r["naive_probs_unsure"] for r in mine]
            tallies.update(right=tallies["right"] + sum(right), naive_right=tallies["naive_right"] + sum(naive),
                           known=tallies["known"] + len(mine), unsure_known=tallies["unsure_known"] + sum(r["probs_unsure"] for r in mine))
            misses = Counter("not sure" if r["probs_unsure"] else model.class_names[int(np.argmax(r["probs"]))]
                             for r, ok in zip(mine, right) if not ok)
        else:
            right = [r["probs_unsure"] for r in mine]  # the right answer for a garment outside the classes
            tallies.update(unknown=tallies["unknown"] + len(mine), unsure_unknown=tallies["unsure_unknown"] + sum(right))
            misses = Counter(model.class_names[int(np.argmax(r["probs"]))] for r, ok in zip(mine, right) if not ok)
        per_folder[name] = {"right": int(sum(right)), "total": len(mine), "known": bool(accept)}
        wrong[name] = misses.most_common(1)[0] if misses else None
    known, unknown = max(tallies["known"], 1), max(tallies["unknown"], 1)
    return {"accuracy": tallies["right"] / known, "naive_accuracy": tallies["naive_right"] / known,
            "accuracy_interval": wilson(tallies["right"], tallies["known"]),
            "per_folder": per_folder, "top_wrong": wrong,
            "unsure_known": tallies["unsure_known"] / known, "unsure_unknown": tallies["unsure_unknown"] / unknown,
            "n": len(rows), "errors": sum("error" in r for r in rows)}


def contact_sheet(model, rows: list[dict], photo_folder: folders.PhotoFolder, path: Path, limit: int = 60) -> int:
    """A PNG of the failures: each step of the pipeline, the model input and the answer; returns rows drawn."""
    from PIL import Image, ImageDraw

    failures = []
    for r in rows:
        if "probs" not in r:
            continue
        accept = set(photo_folder.acceptable[r["folder"]])
        top = int(np.argmax(r["probs"]))
        ok = (top in accept and not r["probs_unsure"]) if accept else r["probs_unsure"]
        if not ok:
            failures.append(r)
    failures = failures[:limit]
    cell, label_width = 120, 260
    steps = max((len(r["steps"]) for r in failures), default=1)
    sheet = Image.new("RGB", (steps * (cell + 4) + label_width, max(1, len(failures)) * (cell + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(failures):
        y = i * (cell + 4)
        for j, (_, image) in enumerate(r["steps"]):
            picture = Image.fromarray(image if image.ndim == 3 else image).convert("RGB")
            picture.thumbnail((cell, cell), Image.Resampling.NEAREST if picture.width < 64 else Image.Resampling.LANCZOS)
            sheet.paste(picture, (j * (cell + 4), y))
        top = int(np.argmax(r["probs"]))
        answer = "not sure" if r["probs_unsure"] else model.class_names[top]
        draw.text((steps * (cell + 4) + 6, y + 8), f"{r['folder']}/{r['file'][:18]}", fill="black")
        draw.text((steps * (cell + 4) + 6, y + 28), f"answer: {answer} ({r['probs'][top]:.2f})", fill="firebrick")
    sheet.save(path)
    return len(failures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="photo folder with class subfolders and classes.json")
    parser.add_argument("--model", default="demo", help="run folder, bundle (.zip), model folder, 'demo', or an "
                                                         "exported .onnx / .tflite file (float or int8)")
    parser.add_argument("--against", help="a second model (same kinds): how often the two give the same answer "
                                          "(class, or 'not sure') per photo, e.g. an int8 export against its float model")
    parser.add_argument("--preprocess", help="JSON object of photo-pipeline settings to override (ablations)")
    parser.add_argument("--unsure-threshold", type=float, help="override the model's 'not sure' threshold (0: never)")
    parser.add_argument("--sheet", type=Path, help="write a contact sheet of the failures to this PNG")
    parser.add_argument("--held-out", type=float, default=0.0,
                        help="score only the share of each folder that `train --photos` holds out (0.2 for the demo's "
                             "real-photos-train): photos the model never trained on, for choices made off the "
                             "development set")
    parser.add_argument("--seed", type=int, default=0, help="the held-out cut's seed (train --photos uses 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    start = time.perf_counter()
    model = load(args.model)
    if args.preprocess:
        model.preprocess = pipeline_params.resolve_preprocess({**model.preprocess, **json.loads(args.preprocess)},
                                                              model.input_shape)
    if args.unsure_threshold is not None:
        model.calibration = check_calibration({**model.calibration, "unsure_threshold": args.unsure_threshold})
    photo_folder = folders.read_photo_folder(args.folder, model.class_names)
    if args.held_out:
        photo_folder = folders.held_out_part(photo_folder, args.held_out, args.seed)
    rows = score(model, photo_folder)["rows"]
    result = summarise(model, photo_folder, rows)
    if args.against:
        result["against"] = {"model": args.against, **same_answers(rows, score(load(args.against), photo_folder)["rows"])}
    result.update(model=args.model, pipeline=model.preprocess.get("mode"), temperature=model.temperature,
                  unsure_threshold=model.unsure_threshold, seconds=round(time.perf_counter() - start, 1),
                  load_average=load_average())
    table = []
    for name, counts in result["per_folder"].items():
        low, high = wilson(counts["right"], counts["total"])
        miss = result["top_wrong"][name]
        table.append([name, "known" if counts["known"] else "none fits", f"{counts['right']}/{counts['total']}",
                      f"{counts['right'] / max(counts['total'], 1):.2f}", f"{low:.2f}-{high:.2f}",
                      f"{miss[0]} ({miss[1]})" if miss else "-"])
    print_table(["folder", "classes", "right", "share", "95% interval", "top wrong answer"], table)
    low, high = result["accuracy_interval"]
    print(f"\naccuracy on known folders: {result['accuracy']:.3f} ({low:.3f}-{high:.3f}), naive resize "
          f"{result['naive_accuracy']:.3f}; 'not sure' on {result['unsure_known']:.1%} of known and "
          f"{result['unsure_unknown']:.1%} of other garments ({result['n']} photos, model {args.model}, "
          f"pipeline {result['pipeline']}, {result['seconds']} s)")
    if args.against:
        print(f"same answer as {args.against} (class, or 'not sure') on {result['against']['same']}/"
              f"{result['against']['photos']} photos ({result['against']['agreement']:.1%})")
    if args.sheet:
        drawn = contact_sheet(model, rows, photo_folder, args.sheet)
        print(f"contact sheet of {drawn} failures: {args.sheet}")
    if args.json:
        emit_json({k: result[k] for k in ("accuracy", "naive_accuracy", "per_folder", "unsure_known", "unsure_unknown",
                                          "n", "accuracy_interval", "model", "pipeline", "temperature",
                                          "unsure_threshold", "seconds", "load_average")}
                  | ({"against": result["against"]} if args.against else {}))


if __name__ == "__main__":
    main()

"""The Evaluation page's map of the dataset: a trained run's penultimate-layer features of one split, in 2-D
(UMAP), computed in the background and cached in the run folder; dragging a rectangle over it shows those
images, drawn here on the server."""
from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

import studio_ui as ui
from fmnist_jax import store
from fmnist_jax.studio import charts, dataset_map, estimates, label_check, projects

SHOWN = 48  # images of a selection drawn at once


def _flagged_images(ws: store.Workspace, project: dict) -> np.ndarray:
    """The training images the project's last label check flagged (none when there was no check)."""
    check = label_check.last_check(ws, project)
    if not check or not check.get("issues"):
        return np.zeros((0,), np.uint8)
    source = projects.load_dataset(project, labels=False)
    rows = np.asarray([issue["index"] for issue in check["issues"]], np.int64)
    return np.asarray(source.train_images)[rows[rows < len(source.train_images)]]


def map_section(ws: store.Workspace, project: dict, run: dict, run_record: dict, model_of: Any) -> None:
    pid, run_id = project["id"], run["id"]
    st.subheader("Map of the dataset")
    st.caption("Each point is an image, placed by what the model's last hidden layer makes of it (UMAP to 2-D): "
               "alike images sit together. Colour is the true class; crosses are the model's mistakes, diamonds "
               "the labels the Data page's label check flagged. Drag a rectangle to see those images.")
    split = st.segmented_control("Images", dataset_map.SPLITS, default="validation", key=f"map-split-{pid}",
                                 format_func=str.capitalize,
                                 help=f"Up to {dataset_map.MAX_POINTS:,} images of the split, drawn with a fixed "
                                      "seed. Label-check flags are training images: choose Train to see them.") \
        or "validation"
    stamp = store.weights_stamp(run["path"])
    cached = dataset_map.load(run["path"], split)
    if cached is None:
        def work(progress: Any) -> dataset_map.DatasetMap:
            splits = projects.load_splits(run_record)
            return dataset_map.compute(model_of(), splits, split, run["path"], progress=progress)

        task = ui.background().find(ui.owner(), "dataset-map", f"{pid}:{run_id}:{stamp}:{split}")
        if task is None:
            if not st.button("Draw the map", icon=":material/scatter_plot:", key=f"map-make-{pid}-{split}",
                             help="Reads the model's features of each image and projects them, in the background "
                                  "(about half a minute for 10,000 images on a laptop CPU)."):
                return
            ui.background().submit(ui.owner(), "dataset-map", f"{pid}:{run_id}:{stamp}:{split}", work,
                                   label=f"Map of the {split} images")
            st.rerun()
        if task["status"] != "done":
            ui.watch_task(task)
            return
        cached = task["result"]
    _draw(ws, project, run_record, cached)


def _draw(ws: store.Workspace, project: dict, run_record: dict, result: dataset_map.DatasetMap) -> None:
    pid = project["id"]
    splits = projects.load_splits(run_record)
    images = np.asarray(dataset_map.split_arrays(splits, result.split)[0])[result.rows]
    flagged = dataset_map.flagged(images, _flagged_images(ws, project)) if result.split == "train" else \
        np.zeros(len(images), bool)
    kinds = np.where(flagged, 2, np.where(result.mistakes, 1, 0))
    chart = charts.dataset_map(result.coords[:, 0], result.coords[:, 1], result.labels, kinds, splits.class_names)
    event = st.altair_chart(chart, on_select="rerun", selection_mode=charts.MAP_SELECTION, width="stretch",
                            key=f"map-chart-{pid}-{result.split}")
    st.caption(f"{len(result.rows):,} {result.split} images ({result.method}, {result.seconds:.0f} s); "
               f"{int(result.mistakes.sum()):,} mistakes" + (f", {int(flagged.sum()):,} flagged labels"
                                                             if result.split == "train" else "") + ".")
    chosen = dataset_map.in_selection(result, (event.get("selection") or {}).get(charts.MAP_SELECTION))
    if not len(chosen):
        return
    names = splits.class_names
    shown = chosen[:SHOWN]
    st.markdown(f"**{len(chosen):,} images selected**" + (f" (the first {SHOWN} shown)" if len(chosen) > SHOWN else ""))
    with st.container(horizontal=True, gap="small"):
        for position in shown:
            with st.container(width=84):
                st.image(estimates.upscale(images[position], 3), width=84)
                truth, guess = names[int(result.labels[position])], names[int(result.predicted[position])]
                st.caption(f"**{truth}**" + ("" if truth == guess else f" → {guess}")
                           + (" · flagged" if kinds[position] == 2 else ""))

"""The Data page's "Label check": find likely mislabelled images, keep / relabel / exclude each one in a paged
gallery, and keep the choices as a label version that training uses (the library: fmnist_jax/label_issues.py,
fmnist_jax/studio/label_check.py, fmnist_jax/data/label_versions.py)."""
from __future__ import annotations

import time

import numpy as np
import streamlit as st

import studio_ui as ui
from fmnist_jax import label_issues, settings
from fmnist_jax.data import catalogue, label_versions
from fmnist_jax.data.label_versions import LabelEdits
from fmnist_jax.model import presets
from fmnist_jax.studio import estimates, label_check

PER_PAGE = 12
CHOICES = ("keep", "relabel", "exclude")


def section(project: dict, source: catalogue.Dataset) -> None:
    """The whole section, for the project and its dataset as the source has it (version 0)."""
    _versions(project, source)
    found = label_check.last_check(ui.workspace(), project)
    _check_form(project, source, found)
    if found is not None:
        _gallery(project, source, found)


def _versions(project: dict, source: catalogue.Dataset) -> None:
    """Which labels training uses: the original or a saved version; delete, or download the corrections."""
    entries = label_check.versions(project)
    if not entries:
        return
    labels = {0: "Original labels"} | {v["version"]: f"v{v['version']} · {len(v['relabel'])} relabelled, "
                                                     f"{len(v['exclude'])} excluded · {ui.stamp(v['created'])}"
                                       for v in entries}
    current = int(project.get("label_version") or 0)
    chosen = st.selectbox("Labels training uses", list(labels), index=list(labels).index(current),
                          format_func=labels.get, key=f"label-version-{project['id']}-{current}",
                          help="A version changes no image: it relabels or leaves out rows of the training part. "
                               "The original labels stay as they are, and each run records the version it learnt.")
    if chosen != current:
        ui.save_project(project, label_version=int(chosen))
        st.session_state.pop(f"label-choices-{project['id']}", None)
        st.rerun()
    if current:
        edits, _ = label_check.overlay(project)
        left, right = st.columns(2)
        left.download_button("Download the corrections (CSV)", label_versions.corrected_csv(
            source, edits, label_check.upload_files(project)), file_name=f"labels-v{current}.csv", mime="text/csv",
            icon=":material/download:", key=f"label-csv-{project['id']}")
        if right.button(f"Delete v{current}", icon=":material/delete:", key=f"label-delete-{project['id']}",
                        help="Back to the original labels; runs that trained on it keep their own copy of its edits."):
            label_check.delete_version(ui.workspace(), project, current)
            st.session_state.pop(f"label-choices-{project['id']}", None)
            st.rerun()


def _check_form(project: dict, source: catalogue.Dataset, found: dict | None) -> None:
    """The check's settings and its background task (progress, cancel, then its findings)."""
    pid = project["id"]
    st.caption("Each of K models trains on all folds but one and predicts the fold it never saw; confident "
               "learning (cleanlab) then flags the images whose label those predictions contradict.")
    a, b, c = st.columns(3)
    folds = a.slider("Folds", 2, 10, 4, key=f"label-folds-{pid}", help="Models trained; each skips one fold.")
    epochs = b.slider("Epochs per model", 1, 20, label_issues.LabelCheck.epochs, key=f"label-epochs-{pid}")
    preset = c.selectbox("Model", list(presets.PRESETS), index=list(presets.PRESETS).index("fast"),
                         key=f"label-preset-{pid}")
    check = label_issues.LabelCheck(folds=folds, preset=preset, epochs=epochs)
    key = f"{pid}:{project.get('dataset')}:{folds}:{epochs}:{preset}"
    if st.button("Check the labels" if found is None else "Check again", icon=":material/fact_check:",
                 key=f"label-run-{pid}"):
        try:
            _count_against_caps(check, source)
            ws = ui.workspace()
            ui.background().submit(ui.owner(), "label-check", key,
                                   lambda progress: label_check.run_check(ws, project, source, check, progress),
                                   label="Label check")
        except ValueError as error:
            st.error(ui.plain(error), icon=":material/error:")
    for snap in ui.background().owned(ui.owner(), "label-check", f"{pid}:"):
        ui.watch_task(snap, on_done=lambda result: _checked(pid))


def _count_against_caps(check: label_issues.LabelCheck, source: catalogue.Dataset) -> None:
    """In public mode the K trainings are one job's worth of compute against the visitor's caps."""
    if not settings.public_mode():
        return
    from fmnist_jax.studio import public

    cfg = check.validate().train_config()
    train_size = len(source.train_labels) * (check.folds - 1) // check.folds
    public.check_job(public.job_figures(presets.preset(check.preset, source.num_classes), source.input_shape,
                                        source.num_classes, cfg.batch_size, cfg.epochs * check.folds, train_size))


def _checked(pid: str) -> None:
    st.session_state.pop(f"label-choices-{pid}", None)
    st.session_state[f"label-page-{pid}"] = 0
    st.rerun()


def _choices(project: dict) -> dict[int, tuple[str, int | None]]:
    """The gallery's choices (row -> (choice, class)), starting from the selected version's edits."""
    key = f"label-choices-{project['id']}"
    if key not in st.session_state:
        edits, _ = label_check.overlay(project)
        st.session_state[key] = {**{row: ("relabel", cls) for row, cls in edits.relabel.items()},
                                 **{row: ("exclude", None) for row in edits.exclude}}
    return st.session_state[key]


def _gallery(project: dict, source: catalogue.Dataset, found: dict) -> None:
    """A paged gallery of the flagged images with keep / relabel / exclude, and "Save as a new version"."""
    pid, names, issues = project["id"], source.class_names, found["issues"]
    st.markdown(f"**{len(issues):,} likely label issue{'' if len(issues) == 1 else 's'}** among {found['n']:,} training images · out-of-fold "
                f"accuracy {found['out_of_fold_accuracy']:.1%} · {found['folds']} models, {found['seconds']:.0f} s, "
                f"{time.strftime('%d %b %H:%M', time.localtime(found['finished']))}")
    if not issues:
        st.success("No label looks wrong to the fold models.", icon=":material/check_circle:")
        return
    choices = _choices(project)
    pages = max(1, -(-len(issues) // PER_PAGE))
    page = min(st.session_state.get(f"label-page-{pid}", 0), pages - 1)
    columns = st.columns(4)
    for n, issue in enumerate(issues[page * PER_PAGE:(page + 1) * PER_PAGE]):
        with columns[n % 4]:
            _card(pid, source, issue, choices, names)
    prev, where, nxt = st.columns([1, 2, 1], vertical_alignment="center")
    if prev.button("Previous", icon=":material/chevron_left:", disabled=page == 0, key=f"label-prev-{pid}"):
        st.session_state[f"label-page-{pid}"] = page - 1
        st.rerun()
    where.caption(f"Page {page + 1} of {pages}")
    if nxt.button("Next", icon=":material/chevron_right:", disabled=page >= pages - 1, key=f"label-next-{pid}"):
        st.session_state[f"label-page-{pid}"] = page + 1
        st.rerun()
    edits = LabelEdits({row: cls for row, (kind, cls) in choices.items() if kind == "relabel" and cls is not None},
                       {row for row, (kind, _) in choices.items() if kind == "exclude"})
    st.caption(f"{len(edits.relabel)} relabelled and {len(edits.exclude)} excluded so far.")
    if st.button("Save as a new label version", type="primary", icon=":material/save:", disabled=not edits,
                 key=f"label-save-{pid}"):
        try:
            saved = label_check.save_version(ui.workspace(), project, edits, source)
        except ValueError as error:
            st.error(ui.plain(error), icon=":material/error:")
        else:
            st.session_state.pop(f"label-choices-{pid}", None)
            st.toast(f"Saved labels v{saved['label_version']}: training now uses them.", icon=":material/check:")
            st.rerun()


def _card(pid: str, source: catalogue.Dataset, issue: dict, choices: dict, names: tuple[str, ...]) -> None:
    """One flagged image: the picture, its given and suggested class, and the choice."""
    row = int(issue.get("row", issue["index"]))
    st.image(estimates.montage(np.asarray(source.train_images[row:row + 1]), columns=1, factor=4, gap=0),
             width=150)  # a fixed size: a phone's one-card-per-row stays short enough to page through
    st.caption(f"#{issue['index']} · given **{ui.plain(names[issue['given']])}** · suggested "
               f"**{ui.plain(names[issue['suggested']])}** ({issue['quality']:.0%} for the given label)"
               + (f" · {ui.plain(issue['file'])}" if issue.get("file") else ""))
    kind, cls = choices.get(row, ("keep", None))
    chosen = st.radio("Choice", CHOICES, index=CHOICES.index(kind), horizontal=True, key=f"label-choice-{pid}-{row}",
                      label_visibility="collapsed")
    if chosen == "relabel":
        default = cls if cls is not None else issue["suggested"]
        cls = st.selectbox("Relabel as", range(len(names)), index=default, format_func=lambda i: names[i],
                           key=f"label-class-{pid}-{row}")
    if chosen == "keep":
        choices.pop(row, None)
    else:
        choices[row] = (chosen, cls if chosen == "relabel" else None)


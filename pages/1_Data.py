"""1 · Data: source and data folder, split, class balance, samples, pixel histogram, augmentation preview."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Callable

import numpy as np
import streamlit as st

import studio_labels as labels
import studio_ui as ui
from fmnist_jax import checks, settings, store
from fmnist_jax.data import catalogue, splitting
from fmnist_jax.data.augment import AugmentConfig
from fmnist_jax.data.uploads import importer
from fmnist_jax.data.uploads import limits as upload_limits
from fmnist_jax.studio import charts, estimates, label_check
from fmnist_jax.studio import projects as proj

UPLOAD = "upload"

ui.frame("data")
ui.page_title("1", "Data", "Choose the images, how they are split into train / validation / test, "
                           "and how training batches are augmented.")
project = ui.require_project()
pid = project["id"]

# ----------------------------------------------------------------------------- source

st.subheader("Source")
sources = list(proj.DATASET_LABELS) + [UPLOAD]
current_source = project.get("dataset") or "fashion_mnist"
if current_source.startswith("upload/"):
    current_source = UPLOAD
left, right = st.columns([1, 1], gap="large")
with left:
    source = st.radio("Dataset", sources, index=sources.index(current_source) if current_source in sources else 0,
                      format_func=lambda s: proj.DATASET_LABELS.get(s, "Upload your own images"),
                      key=f"data-source-{pid}", horizontal=False,
                      help="Fashion-MNIST is the real dataset (TFDS, prepared once). The synthetic set is a tiny "
                           "stand-in that trains in seconds, for trying the workflow.")
with right:
    if source == "fashion_mnist" and settings.public_mode():
        st.caption("Fashion-MNIST is provided by this server (prepared once, shared read-only).")
    elif source == "fashion_mnist":
        folder = st.text_input("Local data folder", value=proj.data_folder(project) or "", key=f"data-dir-{pid}",
                               placeholder="empty: download with TFDS",
                               help="Folder with Zalando's four *-ubyte.gz files (train/t10k images and labels). "
                                    "TFDS reads them from here instead of downloading; leave empty to download.")
        if folder.strip() != (project.get("data_dir") or ""):
            try:
                catalogue.check_data_dir(folder.strip() or None, origin="the data folder box")
            except ValueError as error:
                st.error(ui.plain(error), icon=":material/folder_off:")
            else:
                ui.save_project(project, data_dir=folder.strip() or None)
        st.caption(f"Prepared arrays are cached in `{proj.home_dir() / 'datasets'}`.")
    elif source == UPLOAD:
        st.caption("Your own images: a .zip of one folder per class (optionally inside train/, val/, test/), "
                   "a CSV of label and pixels, an .npz with x_train/y_train, or zipped IDX files. Converted once, then "
                   "used like Fashion-MNIST.")
    else:
        st.caption("1,000 training and 200 test images of 10 made-up patterns: good for a first try, "
                   "meaningless for accuracy.")



def upload_panel() -> str | None:
    """Pick an uploaded dataset or import a new one; returns the chosen dataset name (None: nothing yet)."""
    upload_home = ui.workspace().home  # a visitor's own folder in public mode
    existing = {m["name"]: m for m in importer.list_uploads(home=upload_home)}
    chosen = None
    if existing:
        names = list(existing)
        current = project.get("dataset")
        chosen = st.selectbox(
            "Uploaded dataset", names, index=names.index(current) if current in names else 0, key=f"upload-pick-{pid}-{st.session_state.get('upload-version', 0)}",
            format_func=lambda n: f"{existing[n]['display_name']} · {existing[n]['num_classes']} classes · "
                                  f"{existing[n]['counts']['train']:,} training images",
            help="Datasets you uploaded to this workspace.")
        with st.popover("Delete this dataset", icon=":material/delete:"):
            st.caption(f"Removes **{existing[chosen]['display_name']}** from this workspace. Runs trained on it keep "
                       "their weights but cannot be evaluated again.")
            if st.button("Delete it", type="primary", key=f"upload-delete-{pid}"):
                try:
                    importer.delete_upload(chosen, home=upload_home)
                except store.StoreError as error:
                    st.error(f"Could not delete it: {ui.plain(error)}", icon=":material/error:")
                else:
                    if project.get("dataset") == chosen:
                        ui.save_project(project, dataset="fashion_mnist")
                    st.session_state["upload-version"] = st.session_state.get("upload-version", 0) + 1
                    st.rerun()
    with st.expander("Upload a new dataset", expanded=not existing, icon=":material/upload_file:"):
        cap = upload_limits.browser_upload_mb()
        file_column, folder_column = st.columns(2)
        file = file_column.file_uploader(
            "A dataset file", type=["zip", "csv", "npz", "gz"], key=f"upload-file-{pid}", max_upload_size=cap,
            help=f"Up to {cap} MB through the browser (larger datasets: give their path below, locally). Checked for "
                 "size, zip bombs and unsafe paths before anything is decoded.")
        folder_files = folder_column.file_uploader(
            "…or a folder", accept_multiple_files="directory", key=f"upload-folder-{pid}", max_upload_size=cap,
            type=[s.lstrip(".") for s in upload_limits.IMAGE_SUFFIXES] + ["txt"],
            help="A folder with one subfolder of images per class (optionally inside train/, val/, test/).")
        a, b = st.columns(2)
        size = a.selectbox("Image size", ["auto", *upload_limits.IMAGE_SIZES], key=f"upload-size-{pid}",
                           help="Square side in pixels the images are resized to; auto keeps same-size images as they are.")
        color = b.selectbox("Colour", ["auto", *upload_limits.COLORS], key=f"upload-color-{pid}",
                            help="Grayscale is faster; RGB keeps colour.")
        options = (None if size == "auto" else int(size), None if color == "auto" else color)
        if file_column.button("Import the file", icon=":material/file_upload:", disabled=file is None,
                              key=f"upload-go-{pid}"):
            data, name = file.getvalue(), file.name  # the page's file object does not outlive this run

            def from_browser(progress: Any) -> dict:
                proj.check_import_quota(ui.workspace(), len(data))  # a public Space's disk quota, before writing
                return importer.import_stream(io.BytesIO(data), name, *options, progress=progress, home=upload_home)

            _start_import(name, hashlib.sha256(data).hexdigest()[:16], options, from_browser)
        if folder_column.button("Import the folder", icon=":material/drive_folder_upload:",
                                disabled=not folder_files, key=f"upload-folder-go-{pid}"):
            files = [(f.name, f.getvalue()) for f in folder_files]
            top = files[0][0].replace("\\", "/").split("/")[0] or "folder"
            digest = hashlib.sha256(b"".join(n.encode() + hashlib.sha256(d).digest() for n, d in sorted(files)))

            def from_folder(progress: Any) -> dict:
                proj.check_import_quota(ui.workspace(), sum(len(d) for _, d in files))
                return importer.import_files(files, top, *options, progress=progress, home=upload_home)

            _start_import(f"{top}/ ({len(files):,} files)", digest.hexdigest()[:16], options, from_folder)
        if not settings.public_mode():  # a path on the server is this computer's own disk only when run locally
            path = st.text_input("…or a dataset on this computer", key=f"upload-path-{pid}",
                                 placeholder="/home/me/photos.zip, or a folder of class folders",
                                 help=f"A zip, CSV, NPZ or IDX file, or a folder; up to "
                                      f"{upload_limits.LOCAL_LIMITS.max_archive_bytes / 2**30:.0f} GB, read in place.")
            if st.button("Import from this path", icon=":material/folder_open:", disabled=not path.strip(),
                         key=f"upload-path-go-{pid}"):
                where = Path(path.strip()).expanduser()
                _start_import(where.name, str(where), options, lambda progress: importer.import_upload(
                    where, *options, progress=progress, home=upload_home))
    # Imports run in the background: they go on through reruns, page switches and reloads, and can be cancelled.
    for snap in ui.background().owned(ui.owner(), "import", f"{pid}:"):
        ui.watch_task(snap, on_done=lambda manifest: _imported(manifest, upload_home))
    return chosen


def _start_import(name: str, ident: str, options: tuple, work: Callable[[Any], dict]) -> None:
    try:
        ui.background().submit(ui.owner(), "import", f"{pid}:{ident}:{options}", work, label=f"Importing {name}")
    except ValueError as error:
        st.error(ui.plain(error), icon=":material/error:")


def _imported(manifest: dict, upload_home: Path) -> None:
    ui.save_project(project, dataset=manifest["name"], upload_home=str(upload_home))
    st.session_state["upload-version"] = st.session_state.get("upload-version", 0) + 1  # a fresh picker
    st.rerun()


if source == UPLOAD:
    chosen_upload = upload_panel()
    if chosen_upload is None:
        st.stop()
    if chosen_upload != project.get("dataset"):
        ui.save_project(project, dataset=chosen_upload, upload_home=str(ui.workspace().home))
elif source != current_source:  # a project with no dataset stored yet is on the default, Fashion-MNIST
    ui.save_project(project, dataset=source)

bar = st.empty()
try:
    dataset = proj.load_dataset(project, progress=ui.progress_callback(bar))
except (ValueError, catalogue.DataUnavailable) as error:
    bar.empty()
    st.error(f"The data cannot be loaded: {ui.plain(error)}", icon=":material/error:")
    st.stop()
bar.empty()

# ----------------------------------------------------------------------------- split

st.subheader("Split")
saved = proj.split_spec(project, dataset)
controls, counts_column = st.columns([3, 2], gap="large")
with controls:
    mode = st.radio("Split mode", ["official", "pooled"], index=["official", "pooled"].index(saved.mode),
                    key=f"split-mode-{pid}", horizontal=True,
                    format_func=splitting.mode_labels(dataset).get,
                    help="Official keeps Zalando's 10,000 test images and carves validation out of the 60,000 "
                         "training images (comparable with published results). Pooled mixes all 70,000 and cuts "
                         "them by your fractions (80/10/10 as in the seed article).")
    # The sliders show whole percents; the spec changes only where the user moves one, so a stored fraction
    # between two percents (0.855) is never rounded just by opening the page.
    shown = {"mode": saved.mode, "train": int(round(saved.fractions[0] * 100)),
             "val": int(round(saved.fractions[1] * 100)), "val_fraction": int(round(saved.val_fraction * 100)),
             "seed": saved.seed, "stratify": saved.stratify}
    chosen = {"mode": mode}
    if mode == "pooled":
        a, b = st.columns(2)
        chosen["train"] = a.slider("Train %", 10, 97, shown["train"], key=f"split-train-{pid}",
                                   help="Share of all images used to fit the weights.")
        # The three shares add up by construction: validation can take at most what train leaves, minus 1% for test.
        # The validation % the user asked for is kept apart from the slider, so a train % raised and lowered again
        # gives it back, and a cut is said, not silent.
        val_max, val_key, wanted_key = min(50, 99 - chosen["train"]), f"split-val-{pid}", f"split-val-wanted-{pid}"
        wanted = st.session_state.setdefault(wanted_key, shown["val"])  # as first shown, until the user moves it
        if val_key in st.session_state and st.session_state[val_key] != min(val_max, wanted):
            st.session_state[val_key] = st.session_state[f"{val_key}-set"] = min(val_max, wanted)

        def _val_moved() -> None:  # a move of the user's, not the value the page set just above
            if st.session_state[val_key] != st.session_state.pop(f"{val_key}-set", None):
                st.session_state[wanted_key] = st.session_state[val_key]

        chosen["val"] = b.slider("Validation %", 1, val_max, min(val_max, wanted), key=val_key, on_change=_val_moved,
                                 help="Share used to pick the best epoch and tune settings. The rest is the test set.")
        if wanted > val_max:
            b.caption(f":orange[Validation is {val_max}% while Train is {chosen['train']}% (you set {wanted}%): at "
                      "least 1% stays for test. Lower Train % to get it back.]")
    else:
        own_test = len(dataset.test_labels) > 0
        chosen["val_fraction"] = st.slider(
            "Validation % of the training images" if own_test else "Validation % (and test %) of the training images",
            1, 50, shown["val_fraction"], key=f"split-valfrac-{pid}",
            help="Carved out of the training images." if own_test else
                 "This share of the training images becomes the validation set, and as many again the test set.")
    a, b = st.columns(2)
    chosen["seed"] = int(a.number_input("Shuffle seed", 0, 2**31 - 1, saved.seed, key=f"split-seed-{pid}",
                                        help="The same seed gives the same split, image for image."))
    with b:
        st.write("")
        chosen["stratify"] = st.toggle("Stratify by class", saved.stratify, key=f"split-strat-{pid}",
                                       help="Keep each class's share equal in every split.")
    spec = splitting.edited_spec(saved, checks.edits(shown, chosen))
    if spec.mode == "pooled":
        st.caption(f"Test: **{spec.fractions[2]:.0%}** (what is left).")

with counts_column:
    try:
        counts = proj.checked_split_counts(dataset, spec)
    except ValueError as error:
        st.error(f"{ui.plain(error)}", icon=":material/error:")
        st.stop()
    total = sum(counts.values())
    cols = st.columns(3)
    for column, (part, count) in zip(cols, counts.items()):
        column.metric(part.capitalize(), f"{count:,}", f"{count / total:.0%}", delta_color="off", delta_arrow="off")
    st.caption(f"{total:,} images of {dataset.input_shape[0]}×{dataset.input_shape[1]} pixels in "
               f"{dataset.num_classes} classes.")
    if proj.train_limit(project):
        st.caption(f"Training uses only the first {proj.train_limit(project):,} training images "
                   f"(set on Hyperparameters).")

if spec.to_dict() != saved.to_dict() or not project.get("split"):
    ui.save_project(project, split=spec.to_dict())

with st.spinner("Splitting…"):
    splits = proj.make_splits(dataset, spec)

balance_column, pixels_column = st.columns([3, 2], gap="large")
with balance_column:
    st.markdown("**Class balance per split**")
    st.altair_chart(charts.class_balance(splitting.class_balance(splits)), width="stretch")
with pixels_column:
    st.markdown("**Pixel intensities** (training images)")
    st.altair_chart(charts.pixel_histogram(splitting.pixel_histogram(splits.train_images, bins=32, seed=spec.seed)),
                    width="stretch")
    st.caption(estimates.describe_pixels(splits.train_images))
st.markdown("**Samples** · three random training images per class")
gallery = splitting.sample_gallery(splits.train_images, splits.train_labels, per_class=3, seed=spec.seed)
# Fixed-size tiles in a wrapping row: a few classes stay small on a desktop, and a phone shows several per row
# (columns would stack them one per screen width).
with st.container(horizontal=True, gap="small"):
    for label, images in gallery.items():
        st.image(estimates.montage(images, columns=1, factor=3, gap=4), caption=splits.class_names[label], width=88)

# ----------------------------------------------------------------------------- label check

with st.expander(f"Label check · find likely mislabelled images · training uses the "
                 f"{label_check.version_label(project)}", icon=":material/fact_check:"):
    labels.section(project, proj.load_dataset(project, labels=False))

# ----------------------------------------------------------------------------- augmentation

st.subheader("Augmentation")
st.caption("Random changes applied to each training batch on the device (never to validation or test images). "
           "They make the model robust to shifted, rotated or photographed garments.")
cfg = proj.train_config(project)
augment = cfg.augment.to_dict()
settings_column, preview_column = st.columns([2, 3], gap="large")
with settings_column:
    # Each slider spans its field's whole valid range (AugmentConfig's metadata), and only the strengths the user
    # moves are saved: opening the page never rewrites a stored value.
    chosen = {name: ui.settings_slider(AugmentConfig, name, augment[name], key=f"aug-{name}-{pid}")
              for name in AugmentConfig.GEOMETRY}
    with st.expander("Photo robustness (for real photos on Deploy)"):
        chosen.update({name: ui.settings_slider(AugmentConfig, name, augment[name], key=f"aug-{name}-{pid}")
                       for name in AugmentConfig.PHOTO})
    changed = checks.edits(augment, chosen)
    try:
        new_cfg = cfg.replace(augment={**augment, **changed})
        new_cfg.augment.validate()
    except ValueError as error:
        st.error(ui.plain(error), icon=":material/error:")
    else:
        if changed:
            ui.save_project(project, config=new_cfg.to_dict())
            cfg = new_cfg
    if st.button("Turn all augmentation off", icon=":material/block:", disabled=not cfg.augment.active()):
        ui.save_project(project, config=cfg.replace(augment=AugmentConfig()).to_dict())
        for name in AugmentConfig.GEOMETRY + AugmentConfig.PHOTO:
            st.session_state.pop(f"aug-{name}-{pid}", None)
        st.rerun()

with preview_column:
    seed_key = f"aug-preview-seed-{pid}"
    st.session_state.setdefault(seed_key, 0)
    head, button = st.columns([3, 1], vertical_alignment="bottom")
    head.markdown("**Preview** · " + ("left column original, then four augmented versions" if cfg.augment.active()
                                       else "six training images, as training sees them"))
    if button.button("Shuffle", icon=":material/shuffle:", help="Other images and other random draws."):
        st.session_state[seed_key] += 1
    rng = np.random.default_rng(st.session_state[seed_key])
    picks = rng.choice(len(splits.train_labels), size=6, replace=False)
    originals = splits.train_images[np.sort(picks)]
    if cfg.augment.active():
        with st.spinner("Augmenting (the first preview after a restart compiles for a few seconds)…"):
            augmented = estimates.augment_preview(originals, cfg.augment, seed=st.session_state[seed_key], copies=4)
        grid = np.concatenate([originals[:, None], augmented.reshape(len(originals), 4, *originals.shape[1:])], axis=1)
        st.image(estimates.montage(grid.reshape(-1, *originals.shape[1:]), columns=5, factor=3, gap=3), width="stretch")
    else:
        st.image(estimates.montage(originals, columns=6, factor=3, gap=3), width="stretch")
        st.info("All augmentation is off: training sees the images exactly as they are.", icon=":material/info:")

st.divider()
ui.link("model", "Next: build the model")

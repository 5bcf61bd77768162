"""6 · Deploy: choose the project's deployed model (a run or the shipped demo model), upload photos, and see for
each one what the pipeline did, the 28x28 image the model sees and the predicted probabilities; share a link."""
from __future__ import annotations

import hashlib
from typing import Any, Callable

import streamlit as st

import studio_exports
import studio_ui as ui
from fmnist_jax import settings, store
from fmnist_jax.deploy import bundle, onnx_export, predict, script_export, tflite_export
from fmnist_jax.photos import decode, pipeline_params
from fmnist_jax.studio import space, tasks

DEMO = "demo"

ui.frame("deploy")
ui.page_title("6", "Deploy", "Try a model on your own photos. Each photo goes through the same preparation as the "
                             "model's training images (described under the model you choose), then the model answers.")
project = ui.require_project()
pid = project["id"]
ws = ui.workspace()


def demo_problem() -> str | None:
    """Why the shipped demo model cannot serve (None when it can)."""
    try:
        ui.cached_model(DEMO, "demo")
    except (ValueError, store.StoreError, OSError) as error:  # a missing or damaged demo only removes it from the choices
        return str(error)
    return None


runs = {r["id"]: r for r in tasks.runs_table(ws, pid) if r["has_weights"]}
demo_missing = demo_problem()
options = ([] if demo_missing else [DEMO]) + list(runs)
if not options:
    st.info("No model to deploy yet: train a run on the Training page and it appears here. (The shipped demo "
            f"model is not available on this server: {ui.plain(demo_missing)})", icon=":material/model_training:")
    ui.link("training", "Go to Training")
    st.stop()
demo_card = {} if demo_missing else (getattr(ui.cached_model(DEMO, "demo"), "card", {}) or {})
demo_photos = (demo_card.get("real_photos") or {}).get("accuracy")
labels = {DEMO: "Demo model · test " + ui.percent(demo_card.get("test_accuracy"))
          + (f" · photos {demo_photos:.0%}" if demo_photos else ""),
          **{rid: f"{r['name']} · test {ui.percent(r['test_accuracy'])}" for rid, r in runs.items()}}
# The deployed model changes only when someone chooses another one: a newly trained run is offered, not
# switched to (it may do worse on photos than the demo model, which was adapted to them).
wanted = st.query_params.get("model")
default = wanted if wanted in options else project.get("deployed_run") if project.get("deployed_run") in options else (
    DEMO if DEMO in options else tasks.best_run(list(runs.values()))["id"])


def _converted_export(kind: str, label: str, file_name: str, source: str, stamp: str,
                      convert: Callable[[], tuple[bytes, float]]) -> None:
    """A download prepared in the background (ONNX, TFLite): the button starts `convert` (the file and its
    largest difference from JAX), the progress shows while it runs, the download button once it is done."""
    task = ui.background().find(ui.owner(), kind, f"{source}:{stamp}")
    if task and task["status"] == "done":
        payload, difference = task["result"]
        st.download_button(f"Download {label}", payload, file_name=file_name, mime="application/octet-stream",
                           icon=":material/file_download:", key=f"{kind}-dl-{pid}",
                           help=f"Input float32 (N, H, W, C) in [0, 1], calibrated probabilities out; checked "
                                f"against JAX: within {difference:.1e}.")
    elif task and task["status"] in (*tasks.ACTIVE, "failed"):
        ui.watch_task(task)
    elif st.button(f"Prepare {label} export", icon=":material/conversion_path:", key=f"{kind}-make-{pid}",
                   help="Converts the model and checks the result against JAX, in the background."):
        def work(progress: Any) -> tuple[bytes, float]:
            progress(0.05, f"converting to {label} and checking the result against JAX")
            return convert()  # an unsupported layer is an ExportError, a UserError: shown as its message

        ui.background().submit(ui.owner(), kind, f"{source}:{stamp}", work, label=f"{label} export")
        st.rerun()


def _deploy() -> None:
    choice = st.session_state[f"deploy-model-{pid}"]
    ui.save_project(ui.workspace().get_project(pid), deployed_run=None if choice == DEMO else choice)
    st.query_params["model"] = choice


left, right = st.columns([2, 3], gap="large")
with left:
    choice = st.selectbox("Deployed model", options, index=options.index(default), format_func=labels.get,
                          key=f"deploy-model-{pid}", on_change=_deploy,
                          help="The model that answers here and behind the share link. Any run with trained weights "
                               "can be deployed; the demo model works before you have trained anything.")
    source = DEMO if choice == DEMO else runs[choice]["path"]
    stamp = store.weights_stamp(source)
    try:
        with st.spinner("Loading the model…"):
            model = ui.cached_model(source, stamp)
    except (ValueError, store.StoreError, OSError) as error:  # a broken bundle or run: said, not a traceback
        st.error(f"This model cannot be loaded: {ui.plain(error)}", icon=":material/error:")
        st.stop()
    card = getattr(model, "card", {}) or {}
    st.caption(f"{len(model.class_names)} classes · input {'×'.join(map(str, model.input_shape))}"
               + (f" · test accuracy {ui.percent(card.get('test_accuracy'))}" if card.get("test_accuracy") else ""))
    if choice == DEMO and not runs:
        st.caption("Train a run on the Training page to deploy your own model.")
    if card.get("real_photos"):
        ui.model_card(card)
with right:
    ui.share_panel(pid, choice, "Demo model" if choice == DEMO else f"{project['name']}: {runs[choice]['name']}")

with st.expander("Use this model outside the studio", expanded=False):
    stem = "fmnist-demo" if choice == DEMO else f"fmnist-{pid}-{choice}"
    a, b, c = st.columns(3)
    lite = ui.background().find(ui.owner(), "tflite", f"{source}:{stamp}")
    lite_payload = lite["result"][0] if lite and lite["status"] == "done" else None
    a.download_button("Download bundle (.zip)", data=lambda: bundle.bundle_bytes(model, tflite=lite_payload),
                      file_name=f"{stem}.zip", mime="application/zip", icon=":material/package_2:", key=f"bundle-{pid}",
                      help="Weights, layers, class names and photo settings in one file; loads with `predict`/`serve` "
                           "and needs no pickle" + ("; with the TensorFlow Lite model." if lite_payload else
                                                    "; prepare the TensorFlow Lite export to include it."))
    # The conversions and their checks against JAX run in the background (a few seconds to a minute).
    with b:
        _converted_export("onnx", "ONNX", f"{stem}.onnx", source, stamp, lambda: onnx_export.onnx_bytes(model))
    with c:
        _converted_export("tflite", "TensorFlow Lite", f"{stem}.tflite", source, stamp,
                          lambda: tflite_export.tflite_bytes(model, onnx_export.check_images(model)))
    studio_exports.int8_exports(pid, model, DEMO if choice == DEMO else source, source, stamp, stem)
    st.download_button("Training script (.py)", data=lambda: script_export.model_script(model, stem),
                       file_name=f"train_{stem.replace('-', '_')}.py", mime="text/x-python", icon=":material/code:",
                       key=f"script-{pid}", help="The model as code: one standalone Flax NNX + Optax script that "
                                                 "trains these layers with these settings on Fashion-MNIST.")
    target = "demo" if choice == DEMO else source
    st.markdown("Command line (same pipeline, JSON output):")
    st.code(f"python -m fmnist_jax predict {target} photo.jpg --json", language="bash", wrap_lines=True)
    api = f"{space.direct_base(ui.origin())}/api"
    st.markdown(f"REST API, on this server ([documentation]({api}/docs)):")
    # Without a token the studio's API answers with the demo model, and only locally; a share token picks a model.
    token = "" if choice == DEMO and not settings.public_mode() else "?share=TOKEN"
    st.code(f"curl -F files=@photo.jpg '{api}/predict{token}'", language="bash", wrap_lines=True)
    if token:
        st.caption("TOKEN: the token of a predict-only link to this model (*Create a predict-only link* below).")
    st.caption(f"Or serve the model on its own: `python -m fmnist_jax serve {target} --port 8000`.")

st.caption(f"Photos for this model: {pipeline_params.describe(model.preprocess, model.input_shape)}")
# No type filter: a file that is not a photo gets its reason in words below (the uploader would only mark it "!").
uploads = st.file_uploader("Upload photos", accept_multiple_files=True, max_upload_size=decode.MAX_UPLOAD_BYTES // 2**20,
                           key=f"deploy-upload-{pid}",
                           help="One or many images (" + ", ".join(decode.UPLOAD_TYPES) + f"), up to "
                                f"{decode.MAX_UPLOAD_BYTES // 2**20} MB each. A garment on a plain background works "
                                "best; phone photos are fine.")
if not uploads:
    st.info("Upload one or more photos of a T-shirt, trousers, a pullover, a dress, a coat, sandals, a shirt, "
            "sneakers, a bag or ankle boots.", icon=":material/add_photo_alternate:")
    st.stop()

show_all = st.toggle("Show all classes", key=f"deploy-all-{pid}", help="All probabilities instead of the top 3.")
files = [(upload.name, upload.getvalue()) for upload in uploads]
cache_key = hashlib.sha256(("|".join([source, stamp] + [f"{name}:{hashlib.sha256(payload).hexdigest()}"
                                                        for name, payload in files])).encode()).hexdigest()
if st.session_state.get("deploy-cache-key") != cache_key:
    with st.spinner(f"Predicting {len(files)} image{'s' if len(files) != 1 else ''}…"):
        st.session_state["deploy-results"] = predict.predict_files(model, files)
    st.session_state["deploy-cache-key"] = cache_key
results = st.session_state["deploy-results"]

ok = [r for r in results if "error" not in r]
if len(results) > 1:
    st.caption(f"{len(ok)} of {len(results)} images predicted" + (f"; {len(results) - len(ok)} could not be read."
                                                                    if len(ok) < len(results) else "."))
for result in results:
    ui.prediction_card(result, model, show_all)

"""5 · Evaluation: test loss and accuracy beside train/validation, confusion matrix, per-class scores,
most-confused pairs and a filterable gallery of misclassified test images."""
from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

import studio_map
import studio_ui as ui
from fmnist_jax import store
from fmnist_jax.data import catalogue
from fmnist_jax.deploy import explain
from fmnist_jax.studio import charts, estimates, tasks

GALLERY_LIMIT = 48
PERCENT = "%.2f%%"

ui.frame("evaluation")
ui.page_title("5", "Evaluation", "How well a trained run does on test images it never saw, and where it goes wrong.")
project = ui.require_project()
pid = project["id"]
ws = ui.workspace()

runs = [r for r in tasks.runs_table(ws, pid) if r["has_weights"]]
if not runs:
    st.info("No trained run yet. Train one first; its results appear here.", icon=":material/model_training:")
    ui.link("training", "Go to Training")
    st.stop()

labels = {r["id"]: f"{r['name']} · {r['status']} · {ui.stamp(r['created'])}" for r in runs}
best = tasks.best_run(runs)
run_id = st.selectbox("Run", list(labels), index=list(labels).index(best["id"]), format_func=labels.get,
                      key=f"eval-run-{pid}", help="Runs with trained weights, newest first; the page opens on the one "
                                                  "with the best validation accuracy.")
run = next(r for r in runs if r["id"] == run_id)

# The test-set pass runs in the background (cached in the run folder afterwards): it goes on if the page does not.
stamp = store.weights_stamp(run["path"])


def _evaluate(progress: Any) -> dict:
    # A run whose data is gone (DataUnavailable) is a UserError: the registry shows its message.
    return tasks.evaluate_run(ws, pid, run_id, progress=progress)


evaluation = ui.background().submit(ui.owner(), "evaluate", f"{pid}:{run_id}:{stamp}", _evaluate,
                               label=f"Evaluating {run['name']} on the test set")
if evaluation["status"] != "done":
    ui.watch_task(evaluation)
    st.stop()
metrics = evaluation["result"]
try:
    run_record = tasks.read_run(ws, pid, run_id)
    test_images, test_labels = tasks.gallery_images(run_record)
except (ValueError, store.StoreError, catalogue.DataUnavailable) as error:
    st.error(f"This run cannot be evaluated: {ui.plain(error)}", icon=":material/error:")
    st.stop()

history = tasks.run_history(run["path"])
last = history[-1] if history else {}
best = max(history, key=lambda h: h["val_accuracy"]) if history else {}
class_names = metrics["class_names"]

m = st.columns(5)
m[0].metric("Test accuracy", ui.percent(metrics["accuracy"]), help=f"On {metrics['count']:,} test images.")
m[1].metric("Test loss", f"{metrics['loss']:.4f}", help="Mean cross-entropy on the test images.")
m[2].metric("Validation accuracy", ui.percent(last.get("val_accuracy")),
            f"best {best['val_accuracy']:.2%} (epoch {best['epoch']})" if best else None, delta_color="off",
            delta_arrow="off", help="Last epoch; the delta shows the best epoch.")
m[3].metric("Train accuracy", ui.percent(last.get("accuracy")), help="Running accuracy of the last epoch (with dropout "
                                                                     "and augmentation on, so it can sit below validation).")
gap = (last.get("accuracy") or 0) - metrics["accuracy"]
m[4].metric("Train − test gap", f"{gap:+.2%}" if last else "–",
            help="A large positive gap means over-fitting: more regularisation or augmentation may help.")
if metrics.get("members"):
    alone = ", ".join(ui.percent(a) for a in metrics["members"])
    st.caption(f"An ensemble of {len(metrics['members'])} models: alone, its members get {alone} of these test images "
               f"right; the mean of their answers gets {ui.percent(metrics['accuracy'])}.")

left, right = st.columns([3, 2], gap="large")
with left:
    head, toggle = st.columns([2, 1], vertical_alignment="bottom")
    head.subheader("Confusion matrix")
    normalized = toggle.toggle("Row-normalised", key=f"eval-norm-{pid}",
                               help="Show each true class's row as shares (recall on the diagonal) instead of counts.")
    with st.container(key="confusion-matrix"):
        st.altair_chart(charts.confusion_matrix(metrics["confusion_matrix"], class_names, normalized), width="stretch")
with right:
    st.subheader("Per class")
    # Shares as percentages with two decimals everywhere on the page, like the figures above (the column's
    # own "percent" format dropped trailing zeros: 97% next to 98.88%).
    per_class = pd.DataFrame(metrics["per_class"])
    for column in ("precision", "recall", "f1"):
        per_class[column] = per_class[column] * 100
    st.dataframe(per_class, hide_index=True, width="stretch", height=36 * len(per_class) + 38, column_config={
        "precision": st.column_config.NumberColumn(format=PERCENT, help="Of the images predicted as this class, "
                                                                        "the share that really are."),
        "recall": st.column_config.NumberColumn(format=PERCENT, help="Of this class's images, the share found."),
        "f1": st.column_config.NumberColumn("F1", format=PERCENT, help="Harmonic mean of precision and recall."),
        "support": st.column_config.NumberColumn("images", format="localized")})
    st.subheader("Most confused")
    if metrics["most_confused"]:
        confused = pd.DataFrame(metrics["most_confused"][:8])
        confused["share of true class"] = [100 * row["count"] / max(1, metrics["per_class"][class_names.index(row["true"])]["support"])
                                           for row in metrics["most_confused"][:8]]
        st.dataframe(confused, hide_index=True, width="stretch", height=36 * len(confused) + 38, column_config={
            "share of true class": st.column_config.NumberColumn(format=PERCENT)})
    else:
        st.caption("No mistakes at all.")

st.subheader("Calibration")
calibration = metrics["calibration"]
calibrated = abs(calibration["temperature"] - 1.0) > 1e-9
chart_column, figures_column = st.columns([3, 2], gap="large")
with chart_column:
    st.altair_chart(charts.reliability(calibration), width="stretch")
with figures_column:
    m = st.columns(2)
    m[0].metric("ECE, softmax", f"{calibration['before']['ece']:.2%}",
                help="Expected calibration error: how far the model's confidence is from its accuracy, averaged "
                     "over the test images (0 is perfectly calibrated).")
    if calibrated:
        m[1].metric("ECE, calibrated", f"{calibration['after']['ece']:.2%}",
                    f"{calibration['after']['ece'] - calibration['before']['ece']:+.2%}", delta_color="inverse",
                    help=f"With the temperature {calibration['temperature']:.3g} fitted on held-out photos when "
                         "the model was adapted; predictions and 'not sure' use these probabilities.")
    st.caption("Each point is the test images whose top-class probability falls in one tenth of the range: a "
               "calibrated model is right as often as it is sure, on the dashed diagonal. "
               + ("The temperature was fitted on real photos, not on Fashion-MNIST, so it may not help here."
                  if calibrated else "This model has no fitted temperature (runs adapted to real photos get one)."))

st.subheader("Misclassified test images")
mistakes = metrics["mistakes"]
predicted = metrics["predicted"]
confidence = dict(zip(mistakes, metrics["mistake_confidence"]))
if not mistakes:
    st.success("The model got every test image right.", icon=":material/celebration:")
else:
    a, b, c = st.columns([2, 2, 1])
    true_filter = a.multiselect("True class", class_names, key=f"eval-true-{pid}", placeholder="any",
                                help="Show only mistakes on these classes.")
    pred_filter = b.multiselect("Predicted class", class_names, key=f"eval-pred-{pid}", placeholder="any",
                                help="Show only mistakes the model labelled as these classes.")
    order = c.selectbox("Order", ["most confident first", "least confident first"], key=f"eval-order-{pid}")
    selected = [i for i in mistakes
                if (not true_filter or class_names[int(test_labels[i])] in true_filter)
                and (not pred_filter or class_names[predicted[i]] in pred_filter)]
    if order == "least confident first":
        selected = selected[::-1]
    pages = max(1, -(-len(selected) // GALLERY_LIMIT))
    page_column, caption_column = st.columns([1, 4], vertical_alignment="bottom")
    page = page_column.number_input("Page", 1, pages, 1, key=f"eval-page-{pid}-{len(selected)}",
                                    help=f"{GALLERY_LIMIT} mistakes per page.") if pages > 1 else 1
    first = (page - 1) * GALLERY_LIMIT
    caption_column.caption(f"{len(selected):,} of {len(mistakes):,} mistakes match; showing {first + 1:,}-"
                           f"{min(first + GALLERY_LIMIT, len(selected)):,}" + (f" (page {page} of {pages})." if pages > 1 else "."))
    looked = st.toggle("Show where the model looked", key=f"eval-explain-{pid}",
                       help="Each mistake with its saliency map (integrated gradients: the pixels whose value, against a "
                            "black and a blurred copy of the image, raised the wrong answer most). Warm colours are "
                            "the pixels the wrong answer rests on.")
    shown = selected[first:first + GALLERY_LIMIT]
    tiles = {i: estimates.upscale(test_images[i], 4) for i in shown}
    if looked and shown:
        model = ui.cached_model(run["path"], stamp)
        maps = explain.explain(model, test_images[shown])[0]
        tiles = {i: estimates.upscale(explain.overlay(test_images[i], m), 4) for i, m in zip(shown, maps)}
    # Fixed-size tiles in a wrapping row: eight or so across on a desktop, three on a phone (columns would stack
    # them one per screen width there).
    with st.container(horizontal=True, gap="small"):
        for index in shown:
            with st.container(width=96):
                st.image(tiles[index], width=96)
                st.caption(f"**{class_names[int(test_labels[index])]}** → {class_names[predicted[index]]} "
                           f"({confidence[index]:.0%})")

st.divider()
studio_map.map_section(ws, project, run, run_record, lambda: ui.cached_model(run["path"], stamp))
st.divider()
ui.link("deploy", "Next: deploy")

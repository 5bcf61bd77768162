"""Altair chart builders for the studio (class balance, learning curves, confusion matrix, probabilities ...)
and the DOT text of the network diagram. Inputs are plain lists and dicts, so the CLI and tests can use them.

"""
from __future__ import annotations

import json
from typing import Sequence

import altair as alt
import pandas as pd

SPLIT_COLORS = alt.Scale(domain=["train", "validation", "test"], range=["#4c78a8", "#f58518", "#54a24b"])
SERIES_COLORS = alt.Scale(domain=["train (live)", "train", "validation"], range=["#9ecae9", "#4c78a8", "#f58518"])


def class_balance(rows: Sequence[dict]) -> alt.Chart:
    """Grouped bars: examples per class in each split (rows of split, class, count)."""
    frame = pd.DataFrame(rows)
    order = list(dict.fromkeys(frame["class"]))
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("class:N", sort=order, title=None, axis=alt.Axis(labelAngle=-35, labelOverlap=False)),
        xOffset=alt.XOffset("split:N", sort=["train", "validation", "test"]),
        y=alt.Y("count:Q", title="images"),
        color=alt.Color("split:N", scale=SPLIT_COLORS, legend=alt.Legend(orient="top", title=None)),
        tooltip=["split", "class", alt.Tooltip("count:Q", format=",")],
    ).properties(height=280)


def pixel_histogram(rows: Sequence[dict]) -> alt.Chart:
    """Bars of pixel-intensity counts (log scale: most Fashion-MNIST pixels are black background)."""
    frame = pd.DataFrame(rows)
    width = float(frame["intensity"].diff().median()) if len(frame) > 1 else 8.0
    frame["upper"] = frame["intensity"] + width
    frame["count_plus_one"] = frame["count"] + 1
    return alt.Chart(frame).mark_bar(color="#4c78a8").encode(
        x=alt.X("intensity:Q", title="pixel intensity (0 = black, 255 = white)", scale=alt.Scale(domain=[0, 256])),
        x2="upper:Q",
        y=alt.Y("count_plus_one:Q", title="pixels (log scale)", scale=alt.Scale(type="log")),
        y2=alt.datum(1),
        tooltip=[alt.Tooltip("intensity:Q", title="from"), alt.Tooltip("count:Q", format=",")],
    ).properties(height=220)


def learning_curve_rows(chunks: Sequence[dict], epochs: Sequence[dict]) -> list[dict]:
    """Long-form rows (x in epochs, series, metric, value) from live chunk records and epoch records."""
    rows = []
    for c in chunks:
        x = c["epoch"] - 1 + c["epoch_progress"]
        rows.append({"epoch": x, "series": "train (live)", "metric": "loss", "value": c["loss"]})
        rows.append({"epoch": x, "series": "train (live)", "metric": "accuracy", "value": c["accuracy"]})
    for e in epochs:
        for metric, key in (("loss", "loss"), ("accuracy", "accuracy")):
            rows.append({"epoch": float(e["epoch"]), "series": "train", "metric": metric, "value": e[key]})
        for metric, key in (("loss", "val_loss"), ("accuracy", "val_accuracy")):
            if e.get(key) is not None:
                rows.append({"epoch": float(e["epoch"]), "series": "validation", "metric": metric, "value": e[key]})
    return rows


def learning_curve(rows: Sequence[dict], metric: str, epochs_planned: int | None = None) -> alt.Chart:
    """Train (live, per chunk), train and validation (per epoch) curves of one metric."""
    frame = pd.DataFrame([r for r in rows if r["metric"] == metric],
                         columns=["epoch", "series", "metric", "value"])
    domain = [0, max(1, epochs_planned or 0, float(frame["epoch"].max()) if len(frame) else 1)]
    axis_format = ".0%" if metric == "accuracy" else ".3f"
    base = alt.Chart(frame).encode(
        x=alt.X("epoch:Q", title="epoch", scale=alt.Scale(domain=domain, nice=False)),
        y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False), axis=alt.Axis(format=axis_format)),
        color=alt.Color("series:N", scale=SERIES_COLORS, legend=alt.Legend(orient="top", title=None)),
        tooltip=["series", alt.Tooltip("epoch:Q", format=".2f"), alt.Tooltip("value:Q", format=".4f")],
    )
    lines = base.mark_line(strokeWidth=2)
    # points too, so a single record (the first chunk, a one-epoch run) is already visible
    live_points = base.transform_filter(alt.datum.series == "train (live)").mark_circle(size=30, opacity=0.9)
    epoch_points = base.transform_filter(alt.datum.series != "train (live)").mark_point(filled=True, size=50)
    return (lines + live_points + epoch_points).properties(height=260, title="Loss" if metric == "loss" else "Accuracy")


def runs_overlay(rows: Sequence[dict], metric: str = "val_accuracy") -> alt.Chart:
    """One line per run of a per-epoch metric (rows of run, epoch, metric, value)."""
    frame = pd.DataFrame([r for r in rows if r["metric"] == metric], columns=["run", "epoch", "metric", "value"])
    labels = {"val_accuracy": "validation accuracy", "accuracy": "train accuracy", "val_loss": "validation loss",
              "loss": "train loss"}
    axis_format = ".1%" if "accuracy" in metric else ".3f"
    return alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("value:Q", title=labels.get(metric, metric), scale=alt.Scale(zero=False), axis=alt.Axis(format=axis_format)),
        color=alt.Color("run:N", legend=alt.Legend(orient="top", title=None)),
        tooltip=["run", "epoch", alt.Tooltip("value:Q", format=".4f")],
    ).properties(height=280, title=labels.get(metric, metric).capitalize())


def learning_rate(rows: Sequence[dict], epochs: int | None = None) -> alt.Chart:
    """The learning-rate schedule over the planned epochs (rows of step, epoch, learning_rate)."""
    frame = pd.DataFrame(rows)
    domain = [0, epochs or max(1.0, float(frame["epoch"].max()))]
    return alt.Chart(frame).mark_area(line={"color": "#4c78a8"}, color="#4c78a833").encode(
        x=alt.X("epoch:Q", title="epoch", scale=alt.Scale(domain=domain, nice=False)),
        y=alt.Y("learning_rate:Q", title="learning rate", axis=alt.Axis(format=".1e")),
        tooltip=[alt.Tooltip("epoch:Q", format=".2f"), "step", alt.Tooltip("learning_rate:Q", format=".3e")],
    ).properties(height=180)


def confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], normalize: bool = False) -> alt.Chart:
    """Heatmap of true vs predicted class, as counts or as row-normalised rates, with the numbers written in."""
    rows = []
    for t, row in enumerate(matrix):
        total = sum(row) or 1
        for p, count in enumerate(row):
            rows.append({"true": class_names[t], "predicted": class_names[p], "count": int(count),
                         "rate": count / total, "diagonal": t == p})
    frame = pd.DataFrame(rows)
    value = "rate" if normalize else "count"
    frame["label"] = frame["rate"].map(lambda v: f"{v:.0%}" if v >= 0.005 else "") if normalize \
        else frame["count"].map(lambda v: f"{v:,}" if v else "")
    limit = float(frame[value].max()) or 1.0
    order = list(class_names)
    base = alt.Chart(frame).encode(
        x=alt.X("predicted:N", sort=order, title="predicted class",
                axis=alt.Axis(labelAngle=-90, orient="top", labelOverlap=False, labelLimit=90)),  # upright: readable at 390 px
        y=alt.Y("true:N", sort=order, title="true class"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(scheme="blues", type="sqrt"), legend=None),
        tooltip=["true", "predicted", alt.Tooltip("count:Q", format=","), alt.Tooltip("rate:Q", format=".1%")],
    )
    text = base.mark_text(fontSize=11).encode(
        text="label:N",
        color=alt.condition(alt.datum[value] > limit * 0.45, alt.value("white"), alt.value("#222")),
    )
    return (cells + text).properties(width=alt.Step(44), height=alt.Step(36))


def per_class_f1(per_class: Sequence[dict]) -> alt.Chart:
    """Horizontal bars of per-class precision, recall and F1."""
    rows = [{"class": r["class"], "metric": m, "value": r[m]} for r in per_class for m in ("precision", "recall", "f1")]
    frame = pd.DataFrame(rows)
    return alt.Chart(frame).mark_bar().encode(
        y=alt.Y("class:N", sort=[r["class"] for r in per_class], title=None),
        yOffset=alt.YOffset("metric:N"),
        x=alt.X("value:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format=".0%"), title=None),
        color=alt.Color("metric:N", legend=alt.Legend(orient="top", title=None)),
        tooltip=["class", "metric", alt.Tooltip("value:Q", format=".2%")],
    ).properties(height=420)


def probabilities(class_names: Sequence[str], probs: Sequence[float], top: int | None = None) -> alt.Chart:
    """Horizontal bars of class probabilities, highest first (all classes, or the top `top`)."""
    pairs = sorted(zip(class_names, (float(p) for p in probs)), key=lambda pair: -pair[1])
    if top:
        pairs = pairs[:top]
    frame = pd.DataFrame(pairs, columns=["class", "probability"])
    frame["best"] = frame.index == 0
    bars = alt.Chart(frame).mark_bar().encode(
        # The order named outright: with sort=None, the layered bars and labels drew as "Trouser 12%, Coat 59%,
        # Shirt 10%" (a layer's domains are merged, and an unsorted union need not keep the data's order).
        y=alt.Y("class:N", sort=list(frame["class"]), title=None),
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format=".0%"), title=None),
        color=alt.condition(alt.datum.best, alt.value("#f58518"), alt.value("#4c78a8")),
        tooltip=["class", alt.Tooltip("probability:Q", format=".2%")],
    )
    text = bars.mark_text(align="left", dx=3, fontSize=11).encode(text=alt.Text("probability:Q", format=".1%"),
                                                                   color=alt.value("#333"))
    return (bars + text).properties(height=max(150, 28 * len(frame)))


# ----------------------------------------------------------------------------- network diagram

def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(v) for v in shape)


LAYER_COLORS = {"Conv2D": "#dbe9f6", "Dense": "#fde7d2", "MaxPool": "#e4f2df", "AvgPool": "#e4f2df",
                "GlobalAvgPool": "#e4f2df", "BatchNorm": "#efe6f5", "Dropout": "#f2f2f2", "Flatten": "#fff6cc",
                "Activation": "#fbe3ea", "Residual": "#d5ecf0"}


def layer_summary(params: dict) -> str:
    """A short human description of a normalised layer spec, e.g. '32 filters 3×3, same, relu'."""
    kind = params.get("type")
    activation = params.get("activation")
    act = f", {activation}" if activation and activation != "linear" else ""
    stride = f", stride {params['stride']}" if kind in ("conv2d", "residual") and params["stride"] != 1 else ""
    if kind == "conv2d":
        return f"{params['filters']} filters {params['kernel']}×{params['kernel']}{stride}, {params['padding']}{act}"
    if kind == "residual":
        return f"{params['filters']} filters, two 3×3 convolutions + shortcut{stride}"
    if kind in ("maxpool", "avgpool"):
        return f"{params['pool']}×{params['pool']}, stride {params['stride']}, {params['padding']}"
    if kind == "dense":
        return f"{params['units']} units{act}"
    if kind == "dropout":
        return f"rate {params['rate']:g}"
    if kind == "activation":
        return params["function"]
    if kind == "batchnorm":
        return f"momentum {params['momentum']:g}"
    return ""


def network_dot(info: dict, spec: Sequence[dict]) -> str:
    """Graphviz DOT text of a described network: input -> each layer (type, summary, output shape) -> classes."""
    lines = ['digraph network {', '  rankdir=TB; bgcolor="transparent"; nodesep=0.25; ranksep=0.2;',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11, color="#888888", penwidth=0.8, width=2.6];',
             '  edge [color="#999999", arrowsize=0.6, fontname="Helvetica", fontsize=9, fontcolor="#666666"];',
             f'  input [label="Input {_shape_text(info["input_shape"])}", fillcolor="#ffffff"];']
    previous = "input"
    for row, params in zip(info["layers"], spec):
        node = f"layer{row['index']}"
        summary = layer_summary(params).replace('"', "'")
        detail = f"\\n{summary}" if summary else ""
        label = f"{row['index']}. {row['type']}{detail}"
        lines.append(f'  {node} [label="{label}", fillcolor="{LAYER_COLORS.get(row["type"], "#ffffff")}"];')
        lines.append(f'  {previous} -> {node} [label="  {_shape_text(row["input_shape"])}"];')
        previous = node
    last = _shape_text(info["layers"][-1]["output_shape"]) if info["layers"] else ""
    lines.append(f'  output [label="{info["num_classes"]} class scores", shape=oval, fillcolor="#ffffff"];')
    lines.append(f'  {previous} -> output [label="  {last}"];')
    lines.append("}")
    return "\n".join(lines)


def reliability(calibration: dict) -> alt.Chart:
    """Reliability diagram: accuracy against confidence per bin, before and after the model's temperature,
    over the diagonal a perfectly calibrated model would follow."""
    temperature = calibration["temperature"]
    series = [("softmax (temperature 1)", calibration["before"])]
    if abs(temperature - 1.0) > 1e-9:
        series.append((f"calibrated (temperature {temperature:.3g})", calibration["after"]))
    frame = pd.DataFrame([{"series": name, "confidence": b["confidence"], "accuracy": b["accuracy"], "images": b["count"]}
                          for name, data in series for b in data["bins"]],
                         columns=["series", "confidence", "accuracy", "images"])
    diagonal = alt.Chart(pd.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0]})).mark_line(
        strokeDash=[4, 4], color="#999").encode(x="x:Q", y="y:Q")
    lines = alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("confidence:Q", title="confidence (top-class probability)", scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format=".0%")),
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format=".0%")),
        color=alt.Color("series:N", legend=alt.Legend(orient="top", title=None)),
        tooltip=["series", alt.Tooltip("confidence:Q", format=".1%"), alt.Tooltip("accuracy:Q", format=".1%"), "images"])
    return (diagonal + lines).properties(height=300)


def parallel_coordinates(rows: Sequence[dict], axes: Sequence[str], colour: str = "val. accuracy") -> alt.Chart:
    """One line per sweep trial across its settings and result, each axis scaled to its own range, coloured
    by validation accuracy."""
    frame = pd.DataFrame(list(rows))
    scaled = frame.copy()
    for axis in axes:
        values = pd.to_numeric(frame[axis], errors="coerce")
        if values.notna().all():
            low, high = float(values.min()), float(values.max())
            scaled[axis] = (values - low) / (high - low) if high > low else 0.5
        else:
            codes = {v: i for i, v in enumerate(sorted(frame[axis].astype(str).unique()))}
            scaled[axis] = frame[axis].astype(str).map(codes) / max(1, len(codes) - 1)
    long = scaled.reset_index().melt(id_vars=["index"], value_vars=list(axes), var_name="setting", value_name="position")
    long["value"] = frame.reset_index().melt(id_vars=["index"], value_vars=list(axes))["value"].astype(str)
    # A plain field name for the colour: Vega-Lite reads a dot in a field name ("val. accuracy") as a nested
    # field, found nothing, dropped every point as invalid and drew a blank chart.
    long["score"] = long["index"].map(pd.to_numeric(frame[colour], errors="coerce"))
    return alt.Chart(long).mark_line(point=True, opacity=0.8).encode(
        x=alt.X("setting:N", sort=list(axes), title=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("position:Q", title=None, axis=None),
        detail="index:N",
        color=alt.Color("score:Q", scale=alt.Scale(scheme="viridis"), title=colour),
        tooltip=["setting", "value", alt.Tooltip("score:Q", format=".2%", title=colour)]).properties(height=280)


MAP_SELECTION = "pick"
MAP_KINDS = ["right", "mistake", "flagged label"]


def dataset_map(x: Sequence[float], y: Sequence[float], classes: Sequence[int], kinds: Sequence[int],
                class_names: Sequence[str]) -> alt.Chart:
    """The dataset map: one point per image at its 2-D position, coloured by true class; mistakes are crosses
    and flagged labels diamonds. Dragging a rectangle selects points (the selection "pick": {"x": [a, b],
    "y": [c, d]}); each point carries its position "p" in the map. Kept lean for 10,000 points: short
    integer fields, the class names and kinds looked up in the browser, coordinates to 3 decimals."""
    frame = pd.DataFrame({"x": [round(float(v), 3) for v in x], "y": [round(float(v), 3) for v in y],
                          "c": [int(v) for v in classes], "k": [int(v) for v in kinds]})
    frame["p"] = range(len(frame))
    brush = alt.selection_interval(name=MAP_SELECTION, encodings=["x", "y"])
    return alt.Chart(frame).transform_calculate(  # Vega array literals, indexed in the browser
        cls=f"{json.dumps(list(class_names))}[datum.c]", kind=f"{json.dumps(MAP_KINDS)}[datum.k]",
    ).mark_point(filled=True, size=22, opacity=0.75).encode(
        x=alt.X("x:Q", axis=None), y=alt.Y("y:Q", axis=None),
        color=alt.Color("cls:N", title=None, sort=list(class_names), legend=alt.Legend(orient="top", columns=5)),
        shape=alt.Shape("kind:N", scale=alt.Scale(domain=MAP_KINDS, range=["circle", "cross", "diamond"]),
                        legend=alt.Legend(orient="bottom", title=None)),
        size=alt.condition("datum.k > 0", alt.value(70), alt.value(22)),
        tooltip=[alt.Tooltip("cls:N", title="class"), alt.Tooltip("kind:N", title="")],
    ).add_params(brush).properties(height=460)

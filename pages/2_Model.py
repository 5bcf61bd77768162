"""2 · Model: presets, a layer editor (add anywhere, remove, move, edit in place), live shape/parameter/FLOP table,
network diagram, JSON import/export. An invalid stack is explained and the last valid model is kept."""
from __future__ import annotations

import json
import re

import pandas as pd
import streamlit as st

import studio_ui as ui
from fmnist_jax.data import catalogue
from fmnist_jax.model import layer_specs, presets
from fmnist_jax.studio import charts
from fmnist_jax.studio import projects as proj

DRAFT = "model-draft"
EDITING = "model-editing"  # the uid of the one layer whose settings are open

ui.frame("model")
ui.page_title("2", "Model", "Stack layers into a network. Every change is checked at once: shapes, parameters and "
                            "compute update as you edit, and only a valid model is saved for training.")
project = ui.require_project()
pid = project["id"]
try:
    dataset = proj.load_dataset(project)
except (ValueError, catalogue.DataUnavailable) as error:
    st.error(f"The project's data cannot be loaded ({ui.plain(error)}); fix it on the Data page.", icon=":material/error:")
    ui.link("data", "Go to Data")
    st.stop()
input_shape, num_classes = dataset.input_shape, dataset.num_classes


def _new_uid() -> int:
    """A session-unique id per layer, so a layer's widgets follow it when it moves."""
    st.session_state["model-uid"] = st.session_state.get("model-uid", 0) + 1
    return st.session_state["model-uid"]


def _fresh_draft(spec: list[dict]) -> dict:
    normalized = layer_specs.normalize_spec(spec)
    return {"project": pid, "layers": normalized, "uids": [_new_uid() for _ in normalized]}


def _valid(spec: list[dict]) -> bool:
    try:
        layer_specs.describe(spec, input_shape, num_classes)
        return True
    except ValueError:
        return False


saved_spec = proj.model_spec(project, num_classes)
fitted = _valid(saved_spec)
if not fitted:  # e.g. the dataset changed its class count: fall back to the preset, sized to fit
    saved_spec = presets.preset(project.get("model_preset") or "fast", num_classes)
if st.session_state.get(DRAFT, {}).get("project") != pid:
    st.session_state[DRAFT] = _fresh_draft(saved_spec)
draft = st.session_state[DRAFT]


def _load_preset(name: str) -> None:
    spec = presets.preset(name, num_classes)
    st.session_state[DRAFT] = _fresh_draft(spec)
    ui.save_project(project, model=layer_specs.normalize_spec(spec), model_preset=name)


def _add_layer(position_key: str) -> None:
    kind = st.session_state[f"add-kind-{pid}"]
    position = max(0, min(int(st.session_state[position_key]), len(draft["layers"])))
    draft["layers"].insert(position, layer_specs.normalize_layer({"type": kind}, position))
    draft["uids"].insert(position, _new_uid())
    st.session_state[EDITING] = draft["uids"][position]  # a new layer opens, ready to set


def _edit_layer(uid: int) -> None:
    """Open one layer's settings (the others fold to their one-line summary); pressed again, it folds."""
    st.session_state[EDITING] = None if st.session_state.get(EDITING) == uid else uid


def _remove_layer(index: int) -> None:
    del draft["layers"][index]
    del draft["uids"][index]


def _move_layer(index: int, offset: int) -> None:
    target = index + offset
    if 0 <= target < len(draft["layers"]):
        for key in ("layers", "uids"):
            draft[key][index], draft[key][target] = draft[key][target], draft[key][index]


def _param_widget(param: layer_specs.Param, value, key: str):
    label = param.name.replace("_", " ")
    if param.kind is bool:
        return st.checkbox(label, value=bool(value), key=key, help=param.help)
    if param.choices is not None:
        choices = list(param.choices)
        return st.selectbox(label, choices, index=choices.index(value) if value in choices else 0, key=key, help=param.help)
    if param.kind is int:
        return int(st.number_input(label, min_value=int(param.minimum), max_value=int(param.maximum), value=int(value),
                                   step=1, key=key, help=param.help))
    step = 0.05 if (param.maximum or 1) <= 1 and param.name == "rate" else 0.01
    if param.name == "epsilon":
        return float(st.number_input(label, min_value=float(param.minimum), max_value=float(param.maximum),
                                     value=float(value), step=1e-6, format="%.1e", key=key, help=param.help))
    return float(st.number_input(label, min_value=float(param.minimum), max_value=float(param.maximum),
                                 value=float(value), step=step, format="%g", key=key, help=param.help))


# ----------------------------------------------------------------------------- presets

preset_names = list(presets.PRESETS)
with st.container(border=True):
    left, middle, right = st.columns([2, 4, 1], vertical_alignment="bottom")
    chosen = left.selectbox("Preset", preset_names,
                            index=preset_names.index(project.get("model_preset")) if project.get("model_preset") in preset_names else 0,
                            key=f"preset-{pid}", help="A tested starting point; load it, then edit freely below.")
    middle.caption(presets.PRESETS[chosen].description)
    right.button("Load", on_click=_load_preset, args=(chosen,), icon=":material/download:", width="stretch",
                 help="Replace the current layers with this preset.")
    with st.expander("Compare presets"):
        table = pd.DataFrame([{"preset": r["name"], "parameters": r["params"],
                               "MFLOPs / image": (r["flops"] or 0) / 1e6, "description": r["description"]}
                              for r in presets.preset_table(input_shape, num_classes) if r["fits"]])
        st.dataframe(table, hide_index=True, column_config={
            "parameters": st.column_config.NumberColumn(format="localized"),
            "MFLOPs / image": st.column_config.NumberColumn(format="%.1f")})

current_preset = proj.preset_of(project)
st.caption(f"Saved model: **{current_preset or 'custom'}** · input {'×'.join(map(str, input_shape))} · "
           f"{num_classes} classes")

# ----------------------------------------------------------------------------- editor

# On a phone the columns stack: the summary and diagram come first there, the layers (one line each) after them.
st.html("<style>@media (max-width: 640px) { .st-key-model-workbench [data-testid='stHorizontalBlock'] "
        "{ flex-direction: column-reverse; } .st-key-model-workbench [data-testid='stHorizontalBlock'] "
        "[data-testid='stHorizontalBlock'] { flex-direction: row; } }</style>")
with st.container(key="model-workbench"):
    editor, summary = st.columns([5, 4], gap="large")
with editor:
    st.subheader(f"Layers ({len(draft['layers'])})")
    st.caption("Each layer is one line; **Edit** opens its settings.")
    new_layers: list[dict] = []
    edited = []
    editing = st.session_state.get(EDITING)
    for index, (layer, uid) in enumerate(zip(draft["layers"], draft["uids"])):
        layer_type = layer_specs.REGISTRY[layer["type"]]
        is_open = uid == editing
        with st.container(border=True, key=f"layer-box-{uid}"):
            title = st.empty()  # filled below from the widgets' values, so it never lags one change behind
            # the buttons get a row of their own: beside the title they wrapped around it in a narrow column
            with st.container(horizontal=True, gap="small"):
                st.button("Done" if is_open else "Edit", icon=":material/expand_less:" if is_open else ":material/tune:",
                          key=f"edit-{uid}", on_click=_edit_layer, args=(uid,), type="tertiary",
                          help=f"{'Fold' if is_open else 'Open'} the settings of layer {index}")
                st.button("Up", icon=":material/arrow_upward:", key=f"up-{uid}", on_click=_move_layer, args=(index, -1),
                          disabled=index == 0, help=f"Move layer {index} up", type="tertiary")
                st.button("Down", icon=":material/arrow_downward:", key=f"down-{uid}", on_click=_move_layer, args=(index, 1),
                          disabled=index == len(draft["layers"]) - 1, help=f"Move layer {index} down", type="tertiary")
                st.button("Remove", icon=":material/delete:", key=f"remove-{uid}", on_click=_remove_layer, args=(index,),
                          help=f"Remove layer {index}", type="tertiary")
            values = {"type": layer["type"]}
            if is_open:
                for row_start in range(0, len(layer_type.params), 3):
                    columns = st.columns(3)
                    for column, param in zip(columns, layer_type.params[row_start:row_start + 3]):
                        with column:
                            values[param.name] = _param_widget(param, layer[param.name], f"p-{uid}-{param.name}")
            else:  # folded: its settings stay as they are
                values.update({param.name: layer[param.name] for param in layer_type.params})
            title.markdown(f"**{index} · {layer_type.label}** &nbsp; :gray[{charts.layer_summary(values)}]",
                           help=layer_type.description)
            new_layers.append(values)
            edited.append(st.empty())
    draft["layers"] = new_layers

    with st.container(border=True):
        kinds = list(layer_specs.REGISTRY)
        st.selectbox("Add a layer", kinds, format_func=lambda k: f"{layer_specs.REGISTRY[k].label} — "
                                                                 f"{layer_specs.REGISTRY[k].description}",
                     key=f"add-kind-{pid}", help="Any registered layer type.")  # full width: the descriptions are long
        b, c = st.columns([1, 1], vertical_alignment="bottom")
        # keyed by the layer count, so the position resets to "append" whenever layers come or go
        position_key = f"add-pos-{pid}-{len(draft['layers'])}"
        b.number_input("at position", 0, len(draft["layers"]), len(draft["layers"]), key=position_key,
                                  help="0 puts it first; the largest number appends it.")
        c.button("Add layer", icon=":material/add:", on_click=_add_layer, args=(position_key,), width="stretch")

# ----------------------------------------------------------------------------- validation and summary

error_message = None
try:
    info = layer_specs.describe(draft["layers"], input_shape, num_classes)
    shown_spec = draft["layers"]
    # Saved when the user edited the layers (or the stored ones no longer fit the data), never just by opening the
    # page: a stored spec is not rewritten in its normalised form.
    if draft["layers"] != layer_specs.normalize_spec(saved_spec) or not fitted:
        ui.save_project(project, model=draft["layers"])
except ValueError as error:
    error_message = str(error)
    shown_spec = layer_specs.normalize_spec(saved_spec)
    info = layer_specs.describe(shown_spec, input_shape, num_classes)
    bad = re.match(r"layer (\d+)", error_message)
    if bad and int(bad.group(1)) < len(edited):
        edited[int(bad.group(1))].error(ui.plain(error_message), icon=":material/error:")

with summary:
    if error_message:
        st.error(f"**This stack is not valid:** {ui.plain(error_message)}", icon=":material/error:")
        st.warning("Training keeps using the last valid model, summarised below.", icon=":material/history:")
    st.subheader("Summary")
    m = st.columns(2)
    m[0].metric("Parameters", f"{info['total_params']:,}", help="Trainable weights and biases.")
    m[1].metric("MFLOPs per image", f"{info['forward_flops'] / 1e6:,.1f}",
                help="One forward pass (a multiply-add counts as 2). Training costs about 3× this.")
    ui.public_caps(shown_spec, input_shape, num_classes, proj.train_config(project),
                   proj.train_size(project, dataset))
    rows = [{"#": r["index"], "layer": r["type"], "output": "×".join(map(str, r["output_shape"])),
             "params": r["params"], "MFLOPs": r["flops"] / 1e6} for r in info["layers"]]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=36 * (len(rows) + 1) + 8, column_config={
        "params": st.column_config.NumberColumn(format="localized"),
        "MFLOPs": st.column_config.NumberColumn(format="%.2f")})
    st.graphviz_chart(charts.network_dot(info, shown_spec), width="stretch")

    import_export = st.expander("Import / export the layers as JSON", icon=":material/data_object:",
                                expanded=st.session_state.get(f"import-{pid}") is not None)
with import_export:
    spec_json = json.dumps({"layers": shown_spec, "input_shape": list(input_shape), "num_classes": num_classes}, indent=2)
    st.download_button("Export model JSON", spec_json, file_name=f"{pid}-model.json", mime="application/json",
                       icon=":material/file_download:", help="The layer list (the last valid model).")
    upload = st.file_uploader("Import model JSON", type=["json"], key=f"import-{pid}", max_upload_size=1,
                              help="A JSON list of layers, or an object with a 'layers' list (as exported).")
    if upload is not None and st.session_state.get("model-imported") != upload.file_id:
        st.session_state["model-imported"] = upload.file_id
        try:
            if upload.size > 1_000_000:
                raise ValueError("the file is larger than 1 MB; a model spec is a small JSON file")
            imported = json.loads(upload.getvalue().decode("utf-8"))
            spec = layer_specs.normalize_spec(imported)
            layer_specs.describe(spec, input_shape, num_classes)
        except (ValueError, UnicodeDecodeError) as error:
            reason = f"not valid JSON ({error})" if isinstance(error, json.JSONDecodeError) else str(error)
            st.session_state["model-import-error"] = f"Could not import {upload.name}: {reason}"
        else:
            st.session_state[DRAFT] = _fresh_draft(spec)
            ui.save_project(project, model=spec)
            st.session_state["model-import-ok"] = f"Imported {len(spec)} layers from {upload.name}."
        st.rerun()
    if message := st.session_state.pop("model-import-error", None):
        st.error(ui.plain(message), icon=":material/error:")
    if message := st.session_state.pop("model-import-ok", None):
        st.success(message, icon=":material/check_circle:")

if error_message is None:
    ui.warm_up(ui.workspace().get_project(pid))  # compile the training program while the user goes on (Start loads it)

st.divider()
ui.link("hyper", "Next: hyperparameters")

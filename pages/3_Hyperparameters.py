"""3 · Hyperparameters: one form for epochs, batch, optimizer, learning rate and schedule, regularisation, loss,
early stopping, seed and precision; inline validation, a learning-rate preview and a time-per-epoch estimate."""
from __future__ import annotations

import streamlit as st

import studio_ui as ui
from fmnist_jax import checks
from fmnist_jax.data import catalogue
from fmnist_jax.model import layer_specs, presets
from fmnist_jax.studio import charts, estimates, sweeps, tasks
from fmnist_jax.studio import projects as proj
from fmnist_jax.training import config, optim

SCHEDULE_LABELS = {"constant": "Constant", "cosine": "Cosine decay", "warmup_cosine": "Warm-up, then cosine decay",
                   "one_cycle": "One-cycle", "step": "Step decay"}
BATCH_SIZES = [8, 16, 32, 64, 96, 128, 192, 256, 384, 512, 1024, 2048]
LR_STOPS = [float(f"{m}e{e}") for e in range(-6, 0) for m in (1, 2, 3, 5)] + [1.0]  # 1e-6, 2e-6, 3e-6, 5e-6 ... 1

ui.frame("hyper")
ui.page_title("3", "Hyperparameters", "How the model learns. Change the settings and press Save; invalid combinations "
                                      "are explained before training can start.")
project = ui.require_project()
pid = project["id"]
try:
    dataset = proj.load_dataset(project)
    counts = proj.checked_split_counts(dataset, proj.split_spec(project, dataset))
except (ValueError, catalogue.DataUnavailable) as error:
    st.error(f"The project's data or split is not usable ({ui.plain(error)}); fix it on the Data page.", icon=":material/error:")
    ui.link("data", "Go to Data")
    st.stop()
cfg = proj.train_config(project)
limit = proj.train_limit(project)
train_size = min(counts["train"], limit) if limit else counts["train"]


recommended = proj.recommended_config(project)
if recommended is not None:
    recipe, note = recommended
    with st.container(border=True):
        st.markdown(f"**Recommended for the {proj.preset_of(project)} model.** {note}")
        # Its own row under the text: in a narrow column beside it, the label was cut to "Use these set..."
        if cfg.to_dict() == recipe.to_dict():
            st.badge("In use", icon=":material/check:", color="green")
        elif st.button("Use these settings", key=f"hp-recipe-{pid}", icon=":material/bolt:"):
            if ui.save_project(project, config=recipe.to_dict()) is not None:
                # fresh keys: the browser keeps a keyed picker's old choice even when its default changes
                st.session_state[f"hp-version-{pid}"] = st.session_state.get(f"hp-version-{pid}", 0) + 1
                st.rerun()


def best_recipe_panel() -> None:
    """The 15-minute recipe, in one click (offered on Fashion-MNIST only, where it was chosen and measured)."""
    with st.container(border=True):
        st.markdown(f"**Best accuracy in 15 minutes.** {presets.BEST_RECIPE['note']}")
        if proj.uses_best_recipe(project, dataset):
            st.badge("In use", icon=":material/check:", color="green")
        elif st.button("Use the 15-minute recipe", key=f"hp-best-{pid}", icon=":material/workspace_premium:",
                       help=f"Sets the model to the {presets.BEST_RECIPE['preset']} preset, these training settings "
                            f"and (with an official test set) a {presets.BEST_RECIPE['val_fraction']:.0%} validation "
                            "share; your seed, precision and chunk size stay."):
            if ui.save_project(project, **proj.best_recipe_changes(project, dataset)) is not None:
                st.session_state[f"hp-version-{pid}"] = st.session_state.get(f"hp-version-{pid}", 0) + 1
                st.rerun()


if proj.best_recipe_fits(dataset):
    best_recipe_panel()

version = st.session_state.get(f"hp-version-{pid}", 0)
st.caption("The optimizer and schedule decide which settings the form below shows; they are saved with it.")
top = st.columns(2)
optimizer = top[0].selectbox("Optimizer", config.OPTIMIZERS, index=config.OPTIMIZERS.index(cfg.optimizer),
                             format_func=lambda name: config.OPTIMIZER_KINDS[name].label,
                             key=f"hp-opt-{pid}-{version}",
                             help="Adam is a robust default; SGD with momentum can generalise slightly better "
                                  "with a tuned schedule.")
schedule = top[1].selectbox("Learning-rate schedule", config.SCHEDULES, index=config.SCHEDULES.index(cfg.schedule),
                            format_func=SCHEDULE_LABELS.get, key=f"hp-sched-{pid}-{version}",
                            help="How the learning rate changes over the planned steps (see the preview).")



def regularisation_summary(c: config.TrainConfig) -> str:
    """The folded group's one line: what is on."""
    parts = [f"weight decay {c.weight_decay:g}" if c.weight_decay else "",
             f"label smoothing {c.label_smoothing:g}" if c.label_smoothing else "",
             "focal loss" if c.loss == "focal" else "", f"clip {c.grad_clip:g}" if c.grad_clip else "",
             f"EMA {c.ema_decay:g}" if c.ema_decay else "", "mirror TTA" if c.tta_flip else "",
             f"ensemble of {c.ensemble}" if c.ensemble > 1 else ""]
    return ", ".join(p for p in parts if p) or "none"


def early_stopping_summary(c: config.TrainConfig) -> str:
    return f"on, patience {c.patience}" if c.early_stopping else "off"


with st.form(f"hyperparameters-{pid}", border=True):
    with st.expander(f"**Training length** · {cfg.epochs} epochs, batch {cfg.batch_size}", expanded=True, icon=":material/timer:"):
        a, b, c, d = st.columns([3, 3, 3, 2])
        epochs = a.slider("Epochs", 1, max(100, cfg.epochs), cfg.epochs, help="Full passes over the training split.")
        batch_size = b.select_slider("Batch size", BATCH_SIZES + ([cfg.batch_size] if cfg.batch_size not in BATCH_SIZES else []),
                                     value=cfg.batch_size, help="Images per optimizer step. Larger is faster per image "
                                                                "on a GPU; smaller often generalises a little better.")
        limit_value = c.number_input("Training images (0 = all)", 0, max(counts["train"], limit or 0), int(limit or 0), step=100,
                                     help=f"Train on only the first N of the {counts['train']:,} training images: "
                                          "for quick experiments.")
        clean_epochs = int(d.number_input("Clean last epochs", 0, max(100, cfg.clean_epochs), cfg.clean_epochs, 1,
                                          help="Train the last N epochs on the images as they are, with the Data page's "
                                               "augmentation off, as evaluation sees them. 0: augment every epoch."))

    with st.expander(f"**Optimizer · {config.OPTIMIZER_KINDS[optimizer].label}** · learning rate {cfg.learning_rate:g}", expanded=True, icon=":material/speed:"):
        a, b, c, d = st.columns(4)
        learning_rate = a.select_slider("Learning rate (log scale)", sorted({*LR_STOPS, cfg.learning_rate}), value=cfg.learning_rate,
                                        format_func=lambda v: f"{v:.0e}",
                                        help="Step size, on a log scale from 1e-6 to 1 (1-2-5 steps per decade). "
                                             "1e-3 suits Adam; SGD usually wants 1e-2 to 1e-1.")
        used = config.OPTIMIZER_KINDS[optimizer].fields()
        values = {"momentum": cfg.momentum, "nesterov": cfg.nesterov, "beta1": cfg.beta1, "beta2": cfg.beta2,
                  "rho": cfg.rho, "epsilon": cfg.epsilon}
        slots = iter([b, c, d, a])
        for name in used:
            column = next(slots)
            if name == "momentum":
                values[name] = column.number_input("Momentum", 0.0, 0.9999, float(cfg.momentum), 0.01, format="%g",
                                                   help="Share of the previous update kept (0 = plain SGD).")
            elif name == "nesterov":
                column.write("")
                values[name] = column.checkbox("Nesterov momentum", cfg.nesterov, help="Look-ahead momentum.")
            elif name == "beta1":
                values[name] = column.number_input("β1", 0.0, 0.9999, float(cfg.beta1), 0.01, format="%g",
                                                   help="Decay of the running mean of gradients.")
            elif name == "beta2":
                values[name] = column.number_input("β2", 0.0, 0.99999, float(cfg.beta2), 0.001, format="%g",
                                                   help="Decay of the running mean of squared gradients.")
            elif name == "rho":
                values[name] = column.number_input("ρ (rho)", 0.0, 0.9999, float(cfg.rho), 0.01, format="%g",
                                                   help="Decay of the running average of squared gradients.")
            elif name == "epsilon":
                values[name] = column.number_input("ε (epsilon)", min(1e-10, cfg.epsilon), 1.0, float(cfg.epsilon), 1e-7, format="%.1e",
                                                   help="Added to denominators for numerical stability.")

    with st.expander(f"**Schedule · {SCHEDULE_LABELS[schedule]}**", icon=":material/show_chart:"):
        a, b, c, _ = st.columns(4)
        warmup_epochs, step_every, step_factor = cfg.warmup_epochs, cfg.step_every_epochs, cfg.step_factor
        if schedule == "warmup_cosine":
            warmup_epochs = a.number_input("Warm-up epochs", 0.0, max(100.0, cfg.warmup_epochs), float(cfg.warmup_epochs), 0.5, format="%g",
                                           help="Rise linearly from 0 to the learning rate over this many epochs.")
        elif schedule == "step":
            step_every = int(a.number_input("Decay every (epochs)", 1, max(1000, cfg.step_every_epochs), cfg.step_every_epochs, 1))
            step_factor = b.number_input("Multiply by", min(0.01, cfg.step_factor), 1.0, float(cfg.step_factor), 0.05, format="%g",
                                         help="Factor applied at each decay step.")
        else:
            a.caption({"constant": "The same rate for every step.", "cosine": "Falls smoothly to 0 by the last step.",
                       "one_cycle": "Rises to the learning rate, then anneals far below it."}[schedule])

    with st.expander(f"**Regularisation and loss** · {regularisation_summary(cfg)}", icon=":material/tune:"):
        a, b, c, d = st.columns(4)
        weight_decay = a.number_input("Weight decay", 0.0, 1.0, float(cfg.weight_decay), 1e-4, format="%g",
                                      help="Shrinks weights each step (decoupled for AdamW).")
        label_smoothing = b.slider("Label smoothing", 0.0, 0.5, float(cfg.label_smoothing), 0.01,
                                   help="Soften one-hot targets; reduces over-confidence.")
        loss = c.selectbox("Loss", config.LOSSES, index=config.LOSSES.index(cfg.loss),
                           format_func={"cross_entropy": "Cross-entropy", "focal": "Focal"}.get,
                           help="Focal loss down-weights easy examples.")
        grad_clip = d.number_input("Gradient clipping (0 = off)", 0.0, max(1000.0, cfg.grad_clip), float(cfg.grad_clip), 0.5, format="%g",
                                   help="Clip the global gradient norm; helps against divergence.")
        # Their own row of two: in a quarter-width column the toggle's label was cut to "Mirror test-time augme..."
        a, b = st.columns(2)
        ema_choices = sorted({0.0, 0.99, 0.995, 0.999, 0.9995, 0.9999, float(cfg.ema_decay)})
        ema_decay = a.select_slider("Weight averaging (EMA decay)", ema_choices, value=float(cfg.ema_decay),
                                    format_func=lambda v: "off" if v == 0 else f"{v:g}",
                                    help="Evaluate and keep a moving average of the weights: steadier and often more "
                                         "accurate at the end of training. 0.999 averages over about the last 1,000 steps.")
        tta_flip = b.toggle("Mirror test-time augmentation", cfg.tta_flip,
                            help="Predict from the mean of each image's and its mirror image's answer: in evaluation, "
                                 "on the Deploy page, in the REST API and in exported models. Costs a second forward pass.")
        a, b = st.columns(2)
        ensemble = int(a.number_input("Ensemble members", 1, config.MAX_ENSEMBLE, int(cfg.ensemble), 1,
                                      help="Train this many copies of the model side by side, each from its own seed "
                                           "(weights, order, augmentation), and predict with the mean of their answers: "
                                           "usually more accurate than one, and each epoch takes about as many times "
                                           "as long. Exports (ONNX, TFLite, the script) keep every member."))

    with st.expander(f"**Early stopping** · {early_stopping_summary(cfg)}", icon=":material/front_hand:"):
        a, b, c, d = st.columns(4)
        early_stopping = a.toggle("Enabled", cfg.early_stopping,
                                  help="Stop after `patience` epochs without improvement of the monitored metric.")
        monitor = b.selectbox("Monitor", config.MONITORS, index=config.MONITORS.index(cfg.monitor),
                              format_func={"val_accuracy": "validation accuracy", "val_loss": "validation loss"}.get)
        patience = int(c.number_input("Patience (epochs)", 1, max(1000, cfg.patience), cfg.patience, 1))
        restore_best = d.checkbox("Restore best", cfg.restore_best,
                                  help="At the end, restore the weights of the best epoch.")

    with st.expander(f"**Reproducibility and precision** · seed {cfg.seed}, {cfg.precision}", icon=":material/lock:"):
        a, b, c = st.columns(3)
        seed = int(a.number_input("Seed", 0, 2**31 - 1, int(cfg.seed), 1,
                                  help="Feeds initialisation, shuffling, dropout and augmentation."))
        precision = b.selectbox("Precision", config.PRECISIONS, index=config.PRECISIONS.index(cfg.precision),
                                help="bfloat16 computes faster on GPUs/TPUs; weights stay float32. On a CPU, keep float32: "
                                     "bfloat16 trained dls at about half the speed on a 2-core Xeon.")
        chunk_steps = int(c.number_input("Steps per chunk", 1, max(10_000, cfg.chunk_steps), cfg.chunk_steps, 10,
                                         help="Optimizer steps per compiled call: how often the curves update "
                                              "and how fast Stop reacts."))

    feedback = st.empty()  # the verdict on a submit appears here, next to the button
    submitted = st.form_submit_button("Save settings", type="primary", icon=":material/save:")

if submitted:
    new_limit = int(limit_value) or None
    new_train_size = min(counts["train"], new_limit) if new_limit else counts["train"]
    chosen = dict(
        epochs=epochs, batch_size=int(batch_size), optimizer=optimizer, learning_rate=float(learning_rate),
        schedule=schedule, warmup_epochs=float(warmup_epochs), step_every_epochs=int(step_every),
        step_factor=float(step_factor), weight_decay=float(weight_decay), label_smoothing=float(label_smoothing),
        loss=loss, grad_clip=float(grad_clip), early_stopping=bool(early_stopping), monitor=monitor,
        patience=patience, restore_best=bool(restore_best), seed=seed, precision=precision, ema_decay=float(ema_decay),
        tta_flip=bool(tta_flip), clean_epochs=clean_epochs, ensemble=ensemble, chunk_steps=chunk_steps, **values)
    try:
        # Only what the user changed: every widget was drawn with the stored value, so the rest stays as stored.
        new_cfg = cfg.replace(**checks.edits(cfg.to_dict(), chosen))
        new_cfg.validate(train_size=new_train_size)
    except ValueError as error:
        feedback.error(f"Not saved: {ui.plain(error)}.", icon=":material/error:")
    else:
        ui.save_project(project, config=new_cfg.to_dict(), train_limit=new_limit)
        cfg, limit, train_size = new_cfg, new_limit, new_train_size
        feedback.success("Saved. These settings apply to the next training run.", icon=":material/check_circle:")
elif optimizer != cfg.optimizer or schedule != cfg.schedule:
    st.warning("The optimizer or schedule above differs from the saved settings: press **Save settings** to keep it.",
               icon=":material/edit_note:")

# ----------------------------------------------------------------------------- what the saved settings mean

try:
    cfg.validate(train_size=train_size)
except ValueError as error:
    st.error(f"The saved settings cannot train yet: {ui.plain(error)}.", icon=":material/error:")
    if cfg.batch_size > train_size:  # e.g. a new project's batch 128 on a 72-image upload: one click fixes it
        fitting = proj.fitting_batch_size(train_size)
        if st.button(f"Use batch size {fitting}", key=f"hp-fit-batch-{pid}", icon=":material/build:"):
            ui.save_project(project, config=cfg.replace(batch_size=fitting).to_dict())
            st.session_state[f"hp-version-{pid}"] = version + 1
            st.rerun()
    st.stop()

steps_per_epoch = max(1, train_size // cfg.batch_size)
left, right = st.columns([3, 2], gap="large")
with left:
    st.subheader("Learning rate over the run")
    st.altair_chart(charts.learning_rate(optim.learning_rate_curve(cfg, steps_per_epoch), cfg.epochs), width="stretch")
    st.caption(f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} × {steps_per_epoch:,} steps of "
               f"{cfg.batch_size} images = "
               f"{cfg.epochs * steps_per_epoch:,} steps on {train_size:,} training images.")
with right:
    st.subheader("Estimated time")
    spec = proj.model_spec(project, dataset.num_classes)
    try:
        estimate = estimates.estimate_epoch_seconds(ui.workspace(), pid, spec, dataset.input_shape, dataset.num_classes,
                                               steps_per_epoch * cfg.batch_size, counts["validation"], cfg.ensemble,
                                               batch_size=cfg.batch_size)
    except ValueError as error:
        st.info(f"No estimate: the model is not valid ({ui.plain(error)}).", icon=":material/info:")
    else:
        device = ui.device()
        startup = estimate["startup"]
        m = st.columns(2)
        m[0].metric("Per epoch", ui.seconds_text(estimate["seconds"]))
        m[1].metric("Whole run", ui.seconds_text(estimate["seconds"] * cfg.epochs + (startup["seconds"] if startup else 0)),
                    help="The epochs plus the start-up" + ("" if startup else ", once the first run has measured it"))
        st.markdown("Start-up before the first epoch (set-up, data on the device, compilation): **"
                    + (f"{ui.seconds_text(startup['seconds'])}** as measured in run {startup['run']}." if startup else
                       "measured by the first run**, typically 5 to 60 s on a CPU."))
        st.caption(f"{estimate['flops_per_image'] / 1e6:,.1f} MFLOPs to train on one image"
                   + (f" ({cfg.ensemble} members)" if cfg.ensemble > 1 else "") + " × "
                   f"{steps_per_epoch * cfg.batch_size:,} images per epoch, at "
                   f"{estimate['flops_per_s'] / 1e9:,.1f} GFLOP/s on {device['platform'].upper()} "
                   f"(from the {estimate['source']}), plus the validation pass.")
    ui.public_caps(spec, dataset.input_shape, dataset.num_classes, cfg, train_size)
    ui.warm_up(ui.workspace().get_project(pid))  # the saved settings' training compiles while the user reads on
    layers_ok = True
    try:
        layer_specs.describe(spec, dataset.input_shape, dataset.num_classes)
    except ValueError:
        layers_ok = False
    if not layers_ok:
        st.warning("The saved model is not valid; fix it on the Model page.", icon=":material/warning:")

# ----------------------------------------------------------------------------- sweep

st.subheader("Sweep")
st.caption("Try many settings without babysitting: each combination trains as a run of this project through the "
           "training queue, one after another, until they are done or the budget is spent. The best is chosen on "
           "validation accuracy.")
sweep_task = next(iter(ui.background().owned(ui.owner(), "sweep", pid)), None)
if sweep_task is None or sweep_task["status"] not in tasks.ACTIVE:
    # The form starts from the project's last sweep (the form is not drawn while a sweep runs, so its widgets
    # would otherwise come back with the defaults), else from the project's own settings.
    last = sweeps.last_spec(ui.workspace(), pid)
    options = {"presets": list(presets.PRESETS), "rates": sorted({1e-4, 3e-4, 1e-3, 3e-3, 1e-2, *last.get("learning_rates", [])}),
               "batches": sorted({32, 64, 128, 256, *last.get("batch_sizes", [])}),
               "epochs": sorted({1, 2, 3, 5, 10, 15, 20, *last.get("epochs", [])}),
               "augment": sorted({0.0, 0.25, 0.5, 1.0, *last.get("augment", [])})}
    with st.form(f"sweep-form-{pid}"):
        a, b, c = st.columns(3)
        chosen_presets = a.multiselect("Presets", options["presets"],
                                       default=last.get("presets") or [proj.preset_of(project) or "fast"])
        rates = b.multiselect("Learning rates", options["rates"], default=last.get("learning_rates") or [3e-4, 1e-3, 3e-3],
                              format_func=lambda v: f"{v:g}")
        batches = c.multiselect("Batch sizes", options["batches"], default=last.get("batch_sizes") or (
            [cfg.batch_size] if cfg.batch_size in (32, 64, 128, 256) else [128]))
        a, b, c = st.columns(3)
        epoch_counts = a.multiselect("Epochs", options["epochs"], default=last.get("epochs") or [2])
        strengths = b.multiselect("Augmentation strength", options["augment"], default=last.get("augment") or [0.0, 0.5],
                                  help="0 is none; 1 is flip 0.5, shift 0.1, rotation 10°, zoom 0.1, erasing 0.5.")
        mode = c.radio("Combine", ["grid", "random"], index=["grid", "random"].index(last.get("mode", "grid")),
                       horizontal=True, help="grid: every combination; random: a sample of them.")
        a, b = st.columns(2)
        count = a.number_input("Random trials", 1, sweeps.MAX_TRIALS, int(last.get("trials", 6)),
                               help="How many combinations random mode draws (grid mode runs them all).")
        budget = b.slider("Budget (minutes)", 1, 240, min(240, max(1, int(round(last.get("budget_minutes", 20))))),
                          help="No new trial starts after this long.")
        if st.form_submit_button("Start the sweep", icon=":material/science:", type="primary"):
            try:
                sweep_spec = sweeps.SweepSpec(presets=chosen_presets, learning_rates=rates, batch_sizes=batches,
                                              epochs=epoch_counts, augment=strengths, mode=mode, trials=int(count),
                                              budget_minutes=float(budget))
                work = sweeps.studio_sweep(ui.workspace(), project, sweep_spec, ui.registry(), dataset.num_classes)
                ui.background().submit(ui.owner(), "sweep", pid, work, label="Sweep")
            except ValueError as error:
                st.error(ui.plain(error), icon=":material/error:")
            else:
                st.rerun()
if sweep_task is not None:  # a finished sweep is forgotten without a rerun: the report below is read after this, and a
    ui.watch_task(sweep_task, on_done=lambda report: None)  # rerun would drop a click made as the last trial ended
report = sweeps.latest_sweep(ui.workspace(), pid)
if report and report["trials"]:
    rows = sweeps.table_rows(report)
    st.altair_chart(charts.parallel_coordinates(rows, ["preset", "learning rate", "batch size", "epochs", "augmentation",
                                                       "val. accuracy"]), width="stretch")
    st.dataframe(rows, hide_index=True, width="stretch", column_config={
        "learning rate": st.column_config.NumberColumn(format="%.1e"),
        "val. accuracy": st.column_config.ProgressColumn(format="percent", min_value=0.0, max_value=1.0),
        "test accuracy": st.column_config.NumberColumn(format="percent")})
    best = report["best"]
    if best is not None:
        st.caption(f"{len(report['trials'])} of {report['planned']} trials run"
                   + (f"; {report['skipped']} skipped when the budget ran out" if report["skipped"] else "")
                   + f". Best on validation: trial {best['trial']}, {best['val_accuracy']:.2%}.")
        if st.button("Use the best settings", icon=":material/workspace_premium:", key=f"sweep-best-{pid}",
                     help="The best trial's preset and training settings become the project's."):
            values = {k: best[k] for k in ("preset", "learning_rate", "batch_size", "epochs", "augment")}
            ui.save_project(project, model=presets.preset(best["preset"], dataset.num_classes),
                            model_preset=best["preset"], config=sweeps.trial_config(values).to_dict())
            st.session_state[f"hp-version-{pid}"] = st.session_state.get(f"hp-version-{pid}", 0) + 1
            st.rerun()

st.divider()
ui.link("training", "Next: train")

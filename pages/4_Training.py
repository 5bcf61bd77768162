"""4 · Training: Start / Stop / Resume a background job, live curves and progress, run history with overlays.

Training never runs in this script: it runs in the server's job registry, and this page only reads snapshots,
so switching pages, refreshing or opening a second tab shows the same job."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import studio_ui as ui
from fmnist_jax import store
from fmnist_jax.data import catalogue
from fmnist_jax.model import layer_specs
from fmnist_jax.studio import charts, estimates, tasks
from fmnist_jax.studio import figures as figures_html
from fmnist_jax.studio import projects as proj

STATUS_LABELS = {"queued": ":orange-badge[:material/hourglass_top: queued]",
                 "running": ":blue-badge[:material/progress_activity: running]",
                 "completed": ":green-badge[:material/check_circle: completed]",
                 "early_stopped": ":green-badge[:material/check_circle: stopped early (no improvement)]",
                 "stopped": ":gray-badge[:material/stop_circle: stopped]",
                 "cancelled": ":gray-badge[:material/cancel: cancelled]",
                 "failed": ":red-badge[:material/error: failed]"}

ui.frame("training")
ui.page_title("4", "Training", "Train the model in the background and watch it learn. You can switch pages or "
                               "refresh: the run keeps going and this page picks it up again.")
project = ui.require_project()
pid = project["id"]
ws = ui.workspace()
registry = ui.registry()

# ----------------------------------------------------------------------------- what will train

problem = None
try:
    dataset = proj.load_dataset(project)
    spec, cfg, train_size = tasks.check_trainable(project, dataset)
    info = layer_specs.describe(spec, dataset.input_shape, dataset.num_classes)
except (ValueError, catalogue.DataUnavailable, store.StoreError) as error:
    problem = str(error)

with st.container(border=True):
    if problem:
        st.error(f"This project cannot train yet: {ui.plain(problem)}.", icon=":material/error:")
        links = st.columns(3)
        with links[0]:
            ui.link("data", "Fix the data")
        with links[1]:
            ui.link("model", "Fix the model")
        with links[2]:
            ui.link("hyper", "Fix the hyperparameters")
    else:
        counts = proj.split_counts(dataset, proj.split_spec(project, dataset))
        cols = st.columns(4)
        cols[0].markdown(f"**Data** · {proj.DATASET_LABELS.get(project.get('dataset') or 'fashion_mnist', 'uploaded').split(' (')[0]}  \n"
                         f":gray[{train_size:,} train · {counts['validation']:,} val · {counts['test']:,} test]")
        cols[1].markdown(f"**Model** · {proj.preset_of(project) or 'custom'}  \n"
                         f":gray[{info['total_params'] * cfg.ensemble:,} parameters, {len(spec)} layers"
                         + (f", {cfg.ensemble} members" if cfg.ensemble > 1 else "") + "]")
        cols[2].markdown(f"**Optimizer** · {cfg.optimizer}, lr {cfg.learning_rate:g}  \n"
                         f":gray[{cfg.schedule.replace('_', ' ')} schedule, batch {cfg.batch_size}]")
        cols[3].markdown(f"**Length** · {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}  \n"
                         f":gray[augmentation {'on' if cfg.augment.active() else 'off'}, seed {cfg.seed}]")


def transfer_panel() -> None:
    """Transfer learning: start the next run from a trained model with the same layers, optionally frozen."""
    choices = {"": "Random weights (train from scratch)",
               **tasks.starting_models(ws, project, spec, dataset.num_classes)}
    current = project.get("init_from") or ""
    with st.expander("Start from a trained model (transfer learning)", icon=":material/move_up:",
                     expanded=bool(current)):
        if len(choices) == 1:
            st.caption("No trained model has exactly this model's layers yet; train one run first, or pick the "
                       "demo's preset (fast) on the Model page to start from the demo model.")
            return
        left, right = st.columns([3, 1])
        shown = current if current in choices else ""  # a starting model that no longer fits is shown as none...
        choice = left.selectbox("Start from", list(choices), format_func=choices.get,
                                index=list(choices).index(shown), key=f"init-from-{pid}",
                                help="The new run starts from this model's weights instead of random ones.")
        freeze = right.number_input("Freeze first layers", 0, max(len(spec), cfg.freeze_layers), cfg.freeze_layers,
                                    key=f"freeze-{pid}",
                                    disabled=not choice, help="These layers keep the starting model's weights.")
        if choice != shown or freeze != cfg.freeze_layers:  # ...and is kept until the user picks another
            ui.save_project(project, init_from=choice or None,
                            config={**cfg.to_dict(), "freeze_layers": int(freeze) if choice else 0})
            st.rerun()


if problem is None:
    transfer_panel()


# ----------------------------------------------------------------------------- live job panel

def _start() -> None:
    name = st.session_state.get(f"run-name-{pid}", "").strip()
    try:
        snap = tasks.start_training(ws, ws.get_project(pid), name or None, registry)
    except (ValueError, catalogue.DataUnavailable, store.StoreError) as error:
        st.session_state["training-error"] = str(error)
        return
    st.session_state["training-notice"] = f"Started **{snap['name']}**."
    st.session_state.pop(f"run-name-{pid}", None)


def _stop(job_id: int) -> None:
    registry.stop(job_id)


def _resume(run_id: str) -> None:
    try:
        snap = tasks.resume_training(ws, ws.get_project(pid), run_id, registry)
    except (ValueError, store.StoreError) as error:
        st.session_state["training-error"] = f"Cannot resume {run_id}: {error}"
        return
    st.session_state["training-notice"] = f"Resuming **{snap['name']}** from its last checkpoint."


def live_panel() -> None:
    """Controls, progress and curves of the project's current (or latest) job; redrawn every second while active.

    Everything is drawn inside one placeholder, so a new run's state replaces the previous run's metrics,
    charts and test accuracy at once instead of sitting above them until the page finishes redrawing.
    """
    with st.empty().container():
        _live_panel(registry.for_project(pid, ui.owner()))


def _live_panel(snap: dict | None) -> None:
    active = bool(snap and snap["status"] in tasks.ACTIVE)
    controls = st.columns([3, 1, 1], vertical_alignment="bottom")
    controls[0].text_input("Run name (optional)", key=f"run-name-{pid}", max_chars=60, disabled=active,
                           placeholder="e.g. adam-cosine-5ep", help="Names the run's folder; default: the start time.")
    controls[1].button("Start", type="primary", icon=":material/play_arrow:", on_click=_start, width="stretch",
                       disabled=active or problem is not None, key="start-training",
                       help="Train a new run with the project's current settings.")
    controls[2].button("Stop", icon=":material/stop:", on_click=_stop, args=(snap["id"] if snap else 0,),
                       width="stretch", disabled=not active or bool(snap and snap["stop_requested"]), key="stop-training",
                       help="Stop after the current chunk; the run is saved and can be resumed.")
    if message := st.session_state.pop("training-error", None):
        st.error(ui.plain(message), icon=":material/block:")
    if message := st.session_state.pop("training-notice", None):
        st.success(message, icon=":material/play_circle:")
    if snap is None:
        st.info("No training job in progress. Press **Start** to train with the settings above; finished runs are "
                "listed under Run history.", icon=":material/info:")
        return

    figures = tasks.job_progress(snap)
    st.markdown(f"#### `{snap['name']}` {STATUS_LABELS.get(snap['status'], snap['status'])}")
    if snap["status"] == "queued" and (wait := tasks.queue_wait(registry, snap["id"])) is not None:
        expected = ("soon" if wait["eta"] is not None and wait["eta"] < 5 else
                    f"in about {ui.seconds_text(wait['eta'])}" if wait["eta"] is not None else "when they finish")
        latest = f" (at the latest in {ui.seconds_text(wait['latest'])})" if wait["latest"] else ""
        st.info(f"Queued: {wait['position']} job(s) ahead of it, {registry.max_running} training at a time on this "
                f"server. Expected start: {expected}{latest}.", icon=":material/hourglass_top:")
    elif snap["status"] == "running" and not snap["chunks"]:
        st.progress(0.0, text="Preparing data and compiling the model (the first run of a model takes longest)…")
    if snap["error"]:
        st.error(f"Training failed: {snap['error']}", icon=":material/error:")
    if snap.get("time_limited"):
        st.info("Stopped at this Space's time limit per job; the run is saved and can be resumed below.",
                icon=":material/timer_off:")
    if snap.get("phase") == "testing":
        ended = snap["result"].get("training_status")
        done = snap["result"].get("epochs_completed", 0)
        st.info(f"{'Stopped' if ended == 'stopped' else 'Training finished'} after {done} full epoch(s); the run is "
                "saved. Measuring test accuracy…", icon=":material/stop_circle:" if ended == "stopped" else
                ":material/hourglass_bottom:")
        st.progress(snap["result"].get("test_progress", 0.0), text="test set")
    elif snap["stop_requested"] and active:
        st.warning("Stopping: the current chunk of steps ends, then the run is saved…", icon=":material/stop_circle:")
    if snap["chunks"] or snap["epochs"]:
        fraction = figures["fraction"]
        st.progress(fraction, text=f"epoch {figures['epoch']}/{figures['epochs']} · {fraction:.0%}")
        memory = estimates.memory_in_use()
        start = snap["start"]
        eta = ("done" if not active else "stopping" if snap["stop_requested"] else
               "soon" if figures["fraction"] >= 1.0 else ui.seconds_text(figures["eta"]))
        st.html(figures_html.metric_grid_html([
            ("Images/s", f"{figures['images_per_s']:,.0f}" if figures["images_per_s"] else "–", None, None),
            ("s/epoch", ui.seconds_text(figures["seconds_per_epoch"]), None, None),
            ("Elapsed", ui.seconds_text(figures["elapsed"]), None,
             "Since the job started, including data preparation and compilation."),
            ("ETA", eta, None, "Time left for the remaining training steps (then a validation pass and the test-set "
                               "evaluation)."),
            ("Best epoch", str(figures["best_epoch"] or "–"),
             f"{figures['best_val_accuracy']:.2%} val." if figures["best_epoch"] else None,
             "The epoch with the highest validation accuracy so far."),
            ("Device", f"{start.get('platform', '?').upper()} × {start.get('devices', 1)}", None,
             f"{start.get('device', '')}; compiled in {start.get('compile_seconds', 0):.1f} s"),
            ("Memory", ui.bytes_text(memory["device_bytes"] or memory["process_bytes"]), None,
             "Accelerator memory in use" if memory["device_bytes"] else "Server process memory (RSS)")]))
        rows = charts.learning_curve_rows(snap["chunks"], snap["epochs"])
        with st.container(key="live-curves"):
            left, right = st.columns(2)
            left.altair_chart(charts.learning_curve(rows, "loss", figures["epochs"]), width="stretch")
            right.altair_chart(charts.learning_curve(rows, "accuracy", figures["epochs"]), width="stretch")
    result = snap["result"]
    if result.get("test_accuracy") is not None:
        st.success(f"Test accuracy **{result['test_accuracy']:.2%}** (loss {result['test_loss']:.4f}) after "
                   f"{result.get('epochs_completed', '?')} epoch(s) in {ui.seconds_text(result.get('seconds'))}.",
                   icon=":material/verified:")
    # a job that just ended: redraw the whole page once so the history below includes it. Only from the panel's own
    # rerun: in a full run a rerun would drop a Resume or Delete click made in that run. A full run whose first read
    # saw the job ended reads the history after this panel anyway; one whose first read saw it running leaves the
    # flag for the panel's next tick (within a second), which redraws the page without the live redraws.
    if not active and st.session_state.get("training-active-job") == snap["id"]:
        if ui.in_fragment_run():
            st.session_state["training-active-job"] = None
            st.rerun()
        elif not is_active:
            st.session_state["training-active-job"] = None
    # a stopped run's test pass that just ended: redraw the whole page once, so the history shows its test accuracy
    if snap.get("phase") == "testing":
        st.session_state["training-testing-job"] = snap["id"]
    elif st.session_state.get("training-testing-job") == snap["id"] and ui.in_fragment_run():
        st.session_state["training-testing-job"] = None
        st.rerun()
    # a job that just started: redraw the whole page so this panel refreshes itself every second
    if active and st.session_state.get("training-active-job") != snap["id"]:
        st.session_state["training-active-job"] = snap["id"]
        st.rerun()


current = registry.for_project(pid, ui.owner())
is_active = bool(current and current["status"] in tasks.ACTIVE)
is_live = is_active or bool(current and current["phase"] == "testing")  # a stopped run's test pass is still drawn
if not is_active and problem is None:
    ui.warm_up(ui.workspace().get_project(pid))  # compile now, so Start only has to load the program
if is_active:
    st.session_state["training-active-job"] = current["id"]
    ui.hide_run_indicator()  # the panel redraws every second; Streamlit's "Running… Stop" would blink with it
st.fragment(live_panel, run_every=1.0 if is_live else None)()

# ----------------------------------------------------------------------------- history

st.subheader("Run history")
runs = tasks.runs_table(ws, pid, registry)
if not runs:
    st.info("Finished, stopped and failed runs of this project will be listed here.", icon=":material/history:")
    st.stop()
table = pd.DataFrame([{
    "run": r["name"], "status": r["status"], "preset": r["preset"], "optimizer": r["optimizer"],
    "lr": r["learning_rate"], "epochs": f"{r['epochs']}/{r['planned_epochs'] or '?'}",
    "best val. acc.": r["best_val_accuracy"], "test acc.": r["test_accuracy"], "time": ui.seconds_text(r["seconds"]),
    "started": ui.stamp(r["created"])} for r in runs])
if any(r["labels"] != "original labels" for r in runs):  # a cleaned label version: which labels each run learnt
    table.insert(3, "labels", [r["labels"].replace(" labels", "").replace("labels ", "") for r in runs])
st.dataframe(table, hide_index=True, width="stretch", column_config={
    "lr": st.column_config.NumberColumn(format="%.1e"),
    "best val. acc.": st.column_config.ProgressColumn(format="percent", min_value=0.0, max_value=1.0),
    "status": st.column_config.TextColumn(width="medium"),  # "completed" was cut to "completec"
    "test acc.": st.column_config.ProgressColumn(format="percent", min_value=0.0, max_value=1.0)})

resumable = [r for r in runs if r["status"] in tasks.RESUMABLE and
             not (current and current["status"] in tasks.ACTIVE and current["name"] == r["id"])]
if resumable and not is_active:
    a, b = st.columns([3, 1], vertical_alignment="bottom")
    choice = a.selectbox("Resume a stopped or interrupted run", [r["id"] for r in resumable], key=f"resume-{pid}",
                         help="Continue from the run's last checkpoint with the run's own settings.")
    if b.button("Resume", icon=":material/resume:", width="stretch"):
        _resume(choice)
        st.rerun()

with_history = [r for r in runs if tasks.run_history(r["path"])]
if with_history:
    st.markdown("**Compare runs**")
    a, b = st.columns([3, 1])
    ids, overlay_key = [r["id"] for r in with_history], f"overlay-{pid}"
    if overlay_key in st.session_state:  # runs finished since the last redraw join the chart; deleted ones leave it
        seen = st.session_state.get(f"overlay-seen-{pid}", ids)
        st.session_state[overlay_key] = ([i for i in ids if i not in seen] +
                                         [i for i in st.session_state[overlay_key] if i in ids])
    st.session_state[f"overlay-seen-{pid}"] = ids
    chosen = a.multiselect("Runs to overlay", ids, default=None if overlay_key in st.session_state else ids[:3],
                           key=overlay_key,
                           format_func=lambda rid: next(r["name"] for r in with_history if r["id"] == rid),
                           help="Per-epoch curves of the selected runs, on one chart.")
    metric = b.selectbox("Metric", ["val_accuracy", "val_loss", "accuracy", "loss"], key=f"overlay-metric-{pid}",
                         format_func={"val_accuracy": "validation accuracy", "val_loss": "validation loss",
                                      "accuracy": "train accuracy", "loss": "train loss"}.get)
    overlay = [{"run": r["name"], "epoch": h["epoch"], "metric": key, "value": h.get(key)}
               for r in with_history if r["id"] in chosen for h in tasks.run_history(r["path"])
               for key in ("val_accuracy", "val_loss", "accuracy", "loss") if h.get(key) is not None]
    if overlay:
        st.altair_chart(charts.runs_overlay(overlay, metric), width="stretch")

with st.expander("Delete a run"):
    finished = [r for r in runs if not (current and is_active and current["name"] == r["id"])]
    a, b = st.columns([3, 1], vertical_alignment="bottom")
    doomed = a.selectbox("Run", [r["id"] for r in finished], key=f"delete-run-{pid}")
    if b.button("Delete run", icon=":material/delete:", width="stretch") and doomed:
        ws.delete_run(pid, doomed)
        if project.get("deployed_run") == doomed:
            ui.save_project(project, deployed_run=None)
        st.rerun()

st.divider()
ui.link("evaluation", "Next: evaluate")

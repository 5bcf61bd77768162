"""Streamlit helpers shared by app.py and the pages: the current project, the job registry, the sidebar,
guards for missing prerequisites and small formatting helpers. No jax/flax/optax here (see STYLE.md).
"""
from __future__ import annotations

import logging
import secrets
import time
from typing import Any, Callable

import numpy as np
import streamlit as st

from fmnist_jax import checks, settings, store
from fmnist_jax.data import catalogue
from fmnist_jax.deploy import explain, predict
from fmnist_jax.photos import decode
from fmnist_jax.studio import charts, estimates, public, shares, space, tasks
from fmnist_jax.studio import projects as proj

estimates.configure_devices()  # before any page runs JAX: training splits the CPU into one device per core

HOME_PAGE = "app.py"
HOME_LINK = (HOME_PAGE, "Projects", ":material/folder:")
PAGES = {
    "data": ("pages/1_Data.py", "Data", ":material/dataset:"),
    "model": ("pages/2_Model.py", "Model", ":material/account_tree:"),
    "hyper": ("pages/3_Hyperparameters.py", "Hyperparameters", ":material/tune:"),
    "training": ("pages/4_Training.py", "Training", ":material/model_training:"),
    "evaluation": ("pages/5_Evaluation.py", "Evaluation", ":material/query_stats:"),
    "deploy": ("pages/6_Deploy.py", "Deploy", ":material/rocket_launch:"),
}


@st.cache_resource(show_spinner=False)
def registry() -> Any:
    """The server's one background-training registry (shared by every session; jobs are keyed by project)."""
    return proj.get_registry()


@st.cache_resource(show_spinner=False)
def device() -> dict:
    """JAX backend, device kind and count (static for the life of the server)."""
    info = estimates.device_info()
    return {k: info[k] for k in ("platform", "kind", "count")}


def workspace() -> store.Workspace:
    """The projects workspace of this session: FMNIST_HOME locally; in public mode the visitor's private one,
    whose id rides in the URL (?w=...) so they can come back to it."""
    if not settings.public_mode():
        return proj.workspace()
    workspace_id, home = public.workspace_for(st.session_state.get("workspace-id") or st.query_params.get("w"))
    st.session_state["workspace-id"] = workspace_id
    if st.query_params.get("w") != workspace_id:
        st.query_params["w"] = workspace_id
    return store.Workspace(home)


def owner() -> str:
    """The job owner of this session's workspace."""
    return proj.owner_of(workspace())


def frame(page: str | None = None) -> dict | None:
    """Every page's first call, with its key in PAGES (None: the home page): wide page config, the open project
    and the sidebar (navigation, device, jobs), and the page's address told to a Space page that embeds it.

    Each script sets up its own frame (rather than app.py wrapping pages with st.navigation), so a shared
    link straight to a page works even as the first request after a server start.
    """
    st.set_page_config(page_title="Fashion-MNIST Studio", page_icon=":material/checkroom:", layout="wide")
    _report_unexpected_errors()
    ws = workspace()
    if settings.public_mode():
        proj.cleanup_public_workspaces(keep=ws.home.name)
    project = current_project()
    sidebar(project)
    with st.sidebar:  # no visible output; the sidebar exists on every page, in a drawer on a phone
        st.html(space.parent_message(st.query_params.to_dict(), page), unsafe_allow_javascript=True)
    return project


def open_page_from_query() -> None:
    """The home page's first step: a ?page= query (how a Space page's address names a page, since only the query
    reaches the app) opens that page with the rest of the query."""
    wanted = st.query_params.get(space.PAGE_PARAMETER)
    if wanted in PAGES:
        rest = {key: value for key, value in st.query_params.to_dict().items() if key != space.PAGE_PARAMETER}
        st.switch_page(PAGES[wanted][0], query_params=rest)


def own_links(page: str | None = None, **extra: str) -> list[dict]:
    """The addresses that reopen what this session has open (workspace, project, the query's model, and `extra`),
    on a Space its Space page's address first; see fmnist_jax.studio.space.links."""
    params = {**st.query_params.to_dict(), **extra}
    if settings.public_mode():
        params["w"] = workspace().home.name
    path = PAGES[page][0].split("_", 1)[1].removesuffix(".py") if page else ""
    return space.links(origin(), params, page, path)


def origin() -> str:
    """The app's origin as the browser reached it (scheme, host and port), without a page path or query."""
    url = st.context.url or "http://localhost:8501"
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/')[0].split('?')[0]}"


_LOG = logging.getLogger("fmnist_jax.studio")


def unexpected_error(error: Exception) -> bool:
    """A bug, not a user's mistake: logged with a short reference that the page shows instead of a traceback.

    Errors a user can cause are caught where they happen and explained in one line; whatever reaches this
    point is logged in full (with the reference, so a report can be matched to the log) and kept off the page.
    """
    reference = secrets.token_hex(4)
    _LOG.error("unexpected error, reference %s", reference, exc_info=error)
    st.error(f"Something went wrong that should not have (reference **{reference}**). Nothing you saved was lost: "
             "reload the page to carry on. If it happens again, report the reference; the details are in the "
             "server log.", icon=":material/bug_report:")
    return True  # suppresses Streamlit's own traceback box


def _report_unexpected_errors() -> None:
    # Streamlit calls the run context's on_script_error for an exception that escapes the page script or a
    # fragment; its own box (a traceback) is shown only when there is no handler or the handler fails.
    from streamlit.runtime.scriptrunner import get_script_run_ctx
    ctx = get_script_run_ctx()
    if ctx is not None:
        ctx.on_script_error = unexpected_error


def current_project() -> dict | None:
    """The open project: from the session, a ?project= link, or the most recently updated one."""
    ws = workspace()
    wanted = st.query_params.get("project")
    candidates = [st.session_state.get("project_id"), wanted] if not wanted else [wanted, st.session_state.get("project_id")]
    for project_id in candidates:
        if not project_id:
            continue
        try:
            project = ws.get_project(project_id)
        except (store.StoreError, ValueError):
            continue
        st.session_state["project_id"] = project["id"]
        if wanted != project["id"]:
            st.query_params["project"] = project["id"]  # a refresh or a copied URL opens the same project
        return project
    if not st.session_state.get("project_closed"):
        projects = ws.list_projects()
        if projects:
            open_project(projects[0]["id"])
            return ws.get_project(projects[0]["id"])
    st.session_state.pop("project_id", None)
    return None


def open_project(project_id: str | None) -> None:
    """Make a project the open one (None closes it)."""
    if project_id is None:
        st.session_state.pop("project_id", None)
        st.session_state["project_closed"] = True
        st.query_params.pop("project", None)
        return
    st.session_state["project_id"] = project_id
    st.session_state["project_closed"] = False
    st.query_params["project"] = project_id


def save_project(project: dict, **changes: Any) -> dict | None:
    """Persist changes to the project; shows the error and returns None if the workspace refuses."""
    try:
        updated = workspace().update_project(project["id"], **changes)
    except (ValueError, store.StoreError) as error:
        st.error(f"Could not save: {error}", icon=":material/error:")
        return None
    project.clear()
    project.update(updated)
    return updated


def settings_slider(model: type, name: str, value: Any, key: str) -> Any:
    """A slider for one settings field, drawn from the field's metadata and bounds (fmnist_jax.checks.widget), so its
    range is always the range the settings accept and a stored value is shown exactly as it is."""
    meta = checks.widget(model, name)
    kind = type(meta["default"])  # whole pixels stay int, strengths float
    return st.slider(meta["label"], kind(meta["min"]), kind(meta["max"]), kind(value), kind(meta["step"]), key=key,
                     help=meta["help"])


def require_project() -> dict:
    """The open project, or an explanation with a link to the Projects page (and the page stops)."""
    project = current_project()
    if project is None:
        st.info("No project is open. Create one (or the one-click sample project) on the Projects page.",
                icon=":material/folder_open:")
        st.page_link(HOME_PAGE, label="Go to Projects", icon=":material/arrow_forward:")
        st.stop()
    st.caption(f":material/folder_open: Project **{plain(project['name'])}** · change it in the sidebar")
    return project


def page_title(step: str | None, title: str, caption: str) -> None:
    """Consistent page heading: '2 · Model' and a one-line explanation."""
    st.title(f"{step} · {title}" if step else title)
    st.caption(caption)


def link(page: str, label: str | None = None) -> None:
    """A link to one of the studio's pages by key (data, model, hyper, training, evaluation, deploy)."""
    path, title, icon = PAGES[page]
    st.page_link(path, label=label or title, icon=icon)


def public_caps(spec: list, input_shape: tuple, num_classes: int, cfg: Any, train_size: int) -> None:
    """On a public Space: the job's figures against the Space's limits, or which limit it exceeds, before Start."""
    if not settings.public_mode():
        return
    try:
        figures = public.job_figures(spec, input_shape, num_classes, cfg.batch_size, cfg.epochs, train_size, cfg.ensemble)
    except ValueError:
        return  # an invalid model is reported by the page itself
    try:
        public.check_job(figures)
    except ValueError as error:
        st.error(f"**Too big for this Space:** {plain(error)}", icon=":material/block:")
    else:
        st.caption("This Space's limits · " + " · ".join(public.usage_lines(figures)))


def warm_up(project: dict) -> None:
    """Prepare and compile the project's next training in the background (once per settings), so Start is
    quick; nothing happens when the project cannot train yet or is already training."""
    active = registry().for_project(project["id"], owner())
    if active and active["status"] in tasks.ACTIVE:
        return
    try:
        key, work = tasks.warm_up(workspace(), project)
        for stale in background().owned(owner(), "warm", f"{project['id']}:"):
            if stale["key"] != f"{project['id']}:{key}":
                background().cancel(stale["id"])  # settings changed since: that program is not needed first
        background().submit(owner(), "warm", f"{project['id']}:{key}", work, label="Preparing the training")
    except (ValueError, store.StoreError, catalogue.DataUnavailable):
        return  # the page explains what is wrong; a full task queue just skips the warm-up


def background() -> Any:
    """The server's registry of background tasks (imports, exports, evaluations)."""
    return proj.get_task_registry()


def watch_task(snap: dict, on_done: Callable[[Any], None] | None = None) -> None:
    """Show a background task where the page calls this: its progress and a Cancel button while it runs (redrawn
    every second, on its own), then its result (`on_done`, once), its error, or that it was cancelled."""
    if snap["status"] in tasks.ACTIVE:
        st.fragment(_task_progress, run_every=1.0)(snap["id"])
    elif snap["status"] == "done":
        if on_done is not None:
            background().forget(snap["id"])
            on_done(snap["result"])
    elif snap["status"] == "failed":
        st.error(f"{plain(snap['label'])} failed: {plain(snap['error'])}", icon=":material/error:")
        st.button("Dismiss", key=f"task-dismiss-{snap['id']}", on_click=background().forget, args=(snap["id"],))
    else:
        st.info(f"{plain(snap['label'])}: cancelled.", icon=":material/cancel:")
        background().forget(snap["id"])


def in_fragment_run() -> bool:
    """True in a fragment's own rerun (its `run_every` tick or a widget inside it), False in a full run of the page.

    A fragment that sees its task end calls for a full rerun only in its own rerun: in a full run the page has
    already drawn from its own read, and an st.rerun() there would drop a click made in that run (the button's
    True lasts one run). The fragment's next tick, within a second, brings the page up to date instead."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return bool(ctx is not None and ctx.fragment_ids_this_run)


def _task_progress(task_id: int) -> None:
    snap = background().get(task_id)
    if snap is None or snap["status"] not in tasks.ACTIVE:
        if in_fragment_run():
            st.rerun(scope="app")  # ended: the whole page shows the outcome
        return
    text = snap["message"] or ("waiting for a free worker" if snap["status"] == "queued" else "starting")
    a, b = st.columns([5, 1], vertical_alignment="center")
    a.progress(snap["progress"], text=f"{snap['label']}: {text}")
    b.button("Cancel", icon=":material/close:", key=f"task-cancel-{task_id}", on_click=background().cancel, args=(task_id,),
             width="stretch")


RUN_INDICATOR_HIDDEN = "<style>[data-testid='stStatusWidget']{visibility:hidden}</style>"


def hide_run_indicator() -> None:
    """Hide Streamlit's "Running… Stop" corner widget on a page that redraws itself every second: it blinks
    with each redraw, and its Stop (which stops the page script) reads like the training's Stop button."""
    st.html(RUN_INDICATOR_HIDDEN)


def seconds_text(seconds: float | None) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min' (or '–')."""
    if seconds is None:
        return "–"
    seconds = max(0.0, float(seconds))
    if seconds < 0.1:
        return "under 0.1 s"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def plain(message: Any) -> str:
    """An error message safe to show inside Markdown (no accidental bold from names like __init__)."""
    text = str(message)
    for char in ("\\", "*", "_", "`", "[", "]", "<", ">", "#", "|", "~", "$"):
        text = text.replace(char, "\\" + char)
    return text


def percent(value: Any) -> str:
    """'91.23%' or '–'."""
    return f"{value:.2%}" if isinstance(value, (int, float)) else "–"


def bytes_text(value: int | None) -> str:
    """'512 MB' or '–'."""
    if not value:
        return "–"
    return f"{value / 2**30:.1f} GB" if value >= 2**30 else f"{value / 2**20:.0f} MB"


def progress_callback(bar: Any):
    """A (fraction, message) callback that drives an st.progress bar."""
    def update(fraction: float, message: str) -> None:
        bar.progress(min(1.0, max(0.0, float(fraction))), text=message)
    return update


# ----------------------------------------------------------------------------- sidebar

def _switch_project(key: str) -> None:
    open_project(st.session_state[key])


def sidebar(project: dict | None) -> None:
    """Current project picker, JAX device and the training queue."""
    ws = workspace()
    with st.sidebar:
        for path, title, icon in [HOME_LINK, *PAGES.values()]:
            st.page_link(path, label=title, icon=icon)
        st.divider()
        projects = ws.list_projects()
        if projects:
            ids = [p["id"] for p in projects]
            names = {p["id"]: p["name"] for p in projects}
            current = project["id"] if project and project["id"] in ids else None
            # The open project is the one source: the picker is made for it (its key names it), so a page switch
            # or a ?project= link can never leave the picker showing a widget state of another page or project.
            key = f"sidebar-project-{current}"
            st.selectbox("Current project", ids, index=ids.index(current) if current else None,
                         format_func=lambda i: names.get(i, i), key=key, placeholder="Choose a project",
                         on_change=_switch_project, args=(key,),
                         help="Every page works on this project; it is saved as you go.")
        else:
            st.caption("No projects yet.")
        info = device()
        kind = "" if info["kind"].lower() == info["platform"].lower() else f" · {info['kind']}"
        devices = f"{info['count']} device{'s' if info['count'] != 1 else ''}"
        st.markdown(f":material/memory: JAX on **{info['platform'].upper()}**{kind} · {devices}",
                    help="The JAX backend that trains and evaluates models on this server.")
        busy = any(j["owner"] == owner() for j in registry().queue())
        # redraw the queue every second (as the Training page's panel) only while something trains
        st.fragment(_queue_panel, run_every=1 if busy else None)()
        _close_drawer_on_phones()


# On a phone (narrower than Streamlit's 768 px breakpoint) the sidebar is a drawer over the page, and Streamlit
# leaves it open after a page is chosen in it. The page is named in the text, so the browser runs this again
# when the page changes, and not on the same page's reruns (a drawer the user opens there stays open). It runs in
# the app's own document (st.html), not in a component frame: st.components.v1.html is deprecated.
_CLOSE_DRAWER = """<!-- page PAGE --><script>
// After the page's first paint: run at once, during the page switch's render, the click was lost.
setTimeout(() => {
  const drawer = document.querySelector('[data-testid="stSidebar"]');
  if (window.innerWidth < 768 && drawer && drawer.dataset.collapsed === "false") {
    const close = document.querySelector('[data-testid="stSidebarCollapseButton"] button');
    if (close) close.click();
  }
}, 300);
</script>"""


def _close_drawer_on_phones() -> None:
    """A script with no visible output that closes the phone's sidebar drawer once a page has been chosen in it."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    st.html(_CLOSE_DRAWER.replace("PAGE", ctx.page_script_hash if ctx else ""), unsafe_allow_javascript=True)


def _queue_panel() -> None:
    jobs = [j for j in registry().queue() if j["owner"] == owner()]
    if not jobs:
        st.caption(":material/check_circle: No training running")
        return
    names = {p["id"]: p["name"] for p in workspace().list_projects()}
    for job in jobs:
        where = names.get(job["project_id"], job["project_id"])
        if job["status"] == "running":
            snap = registry().get(job["id"]) or {}
            figures = tasks.job_progress(snap)
            st.markdown(f":material/model_training: **Training** `{job['name']}` in *{where}*")
            st.progress(figures["fraction"], text=f"epoch {figures['epoch']}/{figures['epochs']}" if figures["epochs"]
                        else "preparing the data and the compiled program…")
        else:
            st.markdown(f":material/hourglass_top: Queued (#{job['position']}) `{job['name']}` in *{where}*")


def stamp(seconds: float | None) -> str:
    """A local date-time for a Unix time, or '–'."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else "–"


# ----------------------------------------------------------------------------- predictions (home try-out and Deploy)

STEP_TITLES = {"original": "Your photo", "background removed": "Background removed", "garment found": "Garment found",
               "cropped": "Cropped & inverted", "model input": "What the model sees"}


@st.cache_resource(show_spinner=False, max_entries=4)
def cached_model(source: str, stamp: str) -> Any:
    """A loaded model, shared read-only by every session; `stamp` changes when the weights file does. The demo is
    the process's own instance, which the server warmed up at start (predict.warm_demo_in_background)."""
    return predict.demo_model() if source == "demo" else predict.load_model(source)


def _thumbnail(image: Any) -> Any:
    small = max(image.shape[:2]) <= 64
    return estimates.upscale(image, max(1, 140 // max(image.shape[:2]))) if small else image


def prediction_card(result: dict, model: Any, show_all: bool = False) -> None:
    """One prediction in a compact row (photo, what the model sees, the answer with its bars); the pipeline's
    steps in an expander, so a phone shows each result in about one screen."""
    if "error" in result:
        st.error(f"**{plain(result['file'])}**: {plain(result['error'])}", icon=":material/broken_image:")
        return
    with st.container(border=True):
        answer = ":gray[**not sure**]" if result.get("unsure") else f":orange[**{result['label']}**]"
        detail = (f"best guess {result['label']}, {result['probability']:.0%}" if result.get("unsure")
                  else f"{result['probability']:.0%}")
        st.markdown(f"**{plain(result['file'])}** → {answer} ({detail})")
        steps = dict(result["steps"])
        seen = np.asarray(steps["model input"]).reshape(model.input_shape)
        saliency = explain.explain(model, seen[None])[0][0]
        pictures, bars = st.columns([1, 1], vertical_alignment="center")
        pictures.image(estimates.side_by_side([steps["original"], steps["model input"], explain.overlay(seen, saliency)]),
                       caption=f"{STEP_TITLES['original']} · {STEP_TITLES['model input'].lower()} · where it looked "
                               f"({explain.TITLES[explain.default_method(model)]})")
        with bars:
            st.altair_chart(charts.probabilities(model.class_names, result["probs"], None if show_all else 3),
                            width="stretch")
        with st.expander("How the photo was prepared", icon=":material/photo_filter:"):
            columns = st.columns(len(result["steps"]))
            for column, (name, image) in zip(columns, result["steps"]):
                column.image(_thumbnail(image), caption=STEP_TITLES.get(name, name.capitalize()), width="stretch")


def model_card(card: dict) -> None:
    """What a model was trained on, and how it does on real photos per folder (the card bench/build_demo.py writes)."""
    real = card["real_photos"]
    with st.expander(f"Model card: {real['accuracy']:.0%} on real phone photos", icon=":material/badge:"):
        trained = card.get("trained_on") or {}
        if trained:
            counts = trained.get("photo_counts") or {}
            st.markdown(f"Trained on Fashion-MNIST and {counts.get('train', '?'):,} real photos "
                        f"(*{trained.get('photos')}*), starting from `{trained.get('starting_model')}`; photos go "
                        f"through the *{trained.get('pipeline')}* pipeline.")
        st.markdown(f"Fashion-MNIST test accuracy **{percent(card.get('test_accuracy'))}**. On {real['photos']} real "
                    f"phone photos it never trained on: **{real['accuracy']:.1%}** right on garments it knows "
                    f"({real['interval'][0]:.0%}-{real['interval'][1]:.0%}, 95%), *not sure* on "
                    f"{real['unsure_unknown']:.0%} of hats, shorts and skirts and {real['unsure_known']:.0%} of the rest.")
        rows = [{"folder": name, "right": f"{c['right']}/{c['total']}", "share": c["right"] / c["total"],
                 "95% interval": f"{c['interval'][0]:.2f}-{c['interval'][1]:.2f}",
                 "right answer": "a fitting class" if c["known"] else "not sure"}
                for name, c in real["per_folder"].items()]
        st.dataframe(rows, hide_index=True, width="stretch",
                     column_config={"share": st.column_config.ProgressColumn("share", min_value=0, max_value=1, format="percent")})
        st.caption(f"Measured with `{real['command']}`.")


def photo_files(uploads: list, camera: Any) -> list[tuple[str, bytes]]:
    """(name, bytes) of uploaded files and a camera shot."""
    files = [(upload.name, upload.getvalue()) for upload in uploads or []]
    if camera is not None:
        files.append(("camera photo", camera.getvalue()))
    return files


def try_a_photo(source: str = "demo", stamp: str = "demo", key: str = "try", introduce: bool = True) -> None:
    """Zero clicks to a prediction: upload photos or take one, answered by the shipped demo model (or the
    model a share link names). `introduce`: the heading and the demo model's one-line introduction (a share
    page has its own)."""
    if introduce and source == "demo":
        st.markdown("#### :material/checkroom: What garment is this?")
        st.caption("Upload photos of clothes or take one: the demo model answers at once, no project needed. "
                   "It knows T-shirts, trousers, pullovers, dresses, coats, sandals, shirts, sneakers, bags and "
                   "ankle boots, and says *not sure* for other things.")
    upload_col, camera_col = st.columns([3, 2])
    uploads = upload_col.file_uploader("Photos of garments", type=decode.UPLOAD_TYPES, accept_multiple_files=True,
                                       max_upload_size=decode.MAX_UPLOAD_BYTES // 2**20,  # said as "20MB per file"
                                       key=f"{key}-upload", label_visibility="collapsed")
    with camera_col:
        use_camera = st.toggle("Use the camera", key=f"{key}-camera-on", help="Take a photo with this device's camera.")
    camera = st.camera_input("Take a photo", key=f"{key}-camera") if use_camera else None
    files = photo_files(uploads, camera)
    if not files:
        return
    if settings.public_mode():
        wait = public.DEMO_LIMITER.allow(st.session_state.get("workspace-id") or st.context.ip_address or "anonymous",
                                         len(files))
        if wait:
            st.warning(f"Too many photos in a minute for the public demo; try again in {wait:.0f} s.",
                       icon=":material/hourglass:")
            return
    try:
        model = cached_model(source, stamp)
    except (ValueError, store.StoreError, OSError) as error:
        st.error(f"The model cannot be loaded: {plain(error)}", icon=":material/error:")
        return
    with st.spinner("Looking at your photo…"):
        results = predict.predict_files(model, files)
    for result in results:
        prediction_card(result, model)


def share_panel(project_id: str, choice: str, label: str) -> None:
    """The Deploy page's sharing: predict-only links for the chosen model (made and revoked here), and the
    owner's own link back to this page."""
    ws = workspace()
    st.markdown("**Share**", help="A share link lets anyone predict with this model, and nothing else: it does not "
                                  "open your projects, data or runs. Revoke it here to stop it.")
    if st.button("Create a predict-only link", icon=":material/link:", key=f"share-make-{project_id}"):
        try:
            shares.create_share(ws, project_id, choice, label)
        except (ValueError, store.StoreError) as error:
            st.error(plain(error), icon=":material/error:")
    for share in shares.list_shares(ws, project_id):
        with st.container(border=True):
            st.markdown(f"{plain(share['label'])} · {stamp(share['created'])}")
            for link in space.links(origin(), {"share": share["token"]}):
                st.code(link["url"], language=None, wrap_lines=True)
            if st.button("Revoke", icon=":material/link_off:", key=f"share-revoke-{share['token']}",
                         help="The link stops working at once."):
                shares.revoke_share(ws, share["token"])
                st.rerun()
    with st.expander("Your own link to this page"):
        for link in own_links("deploy", project=project_id, model=choice):
            st.code(link["url"], language=None, wrap_lines=True)
        st.caption("It opens this project with this model selected" + (
            ", in your whole workspace (projects, data, runs): keep it to yourself, to come back later."
            if settings.public_mode() else "."))


def shared_model_page(token: str) -> None:
    """What a share link opens: predictions with the one shared model, and nothing of the workspace it came
    from (no sidebar, no projects, no workspace key). Stops the script."""
    st.set_page_config(page_title="Fashion-MNIST Studio · shared model", page_icon=":material/checkroom:",
                       layout="centered")
    _report_unexpected_errors()
    share = shares.resolve_share(token)
    if share is None:
        st.error("This share link does not work: it was revoked by its owner, mistyped, or its model was deleted.",
                 icon=":material/link_off:")
        st.page_link("app.py", label="Open Fashion-MNIST Studio", icon=":material/home:")
        st.stop()
    st.title(":material/checkroom: What garment is this?")
    st.caption(f"A model shared from Fashion-MNIST Studio (*{plain(share['label'])}*). Upload photos of garments or "
               "take one to see what it predicts; this link lets you predict with this model only.")
    try_a_photo(share["source"], store.weights_stamp(share["source"]), key=f"share-{token}", introduce=False)
    st.divider()
    st.page_link("app.py", label="Train your own model in the studio", icon=":material/model_training:")
    st.stop()

"""Fashion-MNIST Studio: entry point and the Projects home page (page config and sidebar come from studio_ui.frame).

Run with `streamlit run app.py`. Pages live in pages/; the model logic lives in fmnist_jax.
"""
from __future__ import annotations

import streamlit as st

import studio_ui as ui
from fmnist_jax import settings, store
from fmnist_jax.data.uploads import limits as upload_limits
from fmnist_jax.studio import archive
from fmnist_jax.studio import projects as proj
from fmnist_jax.studio import public, tasks

HOW_IT_WORKS = [
    (":material/dataset:", "Data", "Split Fashion-MNIST's 70,000 garment images into train, validation and test; "
                                    "look at samples and try augmentation."),
    (":material/account_tree:", "Model", "Start from a preset CNN or stack layers yourself; see shapes, parameters "
                                          "and the network diagram as you edit."),
    (":material/tune:", "Hyperparameters", "Epochs, batch size, optimizer, learning-rate schedule and regularisation "
                                            "in one form, with a time estimate."),
    (":material/model_training:", "Training", "Train in the background with live curves; switch pages or refresh, "
                                              "the run keeps going."),
    (":material/query_stats:", "Evaluation", "Test accuracy, confusion matrix, per-class scores and the images the "
                                             "model got wrong."),
    (":material/rocket_launch:", "Deploy", "Upload your own photos and see what the model sees and predicts; share "
                                           "a link."),
]


def _create_sample() -> None:
    try:
        project = proj.create_sample_project(ui.workspace())
    except (ValueError, store.StoreError) as error:
        st.session_state["home-error"] = f"Could not create the sample project: {ui.plain(error)}"
        return
    ui.open_project(project["id"])
    st.session_state["home-notice"] = f"Created **{project['name']}**. Next: look at the data, or go straight to Training."


def _public_notice() -> None:
    """Where a visitor's work lives on a public Space, the address that brings them back to it, and the limits."""
    caps = public.limits()
    first, *others = ui.own_links()
    with st.container(border=True):
        st.markdown(":material/public: **This is a public demo.** Your projects live in a private workspace that "
                    "this address opens; keep it to come back, and keep it to yourself: anyone with it opens your "
                    "whole workspace.")
        st.code(first["url"], language=None, wrap_lines=True)
        for link in others:
            st.caption(f"{link['label']}: `{link['url']}`")
        if settings.storage_is_ephemeral():
            st.warning(f"This Space keeps no files over a restart, and idle workspaces are deleted after "
                       f"{caps.idle_hours:g} hours: to keep a project, download it (Export on its card).",
                       icon=":material/cloud_off:")
        st.caption("Limits here: " + "; ".join(caps.describe()) + ".")


def _how_it_works() -> None:
    # One row of columns per three steps: on a phone the columns stack, and the steps still read 1 to 6.
    for row in range(0, len(HOW_IT_WORKS), 3):
        columns = st.columns(3)
        for i, (icon, title, text) in enumerate(HOW_IT_WORKS[row:row + 3], start=row):
            with columns[i - row].container(border=True, height="stretch"):
                st.markdown(f"{icon} **{i + 1} · {title}**")
                st.caption(text)


def _new_project_form() -> None:
    # Cleared after a project is made, not on every submit: a refused name (a duplicate) stays there to correct.
    if st.session_state.pop("new-project-made", False):
        for key in ("new-project-name", "new-project-description"):
            st.session_state.pop(key, None)
    with st.form("new-project", border=False):
        name = st.text_input("Project name", max_chars=store.MAX_NAME_LENGTH, placeholder="e.g. Sneakers vs sandals",
                             help="Up to 80 characters; must be unique in this workspace.", key="new-project-name")
        description = st.text_area("Description (optional)", max_chars=2000, height=80, key="new-project-description",
                                   help="What you want to try in this project.")
        if st.form_submit_button("Create project", type="primary", icon=":material/add:"):
            try:
                project = ui.workspace().create_project(name, description,
                                                        data_dir=proj.data_folder({}), model_preset="fast")
            except (ValueError, store.StoreError) as error:
                st.error(ui.plain(error), icon=":material/error:")
            else:
                ui.open_project(project["id"])
                st.session_state["home-notice"] = f"Created **{project['name']}**. Continue with Data."
                st.session_state["new-project-made"] = True
                st.rerun()


def _import_project_form() -> None:
    upload = st.file_uploader("Import a project (.zip)", type=["zip"], key="import-project",
                              max_upload_size=upload_limits.browser_upload_mb(),
                              help="A project exported from a Fashion-MNIST Studio, with its runs.")
    if upload is not None and st.button("Import the project", icon=":material/unarchive:", key="import-project-go"):
        try:
            proj.check_import_quota(ui.workspace(), upload.size)
            project = archive.import_project(ui.workspace(), upload.getvalue())
        except (ValueError, store.StoreError) as error:
            st.error(f"Could not import {ui.plain(upload.name)}: {ui.plain(error)}", icon=":material/error:")
        else:
            runs = len(ui.workspace().list_runs(project["id"]))
            st.session_state["home-notice"] = f"Imported **{project['name']}** with {runs} run(s)."
            st.rerun()


def _project_card(project: dict, is_open: bool) -> None:
    ws = ui.workspace()
    summary = proj.project_summary(ws, project)
    pid = project["id"]
    with st.container(border=True):
        top = st.columns([5, 2])
        badge = " :green-badge[open]" if is_open else ""
        top[0].markdown(f"#### {project['name']}{badge}")
        if project.get("description"):
            top[0].caption(project["description"])
        if not is_open:
            if top[1].button("Open", key=f"open-{pid}", icon=":material/folder_open:", width="stretch"):
                ui.open_project(pid)
                st.rerun()
        else:
            with top[1]:
                ui.link("data", "Continue")
        figures = st.columns(4)
        figures[0].metric("Runs", summary["runs"])
        figures[1].metric("Best val. acc.", summary["best_val_accuracy"])
        figures[2].metric("Best test acc.", summary["best_test_accuracy"])
        figures[3].metric("Model", summary["model"])
        st.caption(f"Last run: {summary['last_run']} · data: {summary['dataset']} · updated {summary['updated']}")
        with st.expander("Rename, duplicate, export or delete"):
            _manage_project(project)
            data_mb = archive.dataset_bytes(ws, pid) / 2**20
            with_data = data_mb > 0 and st.checkbox(f"With its uploaded dataset ({data_mb:,.1f} MB)", value=True,
                                                    key=f"export-data-{pid}",
                                                    help="Without it, the zip imports only where that dataset "
                                                         "has been uploaded too.")
            st.download_button("Export the project (.zip)",
                               data=lambda: archive.export_project(ws, pid, include_dataset=with_data),
                               file_name=f"{pid}.zip", mime="application/zip", icon=":material/archive:",
                               key=f"export-{pid}", help="Its settings, its uploaded dataset and all its runs "
                                                         "(weights, checkpoints, histories) in one file; import it "
                                                         "on another studio.")


def _manage_project(project: dict) -> None:
    ws = ui.workspace()
    pid = project["id"]
    left, middle, right = st.columns(3)
    with left:
        new_name = st.text_input("New name", value=project["name"], key=f"rename-{pid}", max_chars=store.MAX_NAME_LENGTH)
        if st.button("Rename", key=f"do-rename-{pid}", icon=":material/edit:"):
            try:
                ws.update_project(pid, name=new_name)
            except (ValueError, store.StoreError) as error:
                st.error(ui.plain(error), icon=":material/error:")
            else:
                st.rerun()
    with middle:
        copy_name = st.text_input("Copy's name", value=f"{project['name']} (copy)"[:store.MAX_NAME_LENGTH],
                                  key=f"dup-{pid}", max_chars=store.MAX_NAME_LENGTH,
                                  help="Copies the data, model and hyperparameter settings, not the runs.")
        if st.button("Duplicate", key=f"do-dup-{pid}", icon=":material/content_copy:"):
            try:
                copy = ws.duplicate_project(pid, copy_name)
            except (ValueError, store.StoreError) as error:
                st.error(ui.plain(error), icon=":material/error:")
            else:
                st.session_state["home-notice"] = f"Created **{copy['name']}**."
                st.rerun()
    with right:
        st.write("")
        if st.session_state.get("confirm-delete") == pid:
            st.warning(f"Delete **{project['name']}** and all {project.get('runs', 0)} of its runs? This cannot be undone.",
                       icon=":material/warning:")
            yes, no = st.columns(2)
            if yes.button("Yes, delete", key=f"yes-delete-{pid}", type="primary"):
                active = ui.registry().for_project(pid, ui.owner())
                if active and active["status"] in tasks.ACTIVE:
                    st.error("Stop this project's training first.", icon=":material/error:")
                else:
                    try:
                        ws.delete_project(pid)
                    except (ValueError, store.StoreError) as error:
                        st.error(ui.plain(error), icon=":material/error:")
                    else:
                        st.session_state.pop("confirm-delete", None)
                        if st.session_state.get("project_id") == pid:
                            ui.open_project(None)
                        st.session_state["home-notice"] = f"Deleted **{project['name']}**."
                        st.rerun()
            if no.button("Cancel", key=f"no-delete-{pid}"):
                st.session_state.pop("confirm-delete", None)
                st.rerun()
        elif st.button("Delete…", key=f"delete-{pid}", icon=":material/delete:"):
            st.session_state["confirm-delete"] = pid
            st.rerun()


def home() -> None:
    """The Projects page: first-visit guide with a one-click sample, create, list, open, rename, duplicate, delete."""
    ws = ui.workspace()
    ui.try_a_photo()
    st.divider()
    ui.page_title(None, "Fashion-MNIST Studio",
                  "Build, train and deploy an image classifier for clothes, step by step, in your browser. "
                  "Runs on JAX; everything is saved in your workspace as you go.")
    if notice := st.session_state.pop("home-notice", None):
        st.success(notice, icon=":material/check_circle:")
    if error := st.session_state.pop("home-error", None):
        st.error(error, icon=":material/error:")
    if settings.public_mode():
        _public_notice()
    projects = ws.list_projects()
    if not projects:
        left, right = st.columns([1, 1], gap="large")
        with left:
            st.markdown("##### Train your own in one click")
            st.caption("A sample project with sensible defaults: Fashion-MNIST with the official test set, "
                       "a fast CNN and its recommended training recipe: 93% test accuracy in about 5 minutes, as measured "
                       "on a 2-core CPU.")
            st.button("Create the sample project", type="primary", icon=":material/auto_awesome:",
                      on_click=_create_sample, key="create-sample")
        with right:
            st.markdown("##### Or start from scratch")
            _new_project_form()
        st.subheader("How it works")
        _how_it_works()
        return

    open_id = st.session_state.get("project_id")
    head, action = st.columns([3, 1], vertical_alignment="bottom")
    head.subheader(f"Projects ({len(projects)})")
    with action.popover("New project", icon=":material/add:", width="stretch"):
        _new_project_form()
        st.divider()
        _import_project_form()
        st.divider()
        st.button("Create the sample project", icon=":material/auto_awesome:", on_click=_create_sample,
                  key="create-sample-2")
    for project in projects:
        _project_card(project, project["id"] == open_id)
    with st.expander("How it works", icon=":material/help:"):
        _how_it_works()
    if not settings.public_mode():
        st.caption(f"Workspace: `{ws.home}` (set FMNIST_HOME to move it)")


if __name__ == "__main__":  # Streamlit runs this file as the home page's script
    if (token := st.query_params.get("share")) is not None:
        ui.shared_model_page(token)  # a predict-only link: nothing of the studio or the workspace behind it
    ui.open_page_from_query()  # ?page=deploy: the way a Space page's address names a page
    ui.frame()
    home()
else:
    # `streamlit run app.py` first imports this file, finds `app` and serves it: the studio's pages (this file
    # and pages/) plus the REST API under /api, on one port (what a Space exposes).
    from starlette.routing import Mount

    from fmnist_jax.studio.api import create_api

    from fmnist_jax.deploy import predict

    app = st.App("app.py", routes=[Mount("/api", app=create_api())])
    predict.warm_demo_in_background()  # the first visitor's photo finds the demo model loaded and compiled

"""The studio as a Hugging Face Space, without a browser: where the workspace lives, the disk cap, the links a
visitor can use from the Space page, the address message to the embedding page, ?page= links, the first page's
notices, interrupted runs, and the Dockerfile's choices."""
from __future__ import annotations

import json
import re
import shlex
from collections import namedtuple
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fmnist_jax import settings, store
from fmnist_jax.studio import public, space, tasks

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")


@pytest.fixture
def on_a_space(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """SPACE_ID and SPACE_HOST set as a Space sets them; /data is a folder of this test's (absent until made)."""
    monkeypatch.setenv("SPACE_ID", "owner/studio")
    monkeypatch.setenv("SPACE_HOST", "owner-studio.hf.space")
    monkeypatch.setattr(settings, "SPACE_STORAGE", tmp_path / "data")
    return tmp_path / "data"


def test_the_workspace_folder_is_fmnist_home_then_persistent_storage_then_the_home_folder(
        on_a_space: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMNIST_HOME", "/somewhere/else")
    assert settings.default_home() == Path("/somewhere/else")
    monkeypatch.delenv("FMNIST_HOME")
    assert settings.default_home() == settings.DEFAULT_HOME  # a Space without persistent storage
    assert settings.storage_is_ephemeral()
    on_a_space.mkdir()
    assert settings.default_home() == on_a_space / "fmnist-home"
    assert not settings.storage_is_ephemeral()
    assert settings.home_dir().is_dir() and settings.home_dir() == on_a_space / "fmnist-home"
    monkeypatch.delenv("SPACE_ID")
    assert settings.default_home() == settings.DEFAULT_HOME  # storage at /data means nothing off a Space
    assert not settings.storage_is_ephemeral()


def test_a_read_only_data_folder_is_not_taken_for_persistent_storage(on_a_space: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMNIST_HOME", raising=False)
    on_a_space.mkdir()
    on_a_space.chmod(0o500)
    try:
        monkeypatch.setattr(settings.os, "access", lambda path, mode: False)  # root writes anywhere; a Space user does not
        assert settings.space_storage() is None and settings.storage_is_ephemeral()
    finally:
        on_a_space.chmod(0o700)


def test_without_a_fixed_cap_the_public_disk_cap_is_the_free_space(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    usage = namedtuple("usage", "total used free")
    mine = public.workspace_home(public.new_workspace_id(), tmp_path)
    mine.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(public.shutil, "disk_usage", lambda path: usage(100 * 2**30, 90 * 2**30, 10 * 2**30))
    caps = public.PublicLimits()
    assert caps.disk_gb is None
    public.check_disk(mine, 7 * 2**30 // 1024, caps, tmp_path)  # well inside 10 GB free less the 5 GB reserve
    with pytest.raises(ValueError, match=r"this Space's disk is full \(10.0 GB free, 5.0 GB of it kept for the server\)"):
        public.check_disk(mine, 6 * 2**30, public.PublicLimits(workspace_mb=10**6), tmp_path)


def test_links_name_the_space_page_first_then_the_app_itself(on_a_space: Path) -> None:
    params = {"w": "abc", "project": "shoes", "embed": "true"}
    first, direct = space.links("http://10.1.2.3:8501", params, "deploy", "Deploy")
    assert first["url"] == "https://huggingface.co/spaces/owner/studio?w=abc&project=shoes&page=deploy"
    assert direct["url"] == "https://owner-studio.hf.space/Deploy?w=abc&project=shoes"
    assert space.query_string({"embed": "true", "__theme": "dark"}) == ""


def test_off_a_space_the_only_link_is_the_app_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert space.links("http://localhost:8501", {"project": "p"}, "training", "Training") == [
        {"label": "The app on its own", "url": "http://localhost:8501/Training?project=p"}]


def test_the_address_message_goes_only_to_the_configured_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(space.PARENT_ORIGIN_VARIABLE, raising=False)
    html = space.parent_message({"w": "abc", "project": "p"}, "model")
    assert 'window.parent.postMessage({"queryString": "?w=abc&project=p&page=model"}, "https://huggingface.co")' in html
    assert "if (window.parent !== window)" in html
    monkeypatch.setenv(space.PARENT_ORIGIN_VARIABLE, "http://127.0.0.1:9999")
    assert '"http://127.0.0.1:9999")' in space.parent_message({}, None)
    assert json.dumps({"queryString": ""}) in space.parent_message({}, None)


def _home(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def test_the_space_banner_gives_the_space_page_link_and_says_storage_is_temporary(
        on_a_space: Path, monkeypatch: pytest.MonkeyPatch, workspace: Path) -> None:
    at = _home()
    assert not at.exception
    codes = [c.value for c in at.code]
    workspace_id = at.query_params["w"][0] if isinstance(at.query_params["w"], list) else at.query_params["w"]
    assert f"https://huggingface.co/spaces/owner/studio?w={workspace_id}" in codes
    assert any(f"https://owner-studio.hf.space/?w={workspace_id}" in c.value for c in at.caption)
    assert any("keep it to yourself" in m.value for m in at.markdown)
    assert "keeps no files over a restart" in " ".join(w.value for w in at.warning)
    assert "Bookmark this URL" not in " ".join(m.value for m in at.markdown)


def test_with_persistent_storage_the_banner_says_nothing_about_losing_files(
        on_a_space: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMNIST_HOME")
    on_a_space.mkdir()
    at = _home()
    assert not at.exception
    assert "keeps no files" not in " ".join(w.value for w in at.warning)
    assert (on_a_space / "fmnist-home" / "visitors").is_dir()  # the visitor's workspace is on the storage


def test_a_page_named_in_the_query_opens_that_page_with_the_rest_of_the_query(workspace: Path) -> None:
    project = store.Workspace().create_project("Linked", dataset="synthetic")
    at = _home({"page": "deploy", "project": project["id"]})
    assert not at.exception
    assert at.title[0].value == "6 · Deploy"
    assert at.query_params.get("project") in (project["id"], [project["id"]])
    assert "page" not in at.query_params


def test_a_run_left_running_by_a_dead_server_is_interrupted_and_resumable(workspace: Path) -> None:
    ws = store.Workspace()
    project = ws.create_project("Cut off", dataset="synthetic")
    run_dir = ws.runs_dir(project["id"]) / "run-1"
    run_dir.mkdir(parents=True)
    store.atomic_write_json(run_dir / "run.json", {"name": "run-1", "status": "running", "epochs_done": 2})
    rows = tasks.runs_table(ws, project["id"])
    assert [r["status"] for r in rows] == ["interrupted"] and "interrupted" in tasks.RESUMABLE


def test_the_space_image_turns_xsrf_off_says_why_and_pins_no_workspace() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE).group(1))
    assert cmd[:3] == ["streamlit", "run", "app.py"]
    assert cmd[cmd.index("--server.enableXsrfProtection") + 1] == "false"
    assert "cross-site iframe" in dockerfile and "What it gives up" in dockerfile
    assert "FMNIST_HOME" not in shlex.split(" ".join(line for line in dockerfile.splitlines()
                                                     if not line.lstrip().startswith("#")))
    config = (REPO / ".streamlit" / "config.toml").read_text()
    assert "enableXsrfProtection" not in config  # kept on (Streamlit's default) outside the image

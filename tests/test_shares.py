"""Read-only share links: a token predicts with one model; it cannot reach other workspaces' data or shares."""
from __future__ import annotations

from pathlib import Path

import pytest

from fmnist_jax import store
from fmnist_jax.studio import shares


@pytest.fixture
def owner(tmp_path: Path) -> tuple[store.Workspace, dict]:
    ws = store.Workspace(tmp_path / "owner")
    project = ws.create_project("Mine")
    run = ws.new_run_dir(project["id"], "good")
    (run / "model.msgpack").write_bytes(b"weights")
    return ws, project


def test_a_share_resolves_to_its_model_until_revoked(owner, tmp_path: Path) -> None:
    ws, project = owner
    home = tmp_path / "server"
    share = shares.create_share(ws, project["id"], "good", "My model", home=home)
    assert shares.TOKEN.fullmatch(share["token"])
    found = shares.resolve_share(share["token"], home=home)
    assert found["source"] == str(ws.runs_dir(project["id"]) / "good") and found["label"] == "My model"
    assert [s["token"] for s in shares.list_shares(ws, project["id"], home=home)] == [share["token"]]
    stranger = store.Workspace(tmp_path / "stranger")
    assert shares.list_shares(stranger, home=home) == []
    with pytest.raises(ValueError, match="not one of yours"):
        shares.revoke_share(stranger, share["token"], home=home)
    shares.revoke_share(ws, share["token"], home=home)
    assert shares.resolve_share(share["token"], home=home) is None


def test_bad_tokens_deleted_models_and_missing_weights(owner, tmp_path: Path) -> None:
    ws, project = owner
    home = tmp_path / "server"
    for token in (None, "", "../../etc/passwd", "a" * 21, "x" * 23, "short"):
        assert shares.resolve_share(token, home=home) is None
    share = shares.create_share(ws, project["id"], "good", "gone soon", home=home)
    ws.delete_run(project["id"], "good")
    assert shares.resolve_share(share["token"], home=home) is None  # its model was deleted
    with pytest.raises(ValueError, match="no trained weights"):
        shares.create_share(ws, project["id"], "good", "again", home=home)
    assert shares.resolve_share(shares.create_share(ws, project["id"], "demo", "Demo", home=home)["token"],
                                home=home)["source"] == "demo"


def test_share_urls_point_at_the_home_page_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from fmnist_jax.studio import space

    token = "A" * 22
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert space.links("http://localhost:8501", {"share": token}) == [
        {"label": "The app on its own", "url": f"http://localhost:8501/?share={token}"}]
    monkeypatch.setenv("SPACE_ID", "owner/studio")
    monkeypatch.setenv("SPACE_HOST", "owner-studio.hf.space")
    assert [link["url"] for link in space.links("http://10.0.0.1:8501", {"share": token})] == [
        f"https://huggingface.co/spaces/owner/studio?share={token}", f"https://owner-studio.hf.space/?share={token}"]

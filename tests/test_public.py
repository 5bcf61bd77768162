"""Public mode: private per-visitor workspaces, job caps, the epochs x data cap, idle clean-up, upload cap."""
from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

from fmnist_jax import settings, store
from fmnist_jax.data.uploads import limits
from fmnist_jax.studio import public
from fmnist_jax.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_public_mode_is_detected_from_the_space_or_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMNIST_PUBLIC", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert not settings.public_mode()
    monkeypatch.setenv("SPACE_ID", "someone/fashion-mnist-studio")
    assert settings.public_mode()
    monkeypatch.setenv("FMNIST_PUBLIC", "0")  # an explicit setting wins
    assert not settings.public_mode()


def test_workspace_ids_are_random_url_safe_and_validated() -> None:
    ids = {public.new_workspace_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{21}", i) for i in ids)
    for bad in ("", "short", "../../etc/passwd", "a/b" * 8, "x" * 100, "abc\x00defghijklmnopq", "-starts-with-a-dash-xx",
                "has space in the middle", None, 12345678901234567890, ["list"]):
        assert not public.valid_workspace_id(bad), bad
        with pytest.raises(ValueError, match="invalid workspace id"):
            public.check_workspace_id(bad)


def test_each_visitor_sees_only_their_own_projects(workspace: Path) -> None:
    alice_id, alice_home = public.workspace_for(None)
    bob_id, bob_home = public.workspace_for(None)
    assert alice_id != bob_id and alice_home.parent == bob_home.parent == workspace / "visitors"
    store.Workspace(alice_home).create_project("alice's shirts")
    store.Workspace(bob_home).create_project("bob's shoes")
    assert [p["name"] for p in store.Workspace(alice_home).list_projects()] == ["alice's shirts"]
    assert [p["name"] for p in store.Workspace(bob_home).list_projects()] == ["bob's shoes"]
    assert public.workspace_for(alice_id) == (alice_id, alice_home)  # coming back with the URL's id
    hostile_id, hostile_home = public.workspace_for("../../projects")  # never a path: a fresh workspace instead
    assert hostile_id != "../../projects" and hostile_home.parent == workspace / "visitors"


def test_idle_workspaces_are_cleaned_up(workspace: Path) -> None:
    old_id, old_home = public.workspace_for(None)
    busy_id, busy_home = public.workspace_for(None)
    fresh_id, _ = public.workspace_for(None)
    store.Workspace(old_home).create_project("forgotten")
    long_ago = time.time() - 3 * 86400
    for home in (old_home, busy_home):
        os.utime(home / public.MARKER, (long_ago, long_ago))
    stray = workspace / "visitors" / "not-a-workspace"
    stray.mkdir()
    removed = public.cleanup_idle(idle_seconds=86400, keep={busy_id})  # busy: a job of theirs is still running
    assert removed == [old_id]
    remaining = sorted(p.name for p in (workspace / "visitors").iterdir())
    assert remaining == sorted([busy_id, fresh_id, "not-a-workspace"])
    assert public.cleanup_idle(idle_seconds=86400, keep={busy_id}) == []


FAST = [{"type": "conv2d", "filters": 8, "kernel": 3}, {"type": "flatten"}, {"type": "dense", "units": 10}]
HUGE_DENSE = [{"type": "conv2d", "filters": 4096, "kernel": 3, "padding": "same"}, {"type": "flatten"},
              {"type": "dense", "units": 65536}, {"type": "dense", "units": 10}]
HEAVY_CONV = [{"type": "conv2d", "filters": 1024, "kernel": 7, "padding": "same"},
              {"type": "conv2d", "filters": 1024, "kernel": 7, "padding": "same"},
              {"type": "globalavgpool"}, {"type": "dense", "units": 10}]


def _figures(spec: list, batch: int = 128, epochs: int = 10, images: int = 54_000) -> dict:
    return public.job_figures(spec, (28, 28, 1), 10, batch, epochs, images)


def test_job_caps_name_the_limit_and_the_figure_and_say_how_to_run_locally() -> None:
    caps = public.PublicLimits()
    public.check_job(_figures(FAST), caps)
    with pytest.raises(ValueError, match=r"^this model has 210 billion parameters; this Space allows 5 million\."):
        public.check_job(_figures(HUGE_DENSE), caps)
    heavy = _figures(HEAVY_CONV, epochs=50)
    with pytest.raises(ValueError, match=r"^this model has 51 million parameters"):
        public.check_job(heavy, caps)
    roomy = public.PublicLimits(max_params=10**9)  # past the parameter cap, the memory and compute caps still hold
    with pytest.raises(ValueError, match=r"needs about [\d,]+ MiB; this Space allows 2,048 MiB per job"):
        public.check_job(heavy, roomy)
    with pytest.raises(ValueError, match=r"would compute [\d,]+ TFLOP .* allows 300 per job"):
        public.check_job(_figures(HEAVY_CONV, batch=1, epochs=50), roomy)
    with pytest.raises(ValueError, match=r"1,200,000 images .* allows 600,000 per job.*python -m fmnist_jax train"):
        public.check_job(_figures(FAST, epochs=20, images=60_000), caps)
    lines = public.usage_lines(_figures(FAST), caps)
    assert lines[0].startswith("parameters ") and lines[0].endswith(" of 5 million") and len(lines) == 4
    # an ensemble is N networks: N times the parameters, memory and compute of one, the images once
    one, four = _figures(FAST), public.job_figures(FAST, (28, 28, 1), 10, 128, 10, 54_000, members=4)
    assert four["params"] == 4 * one["params"] and four["memory_mb"] == pytest.approx(4 * one["memory_mb"])
    assert four["job_tflop"] == pytest.approx(4 * one["job_tflop"]) and four["epoch_images"] == one["epoch_images"]
    heavy_one = _figures(HEAVY_CONV, batch=1, epochs=10)
    only_compute = public.PublicLimits(max_params=10**10, max_memory_mb=10**7, max_job_tflop=2 * heavy_one["job_tflop"])
    public.check_job(heavy_one, only_compute)  # one of them fits, eight do not
    with pytest.raises(ValueError, match=r"would compute [\d,]+ TFLOP.*smaller model or fewer ensemble members"):
        public.check_job(public.job_figures(HEAVY_CONV, (28, 28, 1), 10, 1, 10, 54_000, members=8), only_compute)
    with pytest.raises(ValueError, match=r"^this ensemble of 8 models has .* layers or fewer ensemble members"):
        public.check_job(public.job_figures(HEAVY_CONV, (28, 28, 1), 10, 1, 10, 54_000, members=8), caps)


def test_every_presets_recommended_recipe_fits_the_public_caps() -> None:
    from fmnist_jax.model import presets
    for name, preset in presets.PRESETS.items():
        cfg = TrainConfig.from_dict(preset.train_defaults) if preset.train_defaults else TrainConfig()
        public.check_job(public.job_figures(presets.preset(name, 10), (28, 28, 1), 10, cfg.batch_size, cfg.epochs, 54_000,
                                            cfg.ensemble))


def test_a_job_past_its_time_limit_is_stopped_with_its_checkpoint_kept(tmp_path: Path) -> None:
    from fmnist_jax.data import catalogue, splitting
    from fmnist_jax.studio.jobs import JobRegistry
    splits = splitting.make_splits(catalogue.synthetic_dataset(num_train=300, num_test=100))
    registry = JobRegistry(max_running=1, max_seconds=3.0)
    job = registry.submit("p", tmp_path / "run", lambda: (FAST, TrainConfig(epochs=10_000, batch_size=16), splits))
    final = registry.wait(job["id"], timeout=120)
    assert final["status"] == "stopped" and final["time_limited"]
    assert store.read_json(tmp_path / "run" / "run.json")["status"] == "stopped"
    assert store.load_latest_checkpoint(tmp_path / "run")[1]["epoch"] >= 0  # resumable


def test_job_caps_per_visitor_and_in_total(tmp_path: Path) -> None:
    release = threading.Event()

    def blocked() -> tuple:
        release.wait(30)
        raise RuntimeError("released by the test")

    registry = public.make_job_registry(public.PublicLimits(max_jobs_per_visitor=1, max_jobs_total=2, max_running=1))
    first = registry.submit("p1", tmp_path / "a", blocked, owner="alice")
    with pytest.raises(ValueError, match="you already have 1 training job"):
        registry.submit("p2", tmp_path / "b", blocked, owner="alice")
    second = registry.submit("p1", tmp_path / "c", blocked, owner="bob")
    with pytest.raises(ValueError, match="the server is busy"):
        registry.submit("p1", tmp_path / "d", blocked, owner="carol")
    deadline = time.monotonic() + 10
    while [job["status"] for job in registry.queue()] != ["running", "queued"]:
        assert time.monotonic() < deadline, registry.queue()
        time.sleep(0.01)
    registry.stop(second["id"])
    release.set()
    assert registry.wait(first["id"], timeout=30)["error"] == "RuntimeError: released by the test"
    assert registry.queue() == []


def test_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMNIST_PUBLIC_UPLOAD_MB", "25")
    monkeypatch.setenv("FMNIST_PUBLIC_MAX_EPOCH_IMAGES", "1000")
    caps = public.limits()
    assert caps.upload_cap_mb == 25 and caps.max_epoch_images == 1000
    assert limits.limits_for_mode(public=True).max_archive_bytes == 25 * 2**20
    assert limits.limits_for_mode(public=False) == limits.LOCAL_LIMITS
    monkeypatch.setenv("FMNIST_PUBLIC_MAX_JOBS", "many")
    with pytest.raises(ValueError, match="FMNIST_PUBLIC_MAX_JOBS must be a whole number above 0, got 'many'"):
        public.limits()
    monkeypatch.setenv("FMNIST_PUBLIC_MAX_JOBS", "0")
    with pytest.raises(ValueError, match="must be a whole number above 0, got '0'"):
        public.limits()
    monkeypatch.setenv("FMNIST_PUBLIC_MAX_JOBS", "2.5")
    with pytest.raises(ValueError, match="must be a whole number above 0, got '2.5'"):
        public.limits()
    monkeypatch.setenv("FMNIST_PUBLIC_MAX_JOBS", "3")
    monkeypatch.setenv("FMNIST_PUBLIC_IDLE_HOURS", "0.5")
    assert (public.limits().max_jobs_total, public.limits().idle_hours) == (3, 0.5)
    assert all(line for line in public.PublicLimits().describe())


def test_public_caps_accept_a_default_training_job() -> None:
    # The Hyperparameters page's defaults on Fashion-MNIST's 54,000 training images must fit the public cap.
    public.check_job(_figures(FAST, TrainConfig().batch_size, TrainConfig().epochs, 54_000))


def test_nothing_loads_pickles_or_evaluates_text() -> None:
    forbidden = [r"\bimport pickle\b", r"\bpickle\.loads?\(", r"(?<![.\w])eval\(", r"(?<![.\w])exec\(",
                 r"allow_pickle\s*=\s*True", r"\byaml\.load\(", r"\btorch\.load\(", r"\bjoblib\.load\(", r"\bdill\.loads?\(",
                 r"\bmarshal\.loads?\(", r"__import__\("]
    offenders = []
    for path in sorted((REPO / "fmnist_jax").rglob("*.py")) + sorted((REPO / "pages").glob("*.py")) + [REPO / "app.py"]:
        if not path.exists():
            continue
        text = path.read_text()
        offenders += [f"{path.name}: {pattern}" for pattern in forbidden if re.search(pattern, text)]
    assert not offenders, offenders
    # every np.load names allow_pickle=False explicitly
    for path in sorted((REPO / "fmnist_jax").rglob("*.py")):
        for call in re.findall(r"np\.load\([^)]*\)", path.read_text()):
            assert "allow_pickle=False" in call, f"{path.name}: {call}"


def test_disk_quotas_per_workspace_and_in_total(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mine = public.workspace_home(public.new_workspace_id(), home)
    (mine / "runs").mkdir(parents=True, exist_ok=True)
    (mine / "runs" / "weights.msgpack").write_bytes(b"\0" * (3 * 2**20))
    caps = public.PublicLimits(workspace_mb=4, disk_gb=1)
    public.check_disk(mine, 2**19, caps, home)  # 3.5 MB of 4: fine
    with pytest.raises(ValueError, match=r"^your workspace uses 3 MB of its 4 MB and this needs about 2 MB more; "
                                         r"delete runs \(Training page\) or uploaded datasets \(Data page\) first$"):
        public.check_disk(mine, 2 * 2**20, caps, home)
    other = public.workspace_home(public.new_workspace_id(), home)
    other.mkdir(parents=True, exist_ok=True)
    (other / "big.bin").write_bytes(b"\0" * (6 * 2**20))
    with pytest.raises(ValueError, match=r"this Space's disk is full \(0.0 of 0.008 GB\)"):
        public.check_disk(mine, 0, public.PublicLimits(workspace_mb=100, disk_gb=0.008), home)
    assert public.run_bytes(1_000_000) > 40_000_000  # a run reserves room for its checkpoints before it starts


def test_a_cleaned_up_workspace_leaves_no_dataset_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fmnist_jax.data import catalogue
    from fmnist_jax.studio import projects as proj
    home = public.workspace_home(public.new_workspace_id(), tmp_path)
    catalogue.save_cached(catalogue.synthetic_dataset(num_train=50, num_test=10), home=home)
    loaded = catalogue.shared_dataset("synthetic", home=home)
    assert catalogue.shared_dataset("synthetic", home=home) is loaded  # shared while the workspace lives
    proj.release_workspace(home)
    assert not any(key[1] == str(home) for key in catalogue._SHARED)


def test_the_compilation_cache_has_a_size_limit(tmp_path: Path) -> None:
    import jax

    from fmnist_jax.training import program
    program.enable_compile_cache(tmp_path)
    assert jax.config.jax_compilation_cache_max_size == program.COMPILE_CACHE_MAX_BYTES == 512 * 2**20

"""A CPU split into one device per core (fmnist_jax.training.cpu_devices): the setting, which models take the
path, and that the sharded gradient is the single-device one."""
from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest
from conftest import REPO, run_script

from fmnist_jax.training import cpu_devices


def test_the_setting_reads_auto_numbers_and_refuses_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert cpu_devices.wanted_count("auto") == cpu_devices.MOST_AUTO_DEVICES == 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert cpu_devices.wanted_count("") == 2 and cpu_devices.wanted_count(" AUTO ") == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5}, raising=False)
    assert cpu_devices.wanted_count("auto") == 1
    assert cpu_devices.wanted_count("3") == 3 and cpu_devices.wanted_count("1") == 1
    monkeypatch.setenv(cpu_devices.SETTING, "6")
    assert cpu_devices.wanted_count() == 6
    for bad, words in (("two", "'auto' or a whole number"), ("0", "between 1 and 256"), ("-2", "between 1 and 256"),
                       ("2.5", "whole number")):
        with pytest.raises(ValueError, match=words):
            cpu_devices.wanted_count(bad)


def test_an_explicit_xla_flag_wins_over_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert cpu_devices.configure("2") is None


def test_wide_vectors_only_on_avx512_cpus_and_never_over_an_explicit_flag(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path) -> None:
    avx512, avx2 = tmp_path / "avx512", tmp_path / "avx2"
    avx512.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 avx512f avx512dq avx512bw\n")
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert cpu_devices.has_avx512(str(avx512)) and not cpu_devices.has_avx512(str(avx2))
    assert not cpu_devices.has_avx512(str(tmp_path / "missing"))
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_min_max=false")
    assert not cpu_devices.prefer_wide_vectors(str(avx2))
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_min_max=false"
    assert cpu_devices.prefer_wide_vectors(str(avx512))
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_min_max=false --xla_cpu_prefer_vector_width=512"
    assert not cpu_devices.prefer_wide_vectors(str(avx512))  # once only
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_prefer_vector_width=256")
    assert not cpu_devices.prefer_wide_vectors(str(avx512))
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_prefer_vector_width=256"


def test_a_bad_setting_warns_and_leaves_the_devices_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    with pytest.warns(UserWarning, match="FMNIST_CPU_DEVICES must be 'auto' or a whole number.*one CPU device"):
        assert cpu_devices.configure("lots") is None


SCRIPT = textwrap.dedent("""
    import json
    import jax
    from fmnist_jax.data import catalogue, splitting
    from fmnist_jax.training.config import TrainConfig
    from fmnist_jax.training.loop import train
    dataset = catalogue.synthetic_dataset(num_train=512, num_test=32, seed=0)
    splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.25, seed=0))
    dropout = [{"type": "conv2d", "filters": 8, "kernel": 3, "activation": "relu"}, {"type": "maxpool"},
               {"type": "dropout", "rate": 0.25}, {"type": "flatten"}, {"type": "dropout", "rate": 0.4},
               {"type": "dense", "units": 10}]
    batchnorm = [{"type": "conv2d", "filters": 8, "kernel": 3, "activation": "relu"}, {"type": "batchnorm"},
                 {"type": "flatten"}, {"type": "dense", "units": 10}]
    out = {"devices": len(jax.devices())}
    for name, spec, batch, mode in (("off", dropout, 64, "off"), ("auto", dropout, 64, "auto"),
                                    ("batchnorm", batchnorm, 64, "auto"), ("odd", dropout, 33, "auto")):
        records = list(train(spec, TrainConfig(epochs=2, batch_size=batch, chunk_steps=2, data_parallel=mode), splits))
        out[name] = {"data_parallel": records[0]["data_parallel"], "status": records[-1]["status"],
                     "losses": [r["loss"] for r in records if r["kind"] == "chunk"],
                     "val_loss": [r["val_loss"] for r in records if r["kind"] == "epoch"]}
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_two_cpu_devices_train_a_dropout_model_like_one_and_leave_batchnorm_and_odd_batches_on_one() -> None:
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    env.update({cpu_devices.SETTING: "2", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)})
    out = run_script(SCRIPT, env)
    assert out["devices"] == 2
    # batch 64 on two devices: 32 rows each, in two 16-image pieces, with the whole batch's dropout masks
    assert out["off"]["data_parallel"] is False and out["auto"]["data_parallel"] is True
    assert len(out["auto"]["losses"]) == len(out["off"]["losses"]) == 6
    np.testing.assert_allclose(out["auto"]["losses"], out["off"]["losses"], rtol=1e-5)
    np.testing.assert_allclose(out["auto"]["val_loss"], out["off"]["val_loss"], rtol=1e-5)
    assert out["batchnorm"]["data_parallel"] is False and out["batchnorm"]["status"] == "completed"
    assert out["odd"]["data_parallel"] is False and out["odd"]["status"] == "completed"

"""Helpers shared by the benchmarks: repository import path, data, timing statistics, tables, JSON."""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def load_average() -> float | None:
    """The 1-minute load average (other processes share this CPU; every table reports it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def median(values: Sequence[float]) -> float | None:
    """Median of the finite values, or None when there are none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else None


def fashion_splits(quick: bool, seed: int = 0, val_fraction: float = 0.1) -> Any:
    """Official Fashion-MNIST split, or (quick mode) a small synthetic one that needs no data files."""
    from fmnist_jax.data import catalogue, splitting

    if quick:
        dataset = catalogue.synthetic_dataset(num_train=1024, num_test=256, seed=seed)
    else:
        dataset = catalogue.load_dataset("fashion_mnist")
    return splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=val_fraction, seed=seed))


def predict_proba_rate(model: Any, images: Any, repeats: int) -> tuple[float, list[float], Any]:
    """(images/s, seconds per pass, last probabilities) of model.predict_proba over all `images` in
    batches of 1,000 (the evaluation path), median of `repeats` passes after a warm-up call."""
    model.predict_proba(images[:1000])
    seconds, probs = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        probs = model.predict_proba(images, batch=1000)
        seconds.append(time.perf_counter() - start)
    return len(images) / median(seconds), seconds, probs


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain fixed-width table on stdout."""
    text = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for row in text:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def emit_json(result: dict) -> None:
    """The benchmark's result as one JSON object on the last stdout line (NaN becomes null)."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value
    print(json.dumps(clean(result)), flush=True)


def dockerfile_start(dockerfile: Path = REPO / "Dockerfile") -> tuple[dict, list[str]]:
    """The Dockerfile's ENV (continuation lines joined, $VARIABLES expanded in order) and its CMD: how the Space
    starts the app, read from the file so a benchmark or test that starts it the same way cannot drift from it."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    env: dict[str, str] = {}
    for line in joined.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, value = pair.split("=", 1)
                env[key] = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), os.environ.get(m.group(1), "")), value)
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", joined, re.MULTILINE).group(1))
    return env, cmd


def with_option(cmd: Sequence[str], name: str, value: str) -> list[str]:
    """`cmd` with the value after `name` replaced (the port or address of the Dockerfile's CMD)."""
    changed = list(cmd)
    changed[changed.index(name) + 1] = value
    return changed

"""The README is a quickstart that stays true: its two set-up commands are the ones CI runs, every file it names
exists, its Performance table is one short line per figure, and its command-line examples run as written."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, real_data_dir, requires_real_data

README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    """The text of one '## ' section of the README."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.MULTILINE | re.DOTALL)
    assert match, f"the README has no section {title!r}"
    return match.group(1)


def _commands(text: str) -> list[str]:
    """The command lines of the ```bash blocks in `text` (a trailing '# comment' removed)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_readme_is_short_and_starts_with_what_it_is() -> None:
    assert len(README) < 12_000
    assert README.startswith("---\ntitle: Fashion-MNIST Studio")  # the Space's YAML header
    assert "sdk: docker" in README and "app_port: 8501" in README
    assert re.search(r"!\[[^\]]+\]\(docs/screenshot\.png\)", README)
    assert (REPO / "docs" / "screenshot.png").stat().st_size > 10_000


def test_the_quickstart_has_exactly_the_two_commands_ci_runs() -> None:
    install_and_run, tests = _commands(_section("Quickstart"))
    assert install_and_run.endswith("streamlit run app.py")
    assert "pip install -r requirements.txt -c constraints.txt" in install_and_run
    assert "pip install -r requirements-dev.txt -c constraints.txt" in tests
    assert tests.endswith("python -m pytest")
    ci = (REPO / ".ci" / "run").read_text()
    assert "python -m pip install -q -r requirements-dev.txt -c constraints.txt" in ci
    assert re.search(r"^python -m pytest$", ci, re.MULTILINE)  # the README's test command, as it is written
    assert 'FMNIST_DATA_DIR="$(cd .. && pwd)/shared/data/fashion-mnist"' in ci


def test_the_test_tiers_say_how_long_they_take() -> None:
    tests = _section("Tests")
    assert '`python -m pytest -m "not slow"`' in tests and "`python -m pytest`" in tests
    assert len(re.findall(r"~\d+ min", tests)) == 2


def test_the_performance_table_is_short_lines_of_todays_figures() -> None:
    rows = [line for line in _section("Performance").splitlines() if line.startswith("| ") and "---" not in line]
    header, *figures = rows
    assert header == "| what | figure | CPU | date | command |"
    assert 1 <= len(figures) <= 15
    for row in figures:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 5, row
        assert all(len(cell) <= 130 for cell in cells), row
        assert re.fullmatch(r"20\d\d-\d\d-\d\d", cells[3]), row
        assert re.search(r"(AMD EPYC|Intel Xeon)", cells[2]), row
        assert cells[4].startswith("`python "), row
        script = cells[4].strip("`").split()[1]
        assert script == "-m" or (REPO / script).is_file(), row
    assert "attempt" not in _section("Performance")  # the history lives in bench/NOTES.md


def test_every_file_and_link_the_readme_names_exists() -> None:
    links = re.findall(r"\]\(((?:docs|bench)/[^)#]+)", README)
    paths = re.findall(r"`((?:samples|bench|docs|models)/[\w./-]+)`", README)
    assert links and paths
    for name in links + paths:
        assert (REPO / name).exists(), name
    for line in _commands(README):
        for word in shlex.split(line):
            if word.startswith(("samples/", "bench/", "models/")):
                assert (REPO / word).exists(), word


def _run(line: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    words = shlex.split(line)
    assert words[0] == "python", line
    return subprocess.run([sys.executable, *words[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture
def readme_dir(tmp_path: Path) -> tuple[Path, dict]:
    """A folder laid out as the repository root (samples/ inside, ../shared/data beside it), its own workspace."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "samples").symlink_to(REPO / "samples", target_is_directory=True)
    if real_data_dir() is not None:
        (tmp_path / "shared" / "data").mkdir(parents=True)
        (tmp_path / "shared" / "data" / "fashion-mnist").symlink_to(real_data_dir(), target_is_directory=True)
    env = {**os.environ, "FMNIST_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    return root, env


def test_every_offline_command_line_example_runs_as_written(readme_dir: tuple[Path, dict]) -> None:
    cwd, env = readme_dir
    examples = _commands(_section("Command line").split("With the Fashion-MNIST files")[0])
    assert len(examples) >= 6
    for line in examples:
        result = _run(line, cwd, env)
        assert result.returncode == 0, f"{line}: {result.stderr[-1500:]}"
        if "--json" in line:
            json.loads(result.stdout.strip().splitlines()[-1])
    assert (cwd / "demo.onnx").stat().st_size > 100_000 and (cwd / "runs" / "first" / "run.json").is_file()
    assert list((cwd / "maps").glob("*.png"))


@requires_real_data
def test_the_real_data_training_example_runs_as_written(readme_dir: tuple[Path, dict]) -> None:
    cwd, env = readme_dir
    train = next(line for line in _commands(_section("Command line")) if "--data-dir" in line)
    result = _run(train, cwd, env)
    assert result.returncode == 0, result.stderr[-1500:]
    assert "test accuracy" in result.stdout

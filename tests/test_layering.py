"""Imports go one way: the UI (app.py, studio_ui.py, pages/) never imports jax/flax/optax, and the library
(fmnist_jax/) never imports streamlit. Checked on the syntax tree, so comments and strings do not count."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UI_FILES = sorted([REPO / "app.py", REPO / "studio_ui.py", REPO / "studio_labels.py", REPO / "studio_exports.py", REPO / "studio_map.py", *(REPO / "pages").glob("*.py")])
LIBRARY_FILES = sorted((REPO / "fmnist_jax").rglob("*.py"))
ML_PACKAGES = {"jax", "jaxlib", "flax", "optax"}


def imported_packages(path: Path) -> set[str]:
    """Top-level package names a file imports (import x.y, from x import y, importlib/__import__ of a literal)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                names.add(node.args[0].value.split(".")[0])
    return names


def test_the_ui_files_exist() -> None:
    assert (REPO / "app.py").is_file()
    assert len([p for p in UI_FILES if p.parent.name == "pages"]) == 6


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_ui_never_imports_jax_flax_or_optax(path: Path) -> None:
    assert not imported_packages(path) & ML_PACKAGES, f"{path.name} imports {imported_packages(path) & ML_PACKAGES}"


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_library_never_imports_streamlit(path: Path) -> None:
    assert "streamlit" not in imported_packages(path), f"{path.name} imports streamlit"


def test_the_checker_sees_every_import_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nimport jax.numpy as jnp\nfrom flax import nnx\nimport importlib\n"
                      "importlib.import_module('optax')\nx = 'import streamlit'  # a string, not an import\n")
    assert imported_packages(sample) == {"os", "jax", "flax", "importlib", "optax"}


# ----------------------------------------------------------------------------- the library's shape

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_FUNCTION_MARK = "# long:"  # a comment on the def line (or the line above) that says why a function must be longer
# Stages in pipeline order: a module may import its own stage and the ones to its left, never the ones to its right.
# data/uploads is a floor of its own above photos: uploaded images go through the photo pipeline's plain-resize mode.
STAGES = ["errors", "checks", "settings", "public_limits", "store", "data", "model", "training", "evaluate",
          "train_and_test", "photos", "uploads", "deploy", "studio", "cli"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """fmnist_jax modules a file imports, at module level or inside functions (the CLI defers heavy imports for its
    start-up time; deferred or not, an import must point down the floors)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("fmnist_jax"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if (REPO / Path(*candidate.split(".")).with_suffix(".py")).exists()
                          or (REPO / Path(*candidate.split("."))).is_dir() else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fmnist_jax"))
    return found


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[1:3] == ["data", "uploads"]:
        return "uploads"
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_imports_inside_functions_count_too(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def later():\n    from fmnist_jax.studio import public\n    import fmnist_jax.cli.main\n")
    assert project_imports(sample) == {"fmnist_jax.studio.public", "fmnist_jax.cli.main"}


def test_there_is_no_import_cycle() -> None:
    graph = {module_name(p): project_imports(p) for p in LIBRARY_FILES}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        for target in graph.get(node, ()):
            visit(target, path + [node])
        done.add(node)

    for module in graph:
        visit(module, [])


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_go_down_the_pipeline(path: Path) -> None:
    own = stage_of(module_name(path))
    if own is None:
        return
    upward = [m for m in project_imports(path) if stage_of(m) and STAGES.index(stage_of(m)) > STAGES.index(own)]
    assert not upward, f"{module_name(path)} ({own}) imports later stages: {upward}"


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    source = path.read_text()
    lines = source.splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{path.name} has {len(lines)} lines (limit {MAX_MODULE_LINES}): split it"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            explained = any(LONG_FUNCTION_MARK in lines[i] for i in (node.lineno - 2, node.lineno - 1) if i >= 0)
            assert length <= MAX_FUNCTION_LINES or explained, \
                f"{path.name}:{node.lineno} {node.name} has {length} lines (limit {MAX_FUNCTION_LINES})"


def test_tests_never_skip_the_projects_own_modules() -> None:
    for path in sorted((REPO / "tests").glob("*.py")):
        source = path.read_text()
        assert 'importorskip("' + 'fmnist_jax' not in source, f"{path.name} makes an import of the project optional"

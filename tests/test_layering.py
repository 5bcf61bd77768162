"""Imports go one way: the UI (app.py, studio_ui.py, pages/) never imports jax/flax/optax, and the library
(fmnist_jax/) never imports streamlit. Checked on the syntax tree, so comments and strings do not count."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UI_FILES = sorted([REPO / "app.py", REPO / "studio_ui.py", *(REPO / "pages").glob("*.py")])
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

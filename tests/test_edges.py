"""The design's dependency order, held by reading every import: serve -> runtime -> mask_store, trainer -> mask_store.

And one owner per fact: the projection names are spelled only in mask_store/projections.py, the mask-name pattern
only in mask_store/refs.py.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
MAY_IMPORT = {
    "mask_store": set(),
    "trainer": {"mask_store"},
    "runtime": {"mask_store"},
    "serve": {"runtime", "mask_store"},
}


def _imported_packages(path: Path, root: Path = ROOT) -> set[str]:
    """Top-level packages a file imports, lazy imports included, relative ones resolved against the file's package."""
    package = path.relative_to(root).parts[:-1]  # serve/x.py: ("serve",)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom):
            base = package[:max(0, len(package) - node.level + 1)]
            names = [".".join((*base, node.module))] if node.module else [".".join((*base, a.name)) for a in node.names]
        else:
            continue
        found |= {name.split(".")[0] for name in names if name}
    return found & set(MAY_IMPORT)


def test_relative_imports_are_resolved(tmp_path):
    (tmp_path / "serve").mkdir()
    sneaky = tmp_path / "serve" / "x.py"
    sneaky.write_text("from . import middleware\nfrom .. import trainer\nfrom ..runtime import engine\n")
    assert _imported_packages(sneaky, tmp_path) == {"serve", "trainer", "runtime"}


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_imports_point_one_way(package):
    wrong = {
        f"{path.relative_to(ROOT)} imports {other}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for other in _imported_packages(path) - MAY_IMPORT[package] - {package}
    }
    assert not wrong, sorted(wrong)


_HF_ONLY = re.compile(r"\b(q|k|v|gate|up)_proj\b")  # o_proj and down_proj are vLLM's names too (runtime/layout.py)


def _literals(path: Path) -> list[str]:
    """String constants in code; docstrings and comments may name what they explain."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _spelled_outside(home: Path, pattern: re.Pattern) -> list[str]:
    """Files other than `home`, in the packages, bench and examples, with a string constant matching `pattern`."""
    return [str(path.relative_to(ROOT)) for package in [*MAY_IMPORT, "bench", "examples"]
            for path in sorted((ROOT / package).rglob("*.py"))
            if path != home and any(pattern.search(text) for text in _literals(path))]


def test_projection_names_have_one_home():
    spelled = _spelled_outside(ROOT / "mask_store" / "projections.py", _HF_ONLY)
    assert not spelled, spelled


_NAME_CHARS = re.compile(r"A-Za-z0-9[._-]*[._-]")  # the character class of a mask name, spelled again


def test_the_mask_name_pattern_has_one_home():
    spelled = _spelled_outside(ROOT / "mask_store" / "refs.py", _NAME_CHARS)
    assert not spelled, spelled


"""pyproject.toml declares what the packages import, and imports what it declares (a few used through another
library are named with the reason)."""

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("mask_store", "runtime", "trainer", "serve")
DISTRIBUTION = {"yaml": "pyyaml", "prometheus_client": "prometheus-client", "botocore": "boto3"}  # import -> pip name
OPTIONAL = {"vllm": "the cpu / cuda extras", "triton": "comes with CUDA torch; correction_triton.py is optional"}
USED_THROUGH = {"gguf": "transformers reads the default model's GGUF with it (mask_store/default_model.py)",
                "accelerate": "transformers refuses to load a GGUF file without it: 'accelerate is required when "
                              "loading a GGUF file' (mask_store/default_model.py)"}


def _imports() -> set[str]:
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - set(PACKAGES)


def _declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.match(r"[A-Za-z0-9_.-]+", d)[0].lower() for d in deps}


def test_every_import_is_declared():
    missing = {name for name in _imports() - set(OPTIONAL) if DISTRIBUTION.get(name, name) not in _declared()}
    assert not missing, sorted(missing)


def test_every_dependency_is_imported():
    imported = {DISTRIBUTION.get(name, name) for name in _imports()}
    unused = _declared() - imported - set(USED_THROUGH)
    assert not unused, sorted(unused)

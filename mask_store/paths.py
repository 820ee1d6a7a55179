"""Where maskserve keeps things on this machine: one cache folder, overridable for tests and shared setups."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """`MASKSERVE_CACHE`, else `$XDG_CACHE_HOME/maskserve`, else `~/.cache/maskserve`."""
    if env := os.environ.get("MASKSERVE_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maskserve"


def default_store_uri() -> str:
    """`MASK_STORE`, else a local store under the cache folder."""
    return os.environ.get("MASK_STORE") or str(cache_dir() / "store")

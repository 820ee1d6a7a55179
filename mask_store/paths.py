"""Where maskserve keeps things on this machine, and the environment variables that move them.

One prefix for every variable: `MASKSERVE_CACHE` (the cache folder) and `MASKSERVE_STORE` (the default store URI).
`MASK_STORE`, the store's older name, still works and logs a deprecation warning once per process; the new name
wins when both are set.
"""

import os
from pathlib import Path

from .logs import get_logger

CACHE_ENV = "MASKSERVE_CACHE"
STORE_ENV = "MASKSERVE_STORE"
_RENAMED = {STORE_ENV: "MASK_STORE"}  # new name -> the old one it replaced
_warned: set[str] = set()
log = get_logger("store")


def _env(name: str) -> str | None:
    """The variable `name`, else its old name (with a warning the first time), else None."""
    if value := os.environ.get(name):
        return value
    old = _RENAMED.get(name)
    if old and (value := os.environ.get(old)):
        if old not in _warned:
            _warned.add(old)
            log.warning("%s is deprecated; set %s instead", old, name)
        return value
    return None


def cache_dir() -> Path:
    """`MASKSERVE_CACHE`, else `$XDG_CACHE_HOME/maskserve`, else `~/.cache/maskserve`."""
    if env := _env(CACHE_ENV):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maskserve"


def default_store_uri() -> str:
    """`MASKSERVE_STORE` (or the deprecated `MASK_STORE`), else a local store under the cache folder."""
    return _env(STORE_ENV) or str(cache_dir() / "store")

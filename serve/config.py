"""mask-serve's own settings. serve/cli.py validates them and puts them on vLLM's parsed arguments (`args.maskserve`),
the one object vLLM hands to an endpoint plugin both when it builds the app and when it fills the app's state."""

from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

from mask_store.errors import MaskError

from .limits import DEFAULT_MAX_BODY_BYTES

ARGS_FIELD = "maskserve"  # the attribute of vLLM's args that carries a MaskServeConfig


@dataclass(frozen=True)
class MaskServeConfig:
    model_dir: str  # the base model folder vLLM serves
    base_id: str  # its base id; masks for any other base are refused
    store: str  # store URI
    api_keys: tuple[str, ...]  # inference needs one of them when any is set
    admin_key: str | None  # admin routes need it when set, else an API key; with neither they are off
    experiments_file: str | None  # YAML or JSON experiments to start with
    ab_db: str  # SQLite file of the A/B log
    tensor_shapes: dict[str, tuple[int, ...]]  # every projection a mask may name, with its shape (layout.py)
    resolve_ttl_s: float  # how long a REF -> version resolution is reused
    canary: bool = True  # probe the engine under a synthetic mask before serving (runtime/canary.py)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger request bodies are refused with 413


def config_of(args: Namespace) -> MaskServeConfig:
    """The settings mask-serve put on vLLM's args; a server started another way (`vllm serve` with the plugin
    allowed) has none, and gets one line saying what to run instead."""
    config = getattr(args, ARGS_FIELD, None)
    if not isinstance(config, MaskServeConfig):
        raise MaskError("the maskserve endpoint plugin needs mask-serve's settings: start the server with "
                        "`mask-serve` (it takes every `vllm serve` option), not `vllm serve`")
    return config


def default_ab_db() -> str:
    from mask_store.paths import cache_dir

    return str(Path(cache_dir()) / "ab.sqlite")

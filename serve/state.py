"""What maskserve's routes and middlewares share per app, kept at `app.state.maskserve` (serve/plugin.py fills it)."""

from dataclasses import dataclass

from .ablog_writer import ABLogWriter
from .experiments import Experiments
from .masks import MaskService


@dataclass(frozen=True)
class MaskServeState:
    service: MaskService  # resolution, admission and the workers' bank
    experiments: Experiments
    ablog: ABLogWriter  # A/B rows and feedback, written off the event loop
    base_names: frozenset[str]  # the names the base model is served under (--served-model-name)

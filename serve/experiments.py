"""A/B experiments: named sets of weighted arms, each a mask REF or the bare base model.

A request with `"mask": "ab:NAME"` goes to one arm. The choice hashes (experiment, OpenAI `user`), so a user stays on
one arm for the whole experiment and arms get traffic in proportion to their weights; a request without `user`
gets a fresh random key. Arms hold REFs, not digests: moving `math:prod` moves the arm with it.
"""

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from mask_store.errors import MaskError, NotFound

from .protocol import ExperimentSpec, ExperimentsFile, clip

BASE = "base"
PREFIX = "ab:"


@dataclass(frozen=True)
class Arm:
    name: str
    mask: str | None  # a REF; None is the base model
    weight: float


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: tuple[Arm, ...]

    @classmethod
    def from_spec(cls, spec: ExperimentSpec) -> "Experiment":
        arms = tuple(Arm(a.name or a.mask, None if a.mask == BASE else a.mask, a.weight) for a in spec.arms)
        return cls(spec.name, arms)

    def route(self, user: str | None) -> Arm:
        key = user if user else secrets.token_hex(8)
        point = int.from_bytes(hashlib.sha256(f"{self.name}\0{key}".encode()).digest()[:8], "big") / 2**64
        total = sum(a.weight for a in self.arms)
        edge = 0.0
        for arm in self.arms:
            edge += arm.weight / total
            if point < edge:
                return arm
        return self.arms[-1]

    def describe(self) -> dict:
        return {"name": self.name, "arms": [{"name": a.name, "mask": a.mask or BASE, "weight": a.weight}
                                            for a in self.arms]}


class Experiments:
    """The experiments a server knows, by name."""

    def __init__(self):
        self.by_name: dict[str, Experiment] = {}

    def add(self, spec: ExperimentSpec) -> Experiment:
        experiment = Experiment.from_spec(spec)
        self.by_name[experiment.name] = experiment
        return experiment

    def get(self, name: str) -> Experiment:
        if name not in self.by_name:
            known = ", ".join(sorted(self.by_name)) or "none"
            raise NotFound(f"no experiment named {clip(name)} (known: {known})")
        return self.by_name[name]

    def load_file(self, path: str | Path) -> None:
        """YAML or JSON: {experiments: [{name, arms: [{mask, weight, name?}, ...]}, ...]}."""
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise MaskError(f"cannot read the experiments file {path}: {e.strerror}") from e
        try:
            raw = yaml.safe_load(text) if Path(path).suffix in (".yaml", ".yml") else json.loads(text)
            parsed = ExperimentsFile.model_validate(raw)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise MaskError(f"{path}: not a valid experiments file ({problems})") from e
        except (ValueError, yaml.YAMLError) as e:
            reason = " ".join(str(e).split())  # YAML errors span lines
            raise MaskError(f"{path}: not a valid experiments file ({reason})") from e
        for spec in parsed.experiments:
            self.add(spec)

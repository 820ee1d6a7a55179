"""Which weight matrices a mask covers: a band of decoder layers and a set of projections.

Names follow the Hugging Face Llama layout named in mask_store/projections.py. Embeddings, norms and the LM head are
never targets.
"""

import re
from dataclasses import dataclass

from mask_store.errors import ModelError
from mask_store.projections import ATTN, MLP, WEIGHT

MODULE_SETS = {"all": ATTN + MLP, "attn": ATTN, "mlp": MLP}


@dataclass(frozen=True)
class TargetSpec:
    """What the user asked for: layers first..last inclusive, and short projection names."""

    first: int
    last: int
    modules: tuple[str, ...]

    @classmethod
    def parse(cls, layers: str, modules: str) -> "TargetSpec":
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", layers, re.ASCII)
        if not m:
            raise ModelError(f"--layers {layers!r}: expected A-B (e.g. 20-23) or a single layer")
        first, last = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if first > last:
            raise ModelError(f"--layers {layers!r}: the first layer is after the last")
        chosen = MODULE_SETS.get(modules) or tuple(s.strip() for s in modules.split(",") if s.strip())
        unknown = [s for s in chosen if s not in ATTN + MLP]
        if unknown or not chosen:
            raise ModelError(
                f"--modules {modules!r}: use all, attn, mlp or a comma list of {', '.join(ATTN + MLP)}"
            )
        return cls(first, last, chosen)

    def describe(self) -> dict:
        return {"layers": f"{self.first}-{self.last}", "modules": list(self.modules)}


def select_targets(spec: TargetSpec, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The weight names in `shapes` that `spec` covers, in layer order; errors name what is missing."""
    layers = sorted({int(m["layer"]) for name in shapes if (m := WEIGHT.fullmatch(name))})
    if not layers:
        raise ModelError("the model has no decoder layers with *_proj weights (expected a Llama-style model)")
    if spec.first < layers[0] or spec.last > layers[-1]:
        raise ModelError(f"--layers {spec.first}-{spec.last} is outside the model's layers {layers[0]}-{layers[-1]}")
    chosen = []
    for name in shapes:
        m = WEIGHT.fullmatch(name)
        if m and spec.first <= int(m["layer"]) <= spec.last and m["proj"] in spec.modules:
            chosen.append(name)
    missing = set(spec.modules) - {WEIGHT.fullmatch(n)["proj"] for n in chosen}
    if missing:
        raise ModelError(f"the model has no {', '.join(sorted(missing))} projection in layers {spec.first}-{spec.last}")
    return sorted(chosen, key=lambda n: (int(WEIGHT.fullmatch(n)["layer"]), n))

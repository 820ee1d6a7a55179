"""Which model a request asks for, decided from its body alone: the base, a mask REF, or an experiment's arm.

`route` is pure (no store, no engine, no HTTP), so every way a client can name a mask is tested without a server;
the middleware then resolves the REF it returns through the store (serve/masks.py).
"""

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mask_store.errors import InvalidRef
from runtime.requests import SALT_PREFIX, ServedMask

from .experiments import PREFIX, Experiments


class MaskFields(BaseModel):
    """The fields of an inference body maskserve reads; vLLM validates everything else, these included."""

    model_config = ConfigDict(extra="ignore")
    mask: str | None = None  # NAME, NAME@N, NAME:TAG, a digest, or ab:EXPERIMENT
    model: Any = None  # the served model, or a mask named as a model (like a LoRA adapter)
    user: Any = None  # the A/B key: one user stays on one arm
    cache_salt: Any = None

    @classmethod
    def of(cls, body: dict) -> "MaskFields":
        try:
            fields = cls.model_validate(body)
        except ValidationError:
            raise InvalidRef("'mask' must be a string (NAME, NAME@N, NAME:TAG, a digest or ab:EXPERIMENT) "
                             "or null") from None
        if isinstance(fields.cache_salt, str) and fields.cache_salt.startswith(SALT_PREFIX):
            # a client salt in maskserve's namespace would share KV blocks with a mask's requests
            raise InvalidRef(f"'cache_salt' may not start with {SALT_PREFIX!r}: that namespace is reserved for masks")
        return fields


@dataclass
class Route:
    ref: str | None = None  # the REF to serve; None: the base model
    model_was_mask: bool = False  # the REF came from `model`, not `mask`
    experiment: str | None = None
    arm: str | None = None
    served: ServedMask | None = None  # `ref` resolved, filled in by the middleware
    drop_usage_chunk: bool = False  # we asked vLLM for a usage chunk the client did not ask for
    loaded: bool = False  # admitting this request loaded its mask into the workers

    @property
    def label(self) -> str:
        return f"{self.served.name}@{self.served.version}" if self.served else "base"

    def body_fields(self) -> dict:
        out = {"mask": self.served.describe() if self.served else None}
        if self.experiment:
            out["experiment"] = {"name": self.experiment, "arm": self.arm}
        return out


def route(fields: MaskFields, base_names: set[str], experiments: Experiments) -> Route:
    """`mask` wins; else a `model` that is not a served name is a mask REF; `ab:NAME` picks an arm by `user`."""
    out = Route()
    ref = fields.mask
    if ref is None and isinstance(fields.model, str) and fields.model not in base_names:
        ref, out.model_was_mask = fields.model, True
    if ref is not None and ref.startswith(PREFIX):
        experiment = experiments.get(ref[len(PREFIX):])
        arm = experiment.route(fields.user if isinstance(fields.user, str) else None)
        out.experiment, out.arm, ref = experiment.name, arm.name, arm.mask
    out.ref = ref
    return out

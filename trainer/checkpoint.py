"""Training state on disk, so a long MFT run that dies (preempted, out of memory, ctrl-C) resumes where it was.

A checkpoint holds the scores, AdamW's and the schedule's state, the losses so far and the step; the data order is
a pure function of the seed, so resuming replays the batch stream up to that step instead of storing it. A resumed
run therefore ends with the same mask, bit for bit, as one that never stopped. The run's fingerprint (every
hyper-parameter, the data file's hash, the target weights) is stored too: resuming under anything else is refused.
Writes are atomic (temp file, fsync, rename), so a crash during a save leaves the previous checkpoint.

The file is a dict with a `format` key (CHECKPOINT_VERSION); one from before the key existed is format 1. Older
formats are upgraded on load, newer ones refused (mask_store/versions.py).
"""

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from mask_store import versions
from mask_store.atomic import atomic_file
from mask_store.errors import MaskError

CHECKPOINT_VERSION = 1
# version v -> the step that turns the saved dict of version v into v + 1.
_UPGRADES: dict = {}


@dataclass
class TrainingState:
    step: int
    losses: list[float]
    scores: dict[str, torch.Tensor]
    optimizer: dict
    schedule: dict


@dataclass(frozen=True)
class Checkpointing:
    path: Path
    every: int  # save after every `every` optimizer steps, and after the last
    fingerprint: dict

    def save(self, state: TrainingState) -> None:
        with atomic_file(self.path) as f:
            torch.save({"format": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "state": state.__dict__}, f)

    def load(self) -> TrainingState:
        if not self.path.is_file():
            raise MaskError(f"--resume: no checkpoint at {self.path}")
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as e:  # damaged or not ours
            raise MaskError(f"{self.path}: not a readable mask-train checkpoint ({type(e).__name__})") from e
        if not isinstance(saved, dict):
            raise MaskError(f"{self.path}: not a mask-train checkpoint (holds a {type(saved).__name__})")
        saved = versions.upgrade(saved, saved.get("format", 1), CHECKPOINT_VERSION, _UPGRADES, str(self.path))
        theirs = saved.get("fingerprint", {})
        if theirs != self.fingerprint:
            changed = sorted(k for k in {*self.fingerprint, *theirs} if self.fingerprint.get(k) != theirs.get(k))
            raise MaskError(f"{self.path} is from a different run (differs in: {', '.join(changed)}); "
                            "resume with the same model, data and settings, or start without --resume")
        return TrainingState(**saved["state"])


# free to change between a run and its resume: they change neither the scores nor the data order
EVAL_ONLY = ("eval_batch_size", "eval_accuracy", "max_new_tokens", "gradient_checkpointing")


def fingerprint(config_description: dict, data_hash: str, names: list[str]) -> dict:
    """What must match for a checkpoint to continue this run."""
    training = {k: v for k, v in config_description.items() if k not in EVAL_ONLY}
    return {**training, "data_blake3": data_hash, "targets": sorted(names)}

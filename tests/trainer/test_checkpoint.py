"""mask-train checkpoints: versioned, read back from the previous version, refused when newer."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from mask_store.errors import MaskError
from trainer import checkpoint
from trainer.checkpoint import Checkpointing, TrainingState

FIXTURES = Path(__file__).parents[1] / "fixtures" / "v1"
FINGERPRINT = json.loads((FIXTURES / "checkpoint-fingerprint.json").read_text())


def test_a_checkpoint_from_before_versions_resumes(tmp_path):
    shutil.copy(FIXTURES / "checkpoint.pt", tmp_path / "run.ckpt")
    state = Checkpointing(tmp_path / "run.ckpt", 1, FINGERPRINT).load()
    assert state.step == 1 and state.losses == [2.5]
    assert state.scores["model.layers.0.mlp.up_proj.weight"].shape == (4, 3)
    assert state.optimizer["state"][0]["step"] == 1


def test_an_older_checkpoint_is_upgraded_on_load(tmp_path, monkeypatch):
    def split_losses(saved):  # a made-up version 2: losses kept per epoch
        state = dict(saved["state"], losses=[saved["state"]["losses"]])
        return {**saved, "state": state}

    shutil.copy(FIXTURES / "checkpoint.pt", tmp_path / "run.ckpt")
    monkeypatch.setattr(checkpoint, "CHECKPOINT_VERSION", 2)
    monkeypatch.setitem(checkpoint._UPGRADES, 1, split_losses)
    state = Checkpointing(tmp_path / "run.ckpt", 1, FINGERPRINT).load()
    assert state.step == 1 and state.losses == [[2.5]]


def test_a_saved_checkpoint_records_its_version(tmp_path):
    state = TrainingState(step=2, losses=[1.0, 0.5], scores={"w": torch.zeros(2)}, optimizer={}, schedule={})
    Checkpointing(tmp_path / "run.ckpt", 1, {"seed": 0}).save(state)
    assert torch.load(tmp_path / "run.ckpt", weights_only=True)["format"] == checkpoint.CHECKPOINT_VERSION == 1
    assert Checkpointing(tmp_path / "run.ckpt", 1, {"seed": 0}).load().losses == [1.0, 0.5]


def test_a_newer_checkpoint_is_refused(tmp_path):
    saved = torch.load(FIXTURES / "checkpoint.pt", weights_only=True)
    torch.save({**saved, "format": 2}, tmp_path / "run.ckpt")
    with pytest.raises(MaskError) as e:
        Checkpointing(tmp_path / "run.ckpt", 1, FINGERPRINT).load()
    assert str(e.value) == (f"{tmp_path / 'run.ckpt'}: format version 2 is newer than this maskserve reads (1); "
                            "upgrade maskserve")


def test_a_file_that_is_not_a_checkpoint_dict_is_refused(tmp_path):
    torch.save([1, 2], tmp_path / "run.ckpt")
    with pytest.raises(MaskError, match="not a mask-train checkpoint"):
        Checkpointing(tmp_path / "run.ckpt", 1, FINGERPRINT).load()

"""mask-train at scale on the tiny model: two CPU processes under torchrun or `accelerate launch` (gloo) give the
single-process mask, and bf16 autocast and gradient checkpointing do what they say."""

import os
import subprocess
import sys

import pytest
import torch

from mask_store.format import load_mask
from tests.trainer.test_mft import chat_records, targets, toy_records, write_jsonl
from trainer.cli import main
from trainer.config import MFTConfig
from trainer.data import load_examples
from trainer.mft import load_model, load_tokenizer, train_scores
from trainer.parallel import DataParallel, enable_gradient_checkpointing
from trainer.scored_linear import ScoredLinear, extract_masks, swap_in_scored_linears


def _argv(tiny_model, data, out, *extra):
    return ["--model", str(tiny_model), "--data", str(data), "--layers", "1-3", "--mask-ratio", "0.1",
            "--steps", "8", "--lr", "0.05", "--batch-size", "4", "--grad-accum", "2", "--seq-len", "48",
            "--seed", "3", "--out", str(out), *extra]


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
    # accelerate's multi-process launcher starts the processes through torch's elastic launcher, which sets the
    # RANK / WORLD_SIZE / MASTER_* variables mask-train reads; without a GPU they train on the CPU over gloo
    # (accelerate's --cpu flag picks its single-process launcher instead: one process, not two)
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_processes_give_the_single_process_mask(tmp_path, tiny_model, launcher):
    data = write_jsonl(tmp_path / "train.jsonl", chat_records(40, seed=0))  # uneven lengths: shards pad differently
    assert main(_argv(tiny_model, data, tmp_path / "one.mask")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*LAUNCHERS[launcher], "-m", "trainer.cli", *_argv(tiny_model, data, tmp_path / "two.mask")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    one, two = load_mask(tmp_path / "one.mask"), load_mask(tmp_path / "two.mask")
    assert one.same_removals(two)
    assert (one.training["processes"], two.training["processes"]) == (1, 2)
    # The loss is the global batch's: a process that normalised by its own tokens would report about twice it.
    for key in ("first", "final"):
        assert two.training["train_loss"][key] == pytest.approx(one.training["train_loss"][key], rel=1e-4)
    magnitude = load_mask(_magnitude(tiny_model, tmp_path))
    assert not one.same_removals(magnitude)  # training moved the mask, so agreeing is not agreeing on the start


def _magnitude(tiny_model, tmp_path):
    out = tmp_path / "l1.mask"
    assert main(["--model", str(tiny_model), "--method", "magnitude", "--layers", "1-3", "--mask-ratio", "0.1",
                 "--out", str(out)]) == 0
    return out


def test_a_batch_that_does_not_split_over_the_processes_is_refused():
    with pytest.raises(Exception, match="--batch-size 5 does not split over 2 processes"):
        DataParallel(rank=0, world=2).check_batch(5)
    assert DataParallel(rank=1, world=2).shard(list(range(6))) == [3, 4, 5]


def _trained(tiny_model, examples, config, checkpointing=False):
    model = load_model(tiny_model, torch.device("cpu"), torch.float32)
    swap_in_scored_linears(model, targets(tiny_model, "1-3"), 0.1, "magnitude", 0)
    if checkpointing:
        enable_gradient_checkpointing(model)
    calls = []
    model.model.layers[2].register_forward_pre_hook(lambda *_: calls.append(1))  # recomputation may stop early
    losses = train_scores(model, examples, config, 257)
    return model, losses, len(calls)


def test_gradient_checkpointing_recomputes_layers_and_learns_the_same_mask(tmp_path, tiny_model):
    examples = load_examples(write_jsonl(tmp_path / "t.jsonl", toy_records(16, 0)), load_tokenizer(tiny_model), 32)
    config = MFTConfig(steps=3, lr=0.05, batch_size=4, warmup=0.0)
    plain, plain_losses, plain_calls = _trained(tiny_model, examples, config)
    ckpt, ckpt_losses, ckpt_calls = _trained(tiny_model, examples, config, checkpointing=True)
    assert (plain_calls, ckpt_calls) == (3, 6)  # each step's layer forward runs again in the backward pass
    assert ckpt_losses == pytest.approx(plain_losses, rel=1e-6)
    assert all(a == b for a, b in zip(extract_masks(plain).values(), extract_masks(ckpt).values()))
    assert not ckpt.model.layers[2].self_attn.training  # dropout and the rest stay in eval mode


def test_autocast_computes_in_bf16_and_keeps_fp32_scores(tmp_path, tiny_model):
    examples = load_examples(write_jsonl(tmp_path / "t.jsonl", toy_records(8, 0)), load_tokenizer(tiny_model), 32)
    model = load_model(tiny_model, torch.device("cpu"), torch.float32)
    swap_in_scored_linears(model, targets(tiny_model, "1-3"), 0.1, "magnitude", 0)
    dtypes = set()
    scored = next(m for m in model.modules() if isinstance(m, ScoredLinear))
    scored.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype))
    losses = train_scores(model, examples, MFTConfig(steps=2, lr=0.05, batch_size=4, autocast=True), 257)
    assert dtypes == {torch.bfloat16} and scored.scores.dtype == torch.float32 and scored.scores.grad is None
    assert all(loss == loss and loss > 0 for loss in losses)  # finite


def test_both_flags_run_through_the_cli_and_are_recorded(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "train.jsonl", toy_records(16, seed=0))
    out = tmp_path / "big.mask"
    assert main(_argv(tiny_model, data, out, "--autocast", "--gradient-checkpointing")) == 0
    training = load_mask(out).training
    assert training["autocast"] is True and training["gradient_checkpointing"] is True

"""Data parallelism for `mask-train` under torchrun, and the memory options for large models.

    torchrun --nproc-per-node 2 --no-python mask-train --model DIR --data train.jsonl ... --out task.mask

Contract:
- Outside torchrun (WORLD_SIZE unset or 1) `DataParallel.from_env()` is one process, rank 0, and every method is a
  no-op: the single-process path is untouched.
- Under torchrun every process reads the same data and draws the same seeded batch stream; process r keeps its
  contiguous share of each micro-batch (`shard`). The loss is divided by the token count of the whole step, so the
  sum of the processes' score gradients (`all_reduce_grads`) is the single-process gradient and every process takes
  the same optimizer step: the mask equals the single-process mask for the same global batch and seed (up to the
  order in which floats are summed).
- Backend: gloo on CPU, nccl on CUDA (one GPU per process, LOCAL_RANK). Only rank 0 evaluates, checkpoints, prints
  and writes the mask (`is_main`); the others wait for it at `barrier`.
- `enable_gradient_checkpointing` recomputes each decoder layer's activations in the backward pass instead of
  keeping them (transformers' own checkpointing, non-reentrant); the gradients are the same.

Non-goals: sharding the model or the scores (FSDP, tensor parallelism), several nodes' launch logic (torchrun's).
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from mask_store.errors import MaskError

TIMEOUT = timedelta(hours=2)  # rank 0 evaluates alone while the others wait; a large model's eval takes a while


@dataclass(frozen=True)
class DataParallel:
    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> "DataParallel":
        """The process group torchrun describes in the environment (initialized once), or a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise MaskError(f"--batch-size {batch_size} does not split over {self.world} processes; "
                            f"use a multiple of {self.world}")

    def shard(self, rows: list) -> list:
        """This process's contiguous share of a micro-batch (`check_batch` made the shares equal)."""
        size = len(rows) // self.world
        return rows[self.rank * size : (self.rank + 1) * size]

    def all_reduce_grads(self, params) -> None:
        """Sum every parameter's gradient over the processes (one flat buffer, one collective)."""
        if self.world == 1:
            return
        params = list(params)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([g.flatten() for g in grads])  # (total,)
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g)
            offset += g.numel()

    def sum(self, value: float) -> float:
        if self.world == 1:
            return value
        total = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(total)
        return float(total)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Checkpoint every decoder layer while training, leaving dropout and the rest of the model in eval mode.

    transformers checkpoints a layer only when the layer's own `training` flag is set; setting that one flag (not
    `model.train()`, which would switch dropout on everywhere) keeps the forward pass the eval one.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    if not getattr(model, "supports_gradient_checkpointing", False):
        raise MaskError(f"{type(model).__name__} does not support gradient checkpointing")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.disable_input_require_grads()  # non-reentrant checkpointing needs no grad on the embeddings
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.training = True


def disable_gradient_checkpointing(model: nn.Module) -> None:
    model.gradient_checkpointing_disable()
    model.eval()

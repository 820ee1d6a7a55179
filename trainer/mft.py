"""Mask Fine-Tuning: learn which weights of a frozen model to remove for a task, and report what it bought.

    load tokenizer, read and tokenize the data (every user error surfaces here, before the model loads)
    load the model; evaluate the base on the eval set
    swap the target linears for ScoredLinears; AdamW on the scores only, linear warm-up and decay
    read the masks back; swap in the materialized W * M; evaluate again; print the summary

Contract:
- The loss is the mean negative log-likelihood of the labelled (completion) tokens; with gradient accumulation it
  is the mean over all the step's tokens, exactly as one larger batch would give.
- Eval loss is computed on the materialized masked model (plain linears holding W * M), the same model a saved
  mask applied to the base gives; so re-scoring the base with the mask's removals zeroed reproduces it.
- The base weights are never written: they stay bit-identical, whatever the dtype.
- Runs are reproducible: the scores' random init and the data order depend only on the seed.
- `train_from_args` is the `mask-train --method mft` entry; it returns the masks and the metadata for the file.

- With checkpointing (`--checkpoint FILE [--resume]`, see checkpoint.py) a run can stop and resume; the mask it ends
  with is the one an uninterrupted run gives.
- Under torchrun the processes share each micro-batch and sum their score gradients (parallel.py): the mask is the
  single-process one for the same global batch and seed. `autocast` runs the training forward passes in bf16 (the
  weights keep their dtype); `gradient_checkpointing` recomputes activations instead of keeping them.

Non-goals: sharding the model across processes, learning anything but the scores.
"""

import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

from mask_store.errors import ModelError
from mask_store.mask import TensorMask

from .checkpoint import Checkpointing, TrainingState, fingerprint
from .config import MFTConfig
from .data import IGNORE, DataError, Example, collate, collate_prompts, exact_match, file_hash, load_examples
from .parallel import DataParallel, disable_gradient_checkpointing, enable_gradient_checkpointing
from .scored_linear import materialize_scored_linears, swap_in_scored_linears


def pick_device_dtype(dtype: str) -> tuple[torch.device, torch.dtype]:
    """auto: bfloat16 on a GPU that has it, float32 otherwise (CPU bf16 matmuls are slow without AMX)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return device, torch.bfloat16 if use_bf16 else torch.float32
    return device, getattr(torch, dtype)


def load_tokenizer(model_dir: str | os.PathLike):
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise ModelError(f"{model_dir}: cannot load its tokenizer ({e})") from e
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise ModelError(f"{model_dir}: the tokenizer has neither a pad nor an EOS token to pad batches with")
    return tokenizer


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def load_model(model_dir: str | os.PathLike, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model, frozen and in eval mode (no dropout), on `device` in `dtype`."""
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelError(f"{model_dir}: cannot load the model ({e})") from e
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def completion_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed negative log-likelihood of the batch's labelled tokens: a scalar.

    Logits are computed only at the positions where some row has a target (`logits_to_keep`), which spares most
    of the LM head's work on prompt tokens while still going through the model's own forward.
    """
    targets = batch["labels"][:, 1:]  # (B, T-1): the token predicted at each position
    keep = torch.nonzero((targets != IGNORE).any(0)).squeeze(1)  # (K,) positions with a target in some row
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=keep).logits  # (B, K, V)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets[:, keep].flatten(), ignore_index=IGNORE,
                           reduction="sum")


def _on(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def _targets(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def _example_targets(example: Example) -> int:
    return sum(label != IGNORE for label in example.labels[1:])


@torch.no_grad()
def eval_loss(model: torch.nn.Module, examples: list[Example], batch_size: int, pad: int) -> float:
    """Mean NLL per labelled token over the whole set (token-weighted, not a mean of batch means)."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i : i + batch_size], pad)
        total += float(completion_nll(model, _on(batch, device)))
        tokens += _targets(batch)
    return total / tokens


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer, examples: list[Example], batch_size: int, max_new_tokens: int
             ) -> list[str]:
    """Greedy continuations of each example's prompt, cut at the first special token (EOS, end of turn)."""
    device = next(model.parameters()).device
    stops = sorted(set(tokenizer.all_special_ids))
    texts = []
    for i in range(0, len(examples), batch_size):
        prompts = _on(collate_prompts(examples[i : i + batch_size], pad_id(tokenizer)), device)
        out = model.generate(**prompts, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                             pad_token_id=pad_id(tokenizer))
        for row in out[:, prompts["input_ids"].shape[1] :].tolist():  # (B, new) new tokens only
            cut = next((j for j, token in enumerate(row) if token in stops), len(row))
            texts.append(tokenizer.decode(row[:cut]))
    return texts


def evaluate(model: torch.nn.Module, tokenizer, examples: list[Example], config: MFTConfig, accuracy: bool) -> dict:
    """Eval loss, and exact-match accuracy when asked (`data.exact_match` is the rule)."""
    metrics = {"loss": round(eval_loss(model, examples, config.eval_batch_size, pad_id(tokenizer)), 6)}
    if accuracy:
        texts = generate(model, tokenizer, examples, config.eval_batch_size, config.max_new_tokens)
        correct = sum(exact_match(text, e.answer) for text, e in zip(texts, examples))
        metrics |= {"exact_match": round(correct / len(examples), 6), "correct": correct}
    return metrics


def micro_batches(examples: list[Example], batch_size: int, seed: int) -> Iterator[list[Example]]:
    """An endless stream of batches: each epoch a fresh seeded shuffle, batches running on across epochs."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while True:
        while len(order) < batch_size:
            order += torch.randperm(len(examples), generator=generator).tolist()
        yield [examples[i] for i in order[:batch_size]]
        order = order[batch_size:]


def train_scores(model: torch.nn.Module, examples: list[Example], config: MFTConfig, pad: int,
                 checkpointing: Checkpointing | None = None, start: TrainingState | None = None,
                 dp: DataParallel = DataParallel()) -> list[float]:
    """Optimize the model's trainable tensors (the scores) on `examples`, from `start` if given (a checkpoint);
    returns the loss of every step. Under data parallelism (`dp`) this process trains on its share of each batch."""
    device = next(model.parameters()).device
    dp.check_batch(config.batch_size)
    scores = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(scores.values(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.total_steps(len(examples))
    schedule = get_linear_schedule_with_warmup(optimizer, config.warmup_steps(len(examples)), steps)
    stream = micro_batches(examples, config.batch_size, config.seed)
    losses: list[float] = []
    if start is not None:
        with torch.no_grad():
            for name, p in scores.items():
                p.copy_(start.scores[name])
        optimizer.load_state_dict(start.optimizer)
        schedule.load_state_dict(start.schedule)
        losses = list(start.losses)
        for _ in range(start.step * config.grad_accum):  # the data order is the seed's: replay it
            next(stream)
    bar_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"
    with tqdm(range(len(losses), steps), desc="mft", unit="step", file=sys.stderr, bar_format=bar_format,
              initial=len(losses), total=steps, disable=not dp.is_main) as bar:
        for step in bar:
            group = [next(stream) for _ in range(config.grad_accum)]
            tokens = sum(_example_targets(e) for rows in group for e in rows)  # the whole step's, on every process
            step_loss = 0.0
            for rows in group:
                batch = _on(collate(dp.shard(rows), pad), device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.autocast):
                    loss = completion_nll(model, batch) / tokens  # this micro-batch's share of the mean
                loss.backward()
                step_loss += loss.item()
            dp.all_reduce_grads(scores.values())
            step_loss = dp.sum(step_loss)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if checkpointing is not None and dp.is_main and (step + 1 == steps or (step + 1) % checkpointing.every == 0):
                checkpointing.save(TrainingState(step + 1, losses, {n: p.detach().cpu() for n, p in scores.items()},
                                                 optimizer.state_dict(), schedule.state_dict()))
    return losses


def _ratios(tensors: dict[str, TensorMask]) -> dict[str, float]:
    return {name: t.ratio for name, t in tensors.items()}


def print_summary(console: Console, extra: dict, tensors: dict[str, TensorMask]) -> None:
    table = Table(title="MFT: base vs masked on the eval set")
    table.add_column("metric")
    table.add_column("base", justify="right")
    table.add_column("masked", justify="right")
    ev = extra.get("eval")
    if ev:
        table.add_row("eval loss", f"{ev['base']['loss']:.4f}", f"{ev['masked']['loss']:.4f}")
        if "exact_match" in ev["masked"]:
            shown = [f"{ev[m]['exact_match']:.1%} ({ev[m]['correct']}/{ev['examples']})" for m in ("base", "masked")]
            table.add_row("exact match", *shown)
    else:
        table.add_row("eval", "no --eval set", "")
    console.print(table)
    groups = Counter(f"{ratio:.4f}" for ratio in _ratios(tensors).values())
    console.print("removed per matrix: " + ", ".join(f"{r} in {n}" for r, n in sorted(groups.items()))
                  + f" of {len(tensors)} matrices")
    loss = extra["train_loss"]
    console.print(f"{extra['steps']} steps, train loss {loss['first']:.4f} -> {loss['final']:.4f}, "
                  f"{extra['train_seconds']:.1f} s training, {extra['total_seconds']:.1f} s in all")


def run_mft(model_dir: str | os.PathLike, names: list[str], data: str | os.PathLike, eval_data: str | None,
            config: MFTConfig, console: Console | None = None, checkpoint: str | os.PathLike | None = None,
            checkpoint_every: int = 50, resume: bool = False) -> tuple[dict[str, TensorMask], dict]:
    """Learn a mask over the weights `names` of the model in `model_dir`; returns (masks, metadata).

    With `checkpoint`, the training state is saved there every `checkpoint_every` steps; `resume` continues from it.
    """
    started = time.perf_counter()
    tokenizer = load_tokenizer(model_dir)
    train = load_examples(data, tokenizer, config.seq_len)
    held_out = load_examples(eval_data, tokenizer, config.seq_len) if eval_data else []
    unanswered = [e.where for e in held_out if e.answer is None]
    if config.eval_accuracy and not eval_data:
        raise DataError("--eval-accuracy needs an --eval set")
    if config.eval_accuracy and unanswered:
        raise DataError(f"{unanswered[0]}: no \"answer\" (--eval-accuracy needs one on every eval record)")
    accuracy = bool(held_out) and not unanswered
    data_hash = file_hash(data)
    checkpointing = start = None
    if checkpoint is not None:
        checkpointing = Checkpointing(Path(checkpoint), checkpoint_every,
                                      fingerprint(config.describe(len(train)), data_hash, names))
        start = checkpointing.load() if resume else None  # a wrong checkpoint is refused before the model loads

    dp = DataParallel.from_env()
    dp.check_batch(config.batch_size)
    device, dtype = pick_device_dtype(config.dtype)
    model = load_model(model_dir, device, dtype)
    evaluating = bool(held_out) and dp.is_main  # the other processes wait at the barrier
    base = evaluate(model, tokenizer, held_out, config, accuracy) if evaluating else None
    dp.barrier()
    swap_in_scored_linears(model, names, config.mask_ratio, config.init, config.seed)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    train_started = time.perf_counter()
    losses = train_scores(model, train, config, pad_id(tokenizer), checkpointing, start, dp)
    train_seconds = time.perf_counter() - train_started
    if config.gradient_checkpointing:
        disable_gradient_checkpointing(model)
    tensors = materialize_scored_linears(model)
    masked = evaluate(model, tokenizer, held_out, config, accuracy) if evaluating else None

    ratios = _ratios(tensors).values()
    extra = {
        **config.describe(len(train)),
        "dtype": str(dtype).removeprefix("torch."),
        "device": device.type,
        "processes": dp.world,
        "data": {"file": Path(data).name, "blake3": data_hash, "examples": len(train)},
        "train_loss": {"first": round(losses[0], 6), "final": round(losses[-1], 6)},
        "achieved_ratio": {"min": min(ratios), "max": max(ratios)},
        "train_seconds": round(train_seconds, 2),
    }
    if evaluating:
        extra["eval_data"] = {"file": Path(eval_data).name, "blake3": file_hash(eval_data), "examples": len(held_out)}
        extra["eval"] = {"base": base, "masked": masked, "examples": len(held_out)}
    extra["total_seconds"] = round(time.perf_counter() - started, 2)
    if dp.is_main:
        print_summary(console or Console(), extra, tensors)
    dp.barrier()  # the others wait here while rank 0 evaluates the masked model
    return tensors, extra


def train_from_args(args, model_dir: Path, names: list[str]) -> tuple[dict[str, TensorMask], dict]:
    """`mask-train --method mft`: the CLI has checked the arguments and resolved the target weights."""
    return run_mft(model_dir, names, args.data, args.eval, MFTConfig.from_args(args), checkpoint=args.checkpoint,
                   checkpoint_every=args.checkpoint_every, resume=args.resume)

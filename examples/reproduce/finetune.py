"""The two weight-updating baselines, on transformers' `Trainer`: full fine-tuning (FFT) and LoRA (peft).

Both read mask-train's JSON lines through trainer/data.py, so the loss covers exactly what MFT's does: the
assistant's answer and its end-of-turn token, never the prompt (completion-only). Each writes a Hugging Face
checkpoint folder (safetensors, fp32, with the tokenizer) that mask-train and runtime.Engine load like any base:

- `full_finetune`: every weight trained; the folder is the FFT model.
- `lora_finetune`: a LoRA adapter on the given layers and projections; the adapter folder (its size is what the
  table reports) and the adapter merged into the base, saved as a checkpoint to evaluate the same way.

Folders appear whole or not at all (written beside, then renamed), with `train.json`: steps, seconds, losses.
Non-goals: mixed precision, distributed training, checkpointing mid-run (a stage reruns from scratch).
"""

import json
import shutil
import time
from pathlib import Path

import torch

from mask_store.projections import HF_PROJECTIONS
from trainer.data import collate, load_examples



def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model, tokenizer


def _train(model, tokenizer, data: Path, steps: int, lr: float, batch_size: int, seq_len: int, seed: int,
           work: Path) -> dict:
    """Run transformers' Trainer for `steps` steps; returns steps, seconds and the logged losses."""
    from transformers import Trainer, TrainingArguments

    examples = load_examples(data, tokenizer, seq_len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    args = TrainingArguments(
        output_dir=str(work), max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=lr,
        lr_scheduler_type="linear", warmup_steps=max(1, steps // 10), weight_decay=0.0, logging_steps=max(1, steps // 10),
        save_strategy="no", report_to="none", seed=seed, data_seed=seed, remove_unused_columns=False,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), disable_tqdm=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=lambda rows: collate(rows, pad))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    losses = [round(entry["loss"], 4) for entry in trainer.state.log_history if "loss" in entry]
    return {"steps": steps, "seconds": round(seconds, 1), "losses": losses, "lr": lr, "batch_size": batch_size,
            "seq_len": seq_len, "examples": len(examples)}


def _publish(tmp: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _save_checkpoint(model, tokenizer, folder: Path, info: dict) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "train.json").write_text(json.dumps(info, indent=2))


def full_finetune(base: Path, data: Path, out: Path, *, steps: int, lr: float, batch_size: int, seq_len: int,
                  seed: int) -> dict:
    """Fine-tune every weight of `base` on `data`; the checkpoint folder goes to `out`."""
    model, tokenizer = _load(base)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    info = {"method": "fft", **_train(model, tokenizer, data, steps, lr, batch_size, seq_len, seed, tmp / "_trainer")}
    shutil.rmtree(tmp / "_trainer", ignore_errors=True)
    _save_checkpoint(model, tokenizer, tmp, info)
    _publish(tmp, out)
    return info


def lora_finetune(base: Path, data: Path, adapter_out: Path, merged_out: Path, *, rank: int, layers: tuple[int, int],
                  steps: int, lr: float, batch_size: int, seq_len: int, seed: int) -> dict:
    """LoRA of rank `rank` on every projection of the inclusive layer range `layers`; alpha = 2 x rank, no dropout.
    Writes the adapter to `adapter_out` and the merged model to `merged_out`."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = _load(base)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(HF_PROJECTIONS),
                        layers_to_transform=list(range(layers[0], layers[1] + 1)), task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tmp_adapter = adapter_out.with_name(adapter_out.name + ".partial")
    shutil.rmtree(tmp_adapter, ignore_errors=True)
    info = {"method": "lora", "rank": rank, "alpha": 2 * rank, "layers": list(layers), "trainable_params": trainable,
            **_train(model, tokenizer, data, steps, lr, batch_size, seq_len, seed, tmp_adapter / "_trainer")}
    shutil.rmtree(tmp_adapter / "_trainer", ignore_errors=True)
    model.save_pretrained(tmp_adapter)
    (tmp_adapter / "train.json").write_text(json.dumps(info, indent=2))
    tmp_merged = merged_out.with_name(merged_out.name + ".partial")
    shutil.rmtree(tmp_merged, ignore_errors=True)
    _save_checkpoint(model.merge_and_unload(), tokenizer, tmp_merged, info)
    _publish(tmp_merged, merged_out)
    _publish(tmp_adapter, adapter_out)  # last: the adapter's presence marks the stage done
    return info

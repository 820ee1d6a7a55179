"""Decode throughput with per-request masks, beside vLLM's multi-LoRA on the same requests.

    python bench/mixed_batch.py [--model DIR] [--requests 16] [--tokens 128] [--dtype DTYPE] [--repeat 5]

Three engines on the same model and requests, one after another, each in the compilation mode it gets by default
(vLLM compiles on CPU; with LoRA enabled it runs eager, vllm/platforms/cpu.py):
- plain vLLM, the baseline every ratio is taken against;
- vLLM multi-LoRA with 0, 1 and 8 adapters (rank 16, the same layers and projections the masks touch);
- maskserve with 0, 1, 4 and 8 distinct masks (local-MFT shape: layers 20-23, all projections, 10% removed;
  random positions cost what trained ones do).
Within an engine, rounds are interleaved in a shuffled order so drift hits every configuration alike. Each figure is
generated tokens / wall seconds for the whole batch, the median of --repeat rounds after a warm-up. The dtype is
the one fast on this CPU unless --dtype says otherwise; the CPU flags that decide it are printed with the figures.
"""

import argparse
import gc
import random
import statistics
import tempfile
import time
from pathlib import Path

from mask_store.projections import HF_PROJECTIONS

LAYERS = "20-23"


def tokens_per_s(generate) -> float:
    started = time.perf_counter()
    outputs = generate()
    return sum(len(o.outputs[0].token_ids) for o in outputs) / (time.perf_counter() - started)


def measure(configs: dict, run, repeat: int) -> dict:
    """Median tokens/s per configuration, rounds interleaved in shuffled order after one warm-up each."""
    for config in configs.values():
        run(config)
    samples = {name: [] for name in configs}
    order = list(configs)
    for _ in range(repeat):
        random.shuffle(order)
        for name in order:
            samples[name].append(tokens_per_s(lambda c=configs[name]: run(c)))
    return {name: statistics.median(s) for name, s in samples.items()}


def make_adapters(model: Path, out: Path, count: int, rank: int) -> list[Path]:
    """`count` random LoRA adapters (peft) on the masks' layers and projections."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    first, last = (int(x) for x in LAYERS.split("-"))
    paths = []
    for i in range(count):
        torch.manual_seed(i)
        base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(HF_PROJECTIONS),
                            layers_to_transform=list(range(first, last + 1)), init_lora_weights=False)
        get_peft_model(base, config).save_pretrained(out / f"lora{i}")
        paths.append(out / f"lora{i}")
    return paths


def shutdown(llm) -> None:
    llm.llm_engine.engine_core.shutdown()
    gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128, help="generated tokens per request")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dtype", default=None, help="default: the dtype that is fast on this CPU")
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from mask_store.default_model import default_model_dir
    from mask_store.format import save_mask
    from mask_store.store import Store
    from runtime.engine import Engine
    from runtime.requests import CPU_KV_CACHE_BYTES, fast_dtype, vector_flags
    from trainer.baselines import baseline_mask

    model = Path(args.model) if args.model else default_model_dir()
    dtype = args.dtype or fast_dtype()
    work = Path(tempfile.mkdtemp(prefix="bench-mixed-"))
    store = Store(work / "store")
    for i in range(8):
        save_mask(baseline_mask(model, "random", LAYERS, "all", 0.1, seed=i), work / f"{i}.mask")
        store.push(work / f"{i}.mask", f"task{i}")
    adapters = make_adapters(model, work, 8, args.lora_rank)

    prompts = [f"Write a long story about a robot number {i} who learns to paint." for i in range(args.requests)]
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    common = dict(model=str(model), dtype=dtype, max_model_len=1024, max_num_seqs=args.requests,
                  kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enable_prefix_caching=True)

    llm = LLM(**common)
    plain = measure({"plain": None}, lambda _: llm.generate(prompts, params, use_tqdm=False), args.repeat)["plain"]
    shutdown(llm)

    llm = LLM(**common, enable_lora=True, max_loras=8, max_lora_rank=args.lora_rank)
    lora_requests = [LoRARequest(f"lora{i}", i + 1, str(p)) for i, p in enumerate(adapters)]
    lora_configs = {n: [None if n == 0 else lora_requests[i % n] for i in range(args.requests)] for n in (0, 1, 8)}
    lora = measure(lora_configs, lambda c: llm.generate(prompts, params, lora_request=c, use_tqdm=False), args.repeat)
    shutdown(llm)

    engine = Engine(model, store, **{k: v for k, v in common.items() if k != "model"})
    mask_configs = {n: [None if n == 0 else f"task{i % n}" for i in range(args.requests)] for n in (0, 1, 4, 8)}
    masks = measure(mask_configs, lambda c: engine.generate(prompts, c, params), args.repeat)
    shutdown(engine.llm)

    rows = [("plain vLLM", plain)]
    rows += [(f"vLLM multi-LoRA, {n} adapters (r{args.lora_rank})", tps) for n, tps in lora.items()]
    rows += [(f"maskserve, {n} distinct masks", tps) for n, tps in masks.items()]
    flags = vector_flags()
    print(f"\nmodel {model.name}, dtype {dtype}, CPU flags {flags}; {args.requests} requests x "
          f"{args.tokens} tokens; masks and adapters on layers {LAYERS}, all projections")
    print(f"median of {args.repeat} rounds; every ratio is to plain vLLM in this run")
    print(f"{'configuration':<38} {'tok/s':>8} {'vs plain':>9} {'vs own 0':>9}")
    for label, tps in rows:
        own_zero = lora[0] if "LoRA" in label else masks[0] if "maskserve" in label else plain
        print(f"{label:<38} {tps:>8.1f} {tps / plain:>9.3f} {tps / own_zero:>9.3f}")


if __name__ == "__main__":
    main()

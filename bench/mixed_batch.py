"""Decode throughput with per-request masks: 16 concurrent requests over 0, 1, 4 and 8 distinct masks.

    python bench/mixed_batch.py [--model DIR] [--requests 16] [--tokens 128] [--dtype auto]

Baselines, in the same run: plain vLLM on the same model (no extension), and our engine with no mask. Masks have
the local-MFT shape (layers 20-23, all projections, 10% removed; random positions, which cost what trained ones
do). Every figure is generated tokens / wall seconds for the whole batch, best of --repeat, after a warm-up.
"""

import argparse
import gc
import tempfile
import time
from pathlib import Path


def throughput(generate, repeat: int) -> float:
    generate()  # warm-up
    best = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        outputs = generate()
        elapsed = time.perf_counter() - started
        best = max(best, sum(len(o.outputs[0].token_ids) for o in outputs) / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128, help="generated tokens per request")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--layers", default="20-23")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    from mask_store.default_model import default_model_dir
    from mask_store.store import Store
    from runtime.engine import Engine
    from mask_store.format import save_mask
    from runtime.requests import default_engine_args
    from trainer.baselines import baseline_mask

    model = Path(args.model) if args.model else default_model_dir()
    work = Path(tempfile.mkdtemp(prefix="bench-mixed-"))
    store = Store(work / "store")
    for i in range(8):
        save_mask(baseline_mask(model, "random", args.layers, "all", 0.1, seed=i), work / f"{i}.mask")
        store.push(work / f"{i}.mask", f"task{i}")

    prompts = [f"Write a long story about a robot number {i} who learns to paint." for i in range(args.requests)]
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    engine_args = dict(dtype=args.dtype, max_model_len=1024, max_num_seqs=args.requests)

    plain_args = {k: v for k, v in default_engine_args(model=str(model), **engine_args).items()
                  if k != "worker_extension_cls"}
    llm = LLM(**plain_args)
    dtype = llm.llm_engine.model_config.dtype
    plain = throughput(lambda: llm.generate(prompts, params, use_tqdm=False), args.repeat)
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()

    engine = Engine(model, store, **engine_args)
    rows = [("plain vLLM (no extension)", plain)]
    for distinct in (0, 1, 4, 8):
        masks = [None if distinct == 0 else f"task{i % distinct}" for i in range(args.requests)]
        rows.append((f"maskserve, {distinct} distinct masks", throughput(
            lambda m=masks: engine.generate(prompts, m, params), args.repeat)))
    engine.llm.llm_engine.engine_core.shutdown()

    ours_base = rows[1][1]
    print(f"\nmodel {model.name}, dtype {dtype}, {args.requests} requests x {args.tokens} tokens, "
          f"masks on layers {args.layers} (all projections, 10%)")
    print(f"{'configuration':<34} {'tok/s':>8} {'vs plain':>9} {'vs ours, no mask':>17}")
    for label, tps in rows:
        print(f"{label:<34} {tps:>8.1f} {tps / plain:>9.3f} {tps / ours_base:>17.3f}")


if __name__ == "__main__":
    main()

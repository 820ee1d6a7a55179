"""Decode throughput with per-request masks: 16 concurrent requests over 0, 1, 4 and 8 distinct masks.

    python bench/mixed_batch.py [--model DIR] [--requests 16] [--tokens 128] [--dtype auto]

Baselines, in the same run: our engine with no mask (the primary baseline: same engine, and its rounds are
interleaved with the masked ones in a shuffled order so drift hits every configuration alike) and plain vLLM on the
same model without the extension (a separate engine, started first). Masks have the local-MFT shape (layers 20-23,
all projections, 10% removed; random positions, which cost what trained ones do). Each figure is generated tokens
/ wall seconds for the whole batch, the median of --repeat rounds after a warm-up.
"""

import argparse
import gc
import random
import statistics
import tempfile
import time
from pathlib import Path


def tokens_per_s(generate) -> float:
    started = time.perf_counter()
    outputs = generate()
    return sum(len(o.outputs[0].token_ids) for o in outputs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128, help="generated tokens per request")
    parser.add_argument("--repeat", type=int, default=5)
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
    run_plain = lambda: llm.generate(prompts, params, use_tqdm=False)  # noqa: E731
    run_plain()  # warm-up
    plain = statistics.median(tokens_per_s(run_plain) for _ in range(args.repeat))
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()

    engine = Engine(model, store, **engine_args)
    configs = {distinct: [None if distinct == 0 else f"task{i % distinct}" for i in range(args.requests)]
               for distinct in (0, 1, 4, 8)}
    for masks in configs.values():
        engine.generate(prompts, masks, params)  # warm-up; loads the masks
    samples = {distinct: [] for distinct in configs}
    order = list(configs)
    for _ in range(args.repeat):
        random.shuffle(order)
        for distinct in order:
            samples[distinct].append(tokens_per_s(lambda m=configs[distinct]: engine.generate(prompts, m, params)))
    engine.llm.llm_engine.engine_core.shutdown()

    rows = [("plain vLLM (no extension)", plain)]
    rows += [(f"maskserve, {d} distinct masks", statistics.median(samples[d])) for d in configs]
    ours_base = rows[1][1]
    print(f"\nmodel {model.name}, dtype {dtype}, {args.requests} requests x {args.tokens} tokens, "
          f"masks on layers {args.layers} (all projections, 10%)")
    print(f"median of {args.repeat} rounds; the ratio to 'ours, no mask' is the primary figure")
    print(f"{'configuration':<34} {'tok/s':>8} {'vs plain':>9} {'vs ours, no mask':>17}")
    for label, tps in rows:
        print(f"{label:<34} {tps:>8.1f} {tps / plain:>9.3f} {tps / ours_base:>17.3f}")


if __name__ == "__main__":
    main()

"""The cost of per-request masks in one decode step, without vLLM: where bench/mixed_batch.py's ratios come from.

    python bench/masked_forward.py [--model DIR] [--requests 16] [--threads 1] [--dtype bfloat16]

One forward of --requests single-token rows (a decode step's linear layers, which dominate it) through the same
slots, correction op and MaskBank the vLLM worker runs, on transformers, with 0, 1, 4 and 8 distinct masks (local-MFT
shape: layers 20-23, all projections, 10% removed) spread round-robin over the rows. Prints, per mask count, the
step time, the extra time the corrections cost, the removed weights they read, and the ratio to the no-mask step
in the same process (rounds interleaved, medians). One thread by default: vLLM's CPU worker runs torch on one.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32"],
                        help="default: the dtype that is fast on this CPU")
    parser.add_argument("--layers", default="20-23")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from mask_store.default_model import default_model_dir
    from mask_store.format import save_mask
    from runtime.reference import HFMaskedModel
    from runtime.requests import fast_dtype, vector_flags
    from trainer.baselines import baseline_mask

    model_dir = Path(args.model) if args.model else default_model_dir()
    dtype = args.dtype or fast_dtype()
    served = HFMaskedModel(model_dir, max_masks=8)
    served.model.to(getattr(torch, dtype))  # the slot pools stay fp32: they are not parameters
    work = Path(tempfile.mkdtemp(prefix="bench-forward-"))
    digests = []
    for i in range(8):
        save_mask(baseline_mask(model_dir, "random", args.layers, "all", 0.1, seed=i), work / f"{i}.mask")
        digests.append(served.bank.load(work / f"{i}.mask").digest)
    nnz = {d: served.bank.loaded[d].entries for d in digests}

    input_ids = torch.randint(0, served.tokenizer.vocab_size, (args.requests, 1))
    counts = [0, 1, 4, 8]
    rows = {k: [digests[r % k] if k else None for r in range(args.requests)] for k in counts}
    times: dict[int, list[float]] = {k: [] for k in counts}
    for round_ in range(args.repeat + 1):  # round 0 warms up
        for k in counts:
            started = time.perf_counter()
            served.logits(input_ids, rows[k])
            if round_:
                times[k].append(time.perf_counter() - started)

    base = statistics.median(times[0])
    flags = vector_flags()
    print(f"{args.requests} rows, {args.threads} thread(s), {dtype}, CPU flags {flags}; "
          f"medians of {args.repeat} interleaved rounds")
    print(f"{'masks':>5} {'step ms':>8} {'extra ms':>9} {'removed weights read':>21} {'ns/weight':>10} {'ratio':>6}")
    for k in counts:
        step = statistics.median(times[k])
        read = sum(nnz[d] for d in digests[:k])
        per_weight = f"{(step - base) / read * 1e9:.2f}" if k else "-"
        print(f"{k:>5} {step * 1e3:8.2f} {(step - base) * 1e3:9.2f} {read:21,} {per_weight:>10} {base / step:6.3f}")


if __name__ == "__main__":
    main()

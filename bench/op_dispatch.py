"""What calling the correction through a registered op costs, per call, for each way of registering it.

    python bench/op_dispatch.py [--calls 2000] [--rounds 5]

A step calls `maskserve::masked_correction` once per masked linear layer (28 for a band of 4 SmolLM2 layers), for
masked and unmasked batches alike. Here one layer's CPU kernel (runtime/correction.py `_cpu`, a 1536 x 576
projection, 16 rows) is called three ways in alternating rounds, in one process:
  - directly, as a Python function;
  - through `torch.ops.maskserve.masked_correction`: a `torch.library.Library` definition with one kernel per
    dispatch key, as vLLM's `direct_register_custom_op` registers vLLM's ops (what runtime/correction.py does);
  - through the same kernel wrapped in `torch.library.custom_op` (what runtime/correction.py did before).
for a batch with no masked row (the kernel returns at once: the cost is the dispatch) and one with 2 rows of one
mask. Printed: microseconds per call, medians of the rounds, and the CPU flags.
"""

import argparse
import statistics
import time

import numpy as np
import torch


def one_layer(out_features: int = 1536, in_features: int = 576, slots: int = 8, ratio: float = 0.1):
    """A slot table's arguments for one layer: every slot removes `ratio` of each row, at random columns."""
    from runtime import correction

    per_row = int(ratio * in_features)
    rng = np.random.default_rng(0)
    crow = torch.arange(out_features + 1, dtype=torch.int32).mul(per_row).repeat(slots, 1)
    cols = torch.from_numpy(np.stack([np.concatenate([np.sort(rng.choice(in_features, per_row, replace=False))
                                                      for _ in range(out_features)]) for _ in range(slots)]))
    cols = cols.to(torch.int32)
    vals = torch.randn(slots, cols.shape[1])
    seg = torch.zeros(slots, dtype=torch.int64)
    layer = correction.new_layer_id(slots)
    for s in range(slots):
        correction.set_view(layer, s, correction.csr_view(crow, seg, cols, vals, s, (out_features, in_features)))
    return crow, seg, cols, vals, layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as vLLM's CPU worker runs

    from runtime import correction
    from runtime.requests import vector_flags

    @torch.library.custom_op("maskserve_bench::custom_op_correction", mutates_args=("y",))
    def via_custom_op(y: torch.Tensor, x: torch.Tensor, slots: torch.Tensor, crow: torch.Tensor, seg: torch.Tensor,
                      cols: torch.Tensor, vals: torch.Tensor, layer: int) -> None:
        correction._cpu(y, x, slots, crow, seg, cols, vals, layer)

    crow, seg, cols, vals, layer = one_layer()
    rows = 16
    x, y = torch.randn(rows, 576), torch.randn(rows, 1536)
    ways = {"direct call": correction._cpu, "Library op (now)": torch.ops.maskserve.masked_correction,
            "torch.library.custom_op": via_custom_op}
    batches = {"no masked row": [-1] * rows, "2 rows, 1 mask": [0, 0] + [-1] * (rows - 2)}
    print(f"CPU flags {vector_flags()}; 1 thread; {args.calls} calls per round, median of {args.rounds}")
    print(f"{'':<26}" + "".join(f"{b:>18}" for b in batches))
    results = {w: {b: [] for b in batches} for w in ways}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for way, call in (ways.items() if round_ % 2 else reversed(ways.items())):
            for batch, mapping in batches.items():
                slots = torch.tensor(mapping, dtype=torch.int32)
                calls = args.calls if batch == "no masked row" else args.calls // 10
                started = time.perf_counter()
                for _ in range(calls):
                    call(y, x, slots, crow, seg, cols, vals, layer)
                if round_:
                    results[way][batch].append(1e6 * (time.perf_counter() - started) / calls)
    for way in ways:
        print(f"{way:<26}" + "".join(f"{statistics.median(results[way][b]):>16.1f}us" for b in batches))


if __name__ == "__main__":
    main()

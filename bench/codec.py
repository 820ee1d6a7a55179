"""Codec size and speed on random masks: bits per entry vs the entropy bound H(p), and M entries/s.

    python bench/codec.py [--size 20000000] [--repeat 5]

"entries" are all entries of the masked tensor (kept and removed). Times are the best of --repeat runs after a
warm-up, single process. The last columns show bitarray's sparse compression (`sc_encode`) on the same masks as a
well-known baseline for the size.
"""

import argparse
import math
import time

import numpy as np
from bitarray import bitarray
from bitarray.util import sc_encode

from mask_store import codec


def best_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = args.size
    rng = np.random.default_rng(0)
    print(f"{n:,} entries per mask, best of {args.repeat}")
    print(f"{'p':>5} {'codec':>14} {'bits/entry':>10} {'H(p)':>7} {'ratio':>7} {'enc M/s':>8} {'dec M/s':>8} "
          f"{'sc_encode ratio':>15}")
    for p in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5):
        removed = np.flatnonzero(rng.random(n) < p)
        name, payload = codec.encode(removed, n)
        assert np.array_equal(codec.decode(name, payload, n, len(removed)), removed)
        t_enc = best_time(lambda: codec.encode(removed, n), args.repeat)
        t_dec = best_time(lambda: codec.decode(name, payload, n, len(removed)), args.repeat)
        q = len(removed) / n
        h = -(q * math.log2(q) + (1 - q) * math.log2(1 - q))
        bits = 8 * len(payload) / n
        bits_arr = bitarray(n)
        bits_arr.setall(0)
        bits_arr[removed.tolist()] = 1
        sc_ratio = 8 * len(sc_encode(bits_arr)) / n / h
        print(f"{p:>5} {name:>14} {bits:>10.5f} {h:>7.5f} {bits / h:>7.4f} {n / t_enc / 1e6:>8.0f} {n / t_dec / 1e6:>8.0f} "
              f"{sc_ratio:>15.3f}")


if __name__ == "__main__":
    main()

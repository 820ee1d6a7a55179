"""Many masks through the HTTP server: a large store, Zipf-distributed traffic, more masks than slots.

    python bench/many_masks.py [--model DIR] [--masks 1000] [--slots 8] [--requests 400] [--concurrency 16]
                               [--tokens 16] [--zipf 1.1] [--layers 23-23] [--work DIR]

Pushes --masks random masks (--layers, all projections, 10% removed), starts mask-serve with --max-masks --slots,
then sends the same request stream twice: once with every request on the base model (the baseline), once with each
request's mask drawn from a Zipf law over the masks (rank k has weight 1/k^s), so a few masks are hot and most are
cold. Prints throughput (completion tokens / wall seconds) as a ratio to the baseline, p50/p99 time to first token
for requests whose mask was cold (the server loaded it to admit them: their `x-mask-loaded` header) and warm, and
the loads and evictions the server counted (its /metrics).
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


async def stream(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[float | None], list[bool]]:
    """Send every body with at most `concurrency` in flight; (tokens/s, per-request TTFT, per-request cold)."""
    limit = asyncio.Semaphore(concurrency)
    ttft: list[float | None] = [None] * len(bodies)
    cold = [False] * len(bodies)
    tokens = 0

    async def send(i: int, client: httpx.AsyncClient) -> None:
        nonlocal tokens
        async with limit:
            started = time.perf_counter()
            async with client.stream("POST", f"{url}/v1/completions", json={**bodies[i], "stream": True}) as r:
                r.raise_for_status()
                cold[i] = r.headers.get("x-mask-loaded") == "1"
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and (json.loads(line[6:]).get("choices") or [{}])[0].get("text"):
                        ttft[i] = ttft[i] or time.perf_counter() - started
                        tokens += 1

    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        await asyncio.gather(*(send(i, client) for i in range(len(bodies))))
        return tokens / (time.perf_counter() - started), ttft, cold


def scrape(url: str, metric: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--masks", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--layers", default="23-23")
    parser.add_argument("--dtype", default=None, help="default: the dtype that is fast on this CPU")
    parser.add_argument("--work", help="folder for the store and logs, reused across runs (default: a new one)")
    args = parser.parse_args()

    from tqdm import tqdm

    from mask_store.default_model import default_model_dir
    from mask_store.format import save_mask
    from mask_store.store import Store
    from runtime.requests import CPU_KV_CACHE_BYTES, fast_dtype, vector_flags
    from serve.launch import free_port, start, stop, wait_healthy
    from trainer.baselines import baseline_mask

    model = Path(args.model) if args.model else default_model_dir()
    dtype = args.dtype or fast_dtype()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-many-"))
    store = Store(work / "store")
    stored = {r.name for r in store.versions()}
    for i in tqdm(range(args.masks), desc="masks"):
        if f"task{i}" not in stored:  # a --work folder keeps its masks from the last run
            save_mask(baseline_mask(model, "random", args.layers, "all", 0.1, seed=i), work / "m.mask")
            store.push(work / "m.mask", f"task{i}")

    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, args.masks + 1) ** args.zipf
    drawn = rng.choice(args.masks, size=args.requests, p=weights / weights.sum())
    masks = [f"task{int(k)}" for k in drawn]
    name = model.name

    def bodies(with_masks: bool, tag: str) -> list[dict]:
        return [{"model": name, "prompt": f"<{tag}-{i}> Write a story about masks.", "max_tokens": args.tokens,
                 "temperature": 0, "ignore_eos": True, **({"mask": m} if with_masks else {})}
                for i, m in enumerate(masks)]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "serve.cli", "--model", str(model), "--served-model-name", name, "--dtype", dtype,
            "--max-model-len", "1024", "--max-num-seqs", str(args.concurrency), "--max-masks", str(args.slots),
            "--store", store.uri, "--ab-db", str(work / "ab.sqlite"), "--port", str(port),
            "--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES)]
    proc = start(argv, work / "server.log")
    try:
        wait_healthy(url, proc, work / "server.log")
        asyncio.run(stream(url, bodies(False, "warmup")[: args.concurrency], args.concurrency))
        base_tps, base_ttft, _ = asyncio.run(stream(url, bodies(False, "base"), args.concurrency))
        counters = ("maskserve_mask_load_seconds_count", "maskserve_mask_evictions_total")
        before = [scrape(url, c) for c in counters]
        mask_tps, mask_ttft, loaded = asyncio.run(stream(url, bodies(True, "masks"), args.concurrency))
        loads, evictions = (scrape(url, c) - b for c, b in zip(counters, before))
    finally:
        stop(proc)

    cold = [t for t, c in zip(mask_ttft, loaded) if c and t is not None]
    warm = [t for t, c in zip(mask_ttft, loaded) if not c and t is not None]
    base = [t for t in base_ttft if t is not None]

    def pct(values: list[float], q: float) -> str:
        return f"{1e3 * float(np.percentile(values, q)):8.1f}" if values else "     n/a"

    flags = vector_flags()
    print(f"\nmodel {name}, dtype {dtype}, CPU flags {flags}; {args.masks} masks (layers {args.layers}, 10%), "
          f"{args.slots} slots; {args.requests} requests, {args.concurrency} at a time, {args.tokens} tokens; "
          f"Zipf s={args.zipf}: {len(set(masks))} distinct masks requested")
    print(f"throughput: base {base_tps:.1f} tok/s, masks {mask_tps:.1f} tok/s, ratio {mask_tps / base_tps:.3f}")
    print(f"{'TTFT (ms)':<28} {'n':>5} {'p50':>8} {'p99':>8}")
    for label, values in (("base", base), ("mask, warm", warm), ("mask, cold (loaded for it)", cold)):
        print(f"{label:<28} {len(values):>5} {pct(values, 50)} {pct(values, 99)}")
    print(f"loads {loads:.0f}, evictions {evictions:.0f} (counted by the server)")


if __name__ == "__main__":
    main()

"""Server overhead: mask-serve with no mask vs plain vLLM's OpenAI server, and first-request TTFT of a cold mask.

    python bench/server_overhead.py [--model DIR] [--concurrency 16] [--tokens 64] [--rounds 3] [--cold-masks 6]

Both servers run the same model with the same engine options (vLLM's default compilation), side by side (the idle one waits), and get the same
load in alternating rounds: --concurrency streams of --tokens tokens (ignore_eos), --rounds rounds each; throughput
is completion tokens / wall seconds, median round. Alternating in one run keeps machine drift out of the ratio.
Then, on mask-serve: time to first token of a streaming request for the base model, for masks the server has never
loaded (each mask's first request), and for the same masks again. Prompts carry a unique prefix so the prefix cache
never answers for them.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx


async def one(client: httpx.AsyncClient, url: str, body: dict) -> tuple[float | None, int]:
    """Stream one completion; returns (seconds to first token, tokens)."""
    started = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or []
            if choices and choices[0].get("text"):
                first = first or time.perf_counter() - started
                tokens += 1
    return first, tokens


async def round_tps(url: str, model: str, concurrency: int, tokens: int, tag: str) -> float:
    bodies = [{"model": model, "prompt": f"[{tag}-{i}] Write a story about masks.", "max_tokens": tokens,
               "temperature": 0, "ignore_eos": True} for i in range(concurrency)]
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(one(client, url, b) for b in bodies))
        return sum(n for _, n in results) / (time.perf_counter() - started)


async def ttfts(url: str, model: str, masks: list[str | None], tag: str) -> list[float]:
    out = []
    async with httpx.AsyncClient(timeout=600) as client:
        for i, mask in enumerate(masks):
            body = {"model": model, "prompt": f"<{tag}-{i}-{time.time_ns()}> Hello there, how are you today?",
                    "max_tokens": 4, "temperature": 0, **({"mask": mask} if mask else {})}
            out.append((await one(client, url, body))[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--cold-masks", type=int, default=6)
    parser.add_argument("--dtype", default=None, help="default: the dtype that is fast on this CPU")
    args = parser.parse_args()

    from mask_store.default_model import default_model_dir
    from mask_store.format import save_mask
    from mask_store.store import Store
    from runtime.requests import CPU_KV_CACHE_BYTES, cpu_flags, fast_dtype
    from serve.launch import free_port, start, stop, wait_healthy
    from trainer.baselines import baseline_mask

    model = Path(args.model) if args.model else default_model_dir()
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    store = Store(work / "store")
    for i in range(args.cold_masks):
        save_mask(baseline_mask(model, "random", "20-23", "all", 0.1, seed=i), work / f"{i}.mask")
        store.push(work / f"{i}.mask", f"task{i}")
    name = model.name
    dtype = args.dtype or fast_dtype()
    engine = ["--model", str(model), "--served-model-name", name, "--dtype", dtype, "--max-model-len", "1024",
              "--enable-prefix-caching", "--max-num-seqs", str(args.concurrency)]  # vLLM's default compilation
    if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidia0").exists():
        engine += ["--kv-cache-memory-bytes", str(CPU_KV_CACHE_BYTES)]

    servers = {}
    try:
        for label, argv in (("plain", [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *engine,
                                       "--host", "127.0.0.1"]),
                            ("ours", [sys.executable, "-m", "serve.cli", *engine, "--store", store.uri,
                                      "--ab-db", str(work / "ab.sqlite")])):
            port = free_port()
            servers[label] = (f"http://127.0.0.1:{port}", start([*argv, "--port", str(port)], work / f"{label}.log"))
            wait_healthy(servers[label][0], servers[label][1], work / f"{label}.log")  # one at a time: less contention
        runs = {"plain": [], "ours": []}
        for round_ in range(args.rounds + 1):  # round 0 warms both up
            for label in (("plain", "ours") if round_ % 2 else ("ours", "plain")):
                tps = asyncio.run(round_tps(servers[label][0], name, args.concurrency, args.tokens, f"{round_}"))
                if round_:
                    runs[label].append(tps)
        url = servers["ours"][0]
        base = asyncio.run(ttfts(url, name, [None] * args.cold_masks, "base"))
        masks = [f"task{i}" for i in range(args.cold_masks)]
        cold = asyncio.run(ttfts(url, name, masks, "cold"))
        warm = asyncio.run(ttfts(url, name, masks, "warm"))
    finally:
        for _, proc in servers.values():
            stop(proc)

    med = statistics.median
    plain_tps, ours_tps = med(runs["plain"]), med(runs["ours"])
    flags = " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx", "amx"))))
    print(f"\nmodel {name}, dtype {dtype}, CPU flags {flags}; {args.concurrency} concurrent streams x {args.tokens} "
          f"tokens, median of {args.rounds} alternating rounds")
    print(f"{'server':<28} {'tok/s':>8} {'ratio':>7}")
    print(f"{'plain vLLM':<28} {plain_tps:>8.1f} {1.0:>7.3f}")
    print(f"{'mask-serve, no mask':<28} {ours_tps:>8.1f} {ours_tps / plain_tps:>7.3f}")
    print(f"\nTTFT on mask-serve, median of {args.cold_masks} (ms)")
    print(f"{'base':<28} {1e3 * med(base):>8.1f}")
    print(f"{'mask, first request (cold)':<28} {1e3 * med(cold):>8.1f}  (+{1e3 * (med(cold) - med(base)):.1f} vs base)")
    print(f"{'mask, loaded (warm)':<28} {1e3 * med(warm):>8.1f}  (+{1e3 * (med(warm) - med(base)):.1f} vs base)")


if __name__ == "__main__":
    main()

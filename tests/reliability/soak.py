"""Soak: a mask-serve on the tiny random Llama under mixed load at a steady rate for a number of minutes; prints, for
the first and the last minute side by side, the requests, errors, wrong answers, latency p50/p99 and the resident
memory of the server's process group. Not a pytest test: run it by hand.

    .venv/bin/python tests/reliability/soak.py [--minutes 10] [--rate 8] [--masks 12] [--max-masks 8]

The load mixes /v1/completions and /v1/chat/completions, streamed and not, the base model, every mask (more masks
than slots by default, so masks are evicted and loaded again) and an A/B experiment. Requests arrive on a fixed
schedule (open loop), whatever the server's pace; every answer is checked against the same request run alone at
the start. Exits 1 if any request failed or answered differently. Everything lives in a temporary folder, and the
server is stopped at the end, also on Ctrl-C.
"""

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx  # noqa: E402
import yaml  # noqa: E402

from runtime.requests import vector_flags  # noqa: E402
from tests.reliability.harness import Call, group_rss_bytes, percentiles, run_alone, send, serving  # noqa: E402

MAX_IN_FLIGHT = 256  # arrivals beyond this many unanswered requests are counted as dropped, not queued forever


def calls_for(masks: list[str], users: list[str]) -> list[Call]:
    targets = [(None, None)] + [(m, None) for m in masks] + [("ab:exp", u) for u in users]
    return [Call(route, stream, mask, prompt, user) for route in ("completions", "chat") for stream in (False, True)
            for prompt in (0, 1) for mask, user in targets]


class Minute:
    def __init__(self):
        self.latencies: list[float] = []
        self.errors = 0
        self.wrong = 0
        self.dropped = 0
        self.rss: list[int] = []

    def row(self) -> dict[str, str]:
        lat = percentiles(self.latencies, (50, 99))
        rss = max(self.rss, default=0) / 2**20
        return {"requests": str(len(self.latencies) + self.errors), "errors": str(self.errors),
                "wrong answers": str(self.wrong), "dropped": str(self.dropped),
                "latency p50": f"{lat[50] * 1e3:.0f} ms", "latency p99": f"{lat[99] * 1e3:.0f} ms",
                "RSS (group, max)": f"{rss:.0f} MiB"}


async def drive(url: str, pgid: int, calls: list[Call], solo: dict, minutes: float, rate: float) -> list[Minute]:
    rng = random.Random(0)
    buckets = [Minute() for _ in range(max(1, int(minutes + 0.999)))]
    began = time.monotonic()
    end = began + minutes * 60
    pending: set[asyncio.Task] = set()

    def bucket(at: float) -> Minute:
        return buckets[min(len(buckets) - 1, int((at - began) // 60))]

    async def one(client: httpx.AsyncClient, call: Call, at: float) -> None:
        answer = await send(client, call)
        b = bucket(at)
        if answer.status != 200:
            b.errors += 1
        else:
            b.latencies.append(answer.latency_s)
            b.wrong += answer.same_output() != solo[call].same_output()

    async def sample_rss() -> None:
        while time.monotonic() < end:
            bucket(time.monotonic()).rss.append(group_rss_bytes(pgid))
            await asyncio.sleep(5)  # a sampling period

    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        sampler = asyncio.create_task(sample_rss())
        n = 0
        while (due := began + n / rate) < end:
            await asyncio.sleep(max(0.0, due - time.monotonic()))  # the arrival schedule
            if len(pending) >= MAX_IN_FLIGHT:
                bucket(due).dropped += 1
            else:
                task = asyncio.create_task(one(client, rng.choice(calls), due))
                pending.add(task)
                task.add_done_callback(pending.discard)
            n += 1
        await asyncio.gather(*pending)
        await sampler
    return buckets


def report(buckets: list[Minute], args, wall_s: float) -> None:
    first, last = buckets[0].row(), buckets[-1].row()
    total = Minute()
    for b in buckets:
        total.latencies += b.latencies
        total.errors += b.errors
        total.wrong += b.wrong
        total.dropped += b.dropped
        total.rss += b.rss
    whole = total.row()
    print(f"\nsoak: {args.minutes:g} min at {args.rate:g} req/s, {args.masks} masks over {args.max_masks} slots, "
          f"{wall_s:.0f} s wall; {os.cpu_count()} cores, CPU flags: {vector_flags()}")
    print(f"{'':18} {'first minute':>14} {'last minute':>14} {'whole run':>14}")
    for key in first:
        print(f"{key:18} {first[key]:>14} {last[key]:>14} {whole[key]:>14}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10, help="how long to load the server (default 10)")
    parser.add_argument("--rate", type=float, default=8, help="requests per second, arriving on a fixed schedule")
    parser.add_argument("--masks", type=int, default=12, help="distinct masks in the mix")
    parser.add_argument("--max-masks", type=int, default=8, help="the server's mask slots")
    args = parser.parse_args(argv)

    from mask_store.store import Store
    from tests.reliability.harness import push_masks
    from tests.tiny import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="maskserve-soak-") as tmp:
        root = Path(tmp)
        os.environ["MASKSERVE_CACHE"] = str(root / "cache")  # the server's caches stay in the temporary folder
        model = make_tiny_model(root / "tiny")
        store = Store(root / "store")
        masks = [f"s{i}" for i in range(args.masks)]
        push_masks(model, store, masks, root / "masks", seed0=800, tags=["prod"])
        experiments = root / "experiments.yaml"
        experiments.write_text(yaml.safe_dump({"experiments": [
            {"name": "exp", "arms": [{"mask": "s0:prod"}, {"mask": "s1@1"}, {"mask": "base"}]}]}))
        print(f"starting mask-serve (log: {root}/soak-*.log) ...", flush=True)
        with serving(model, store.uri, root, "--experiments", str(experiments), "--max-masks",
                     str(args.max_masks), name="soak") as server:
            calls = calls_for(masks, [f"user-{i}" for i in range(4)])
            solo = run_alone(server.url, calls)
            failed = [c for c, a in solo.items() if a.status != 200]
            if failed:
                print(f"soak: {len(failed)} requests fail on an idle server, e.g. {solo[failed[0]].error}")
                return 1
            print(f"{len(calls)} distinct requests answered alone; loading for {args.minutes:g} min ...", flush=True)
            started = time.monotonic()
            buckets = asyncio.run(drive(server.url, server.proc.pid, calls, solo, args.minutes, args.rate))
            report(buckets, args, time.monotonic() - started)
    bad = sum(b.errors + b.wrong for b in buckets)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

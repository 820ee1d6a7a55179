"""More distinct masks than slots under load: `--max-masks 2`, concurrent requests over 6 masks. Masks are evicted
and loaded again (the load counter grows past 6), no answer is wrong (each equals its solo answer, computed first),
and nothing answers 5xx except 429/503 carrying Retry-After (a server saying its slots are busy), which the client
retries; the final answers must still be right."""

import asyncio
import random

import httpx
import pytest

from mask_store.store import Store
from tests.reliability.harness import ADMIN, Call, metric_sum, push_masks, run_alone, send_all, serving

pytestmark = pytest.mark.reliability

MASKS = [f"e{i}" for i in range(6)]
SLOTS = 2
TOTAL, CONCURRENCY = 96, 32
LOADS = "maskserve_mask_load_seconds_count"


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("eviction")
    store = Store(root / "store")
    push_masks(tiny_model, store, MASKS, root / "masks", seed0=100)
    with serving(tiny_model, store.uri, root, "--max-masks", str(SLOTS), name="eviction") as server:
        yield server


def distinct_calls() -> list[Call]:
    return [Call(route, stream, mask, prompt) for route in ("completions", "chat") for stream in (False, True)
            for prompt in (0, 1) for mask in MASKS]


def test_six_masks_over_two_slots_under_load(server, capsys):
    solo = run_alone(server.url, distinct_calls())
    assert all(a.status == 200 for a in solo.values()), [a.error for a in solo.values() if a.status != 200]
    assert len({solo[Call("completions", False, m, 0)].token_ids for m in MASKS}) == len(MASKS)
    loads_before = metric_sum(server.metrics(), LOADS)
    assert loads_before >= len(MASKS)

    rng = random.Random(1)
    calls = distinct_calls() * 2
    rng.shuffle(calls)
    answers = asyncio.run(send_all(server.url, calls[:TOTAL], CONCURRENCY, retry_busy=5))

    refused = [(a.status, a.retry_after, a.error) for a in answers
               if (a.status >= 500 or a.status == 0) and not (a.status in (429, 503) and a.retry_after)]
    assert not refused, f"{len(refused)} of {TOTAL} requests failed: {refused[:3]}"
    busy = [a for a in answers if a.status in (429, 503)]
    assert not busy, f"{len(busy)} requests still busy after 5 retries"
    wrong = [(c, a.same_output(), solo[c].same_output()) for c, a in zip(calls, answers)
             if a.same_output() != solo[c].same_output()]
    assert not wrong, f"{len(wrong)} answers differ from the same request alone: {wrong[:3]}"

    loads_after = metric_sum(server.metrics(), LOADS)
    assert loads_after > loads_before, "no mask was loaded again under load: the test did not exercise eviction"
    status = httpx.get(f"{server.url}/v1/masks", headers=ADMIN, timeout=10).json()
    assert status["slots"] == SLOTS and len(status["masks"]) <= SLOTS
    with capsys.disabled():
        print(f"\n[eviction] {TOTAL} requests, {CONCURRENCY} at a time, over {len(MASKS)} masks and {SLOTS} slots: "
              f"{loads_before:.0f} mask loads while computing solo answers, {loads_after:.0f} after the load")

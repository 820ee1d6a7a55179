"""Load: 200 requests, 32 at a time, over 8 masks, the base model and an A/B experiment whose arms are mask REFs,
streamed and not, on /v1/completions and /v1/chat/completions. Every answer must equal the same request run alone
(greedy: the same token ids, text, serving mask and arm), with no 5xx. Prints latency p50/p95/p99.

A wrong mask, a batch row computed with a neighbour's mask, a KV block shared across masks through the prefix cache
or a stream cut short would each change some answer's token ids. Then a tag moves back and forth under load: every
answer must be exactly that of the version its header names."""

import asyncio
import random
import threading
import time

import pytest
import yaml

from mask_store.store import Store
from tests.reliability.harness import Call, percentiles, push_masks, run_alone, send_all, serving

pytestmark = pytest.mark.reliability

MASKS = [f"m{i}" for i in range(8)]
USERS = [f"user-{i}" for i in range(6)]  # for the experiment: the arm is a hash of (experiment, user)
ARMS = [{"mask": "m1:prod"}, {"mask": "m2@1", "weight": 2}, {"mask": "base"}]
TOTAL, CONCURRENCY = 200, 32
TTL_S = 0.2  # REF resolutions are reused this long: short, so that a tag moving under load is seen at once


@pytest.fixture(scope="module")
def world(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    store = Store(root / "store")
    push_masks(tiny_model, store, MASKS, root / "masks", tags=["prod"])
    push_masks(tiny_model, store, ["moving"], root / "v1", seed0=50, tags=["prod"])
    push_masks(tiny_model, store, ["moving"], root / "v2", seed0=51)
    experiments = root / "experiments.yaml"
    experiments.write_text(yaml.safe_dump({"experiments": [{"name": "exp", "arms": ARMS}]}))
    with serving(tiny_model, store.uri, root, "--experiments", str(experiments), "--resolve-ttl", str(TTL_S),
                 name="load") as server:
        yield {"server": server, "store": store}


@pytest.fixture(scope="module")
def server(world):
    return world["server"]


def distinct_calls() -> list[Call]:
    targets = [(None, None)] + [(m, None) for m in MASKS] + [("ab:exp", u) for u in USERS]
    return [Call(route, stream, mask, prompt, user)
            for route in ("completions", "chat") for stream in (False, True) for prompt in (0, 1)
            for mask, user in targets]


@pytest.fixture(scope="module")
def solo(server):
    answers = run_alone(server.url, distinct_calls())
    bad = {c: a for c, a in answers.items() if a.status != 200}
    assert not bad, f"requests failed on an idle server: {bad}"
    return answers


def test_masks_move_outputs_and_streams_match(solo):
    """The load test can only catch a wrong mask if masks give different answers: here all 9 targets differ."""
    for route in ("completions", "chat"):
        for prompt in (0, 1):
            plain = [solo[Call(route, False, m, prompt)] for m in [None, *MASKS]]
            assert len({a.token_ids for a in plain}) == 9, f"{route} prompt {prompt}: masks do not move the output"
            assert [a.served for a in plain] == ["base"] + [f"{m}@1" for m in MASKS]
            for mask in [None, *MASKS]:
                streamed = solo[Call(route, True, mask, prompt)]
                assert streamed.token_ids == solo[Call(route, False, mask, prompt)].token_ids
                assert streamed.done and all((m or {}).get("name") == mask for m in streamed.chunk_masks)
    arms = {solo[Call("completions", False, "ab:exp", 0, u)].arm for u in USERS}
    assert len(arms) >= 2, f"every user landed on one arm ({arms}): the experiment is not exercised"


def test_200_requests_32_at_a_time_equal_their_solo_answers(server, solo, capsys):
    rng = random.Random(0)
    calls = distinct_calls()
    calls += rng.choices(calls, k=TOTAL - len(calls))
    rng.shuffle(calls)
    started = time.perf_counter()
    answers = asyncio.run(send_all(server.url, calls, CONCURRENCY))
    wall = time.perf_counter() - started

    server_errors = [(c, a.status, a.error) for c, a in zip(calls, answers) if a.status >= 500 or a.status == 0]
    assert not server_errors, f"{len(server_errors)} 5xx or broken responses: {server_errors[:5]}"
    wrong = [(c, a.same_output(), solo[c].same_output()) for c, a in zip(calls, answers)
             if a.same_output() != solo[c].same_output()]
    assert not wrong, f"{len(wrong)} of {TOTAL} answers differ from the same request alone: {wrong[:3]}"
    cut = [c for c, a in zip(calls, answers) if c.stream and not a.done]
    assert not cut, f"streams that did not end with [DONE]: {cut[:3]}"

    lat = percentiles([a.latency_s for a in answers])
    by_stream = {s: percentiles([a.latency_s for c, a in zip(calls, answers) if c.stream == s]) for s in (False, True)}
    with capsys.disabled():
        print(f"\n[load] {TOTAL} requests, {CONCURRENCY} at a time, {wall:.1f} s ({TOTAL / wall:.1f} req/s); latency "
              f"p50 {lat[50] * 1e3:.0f} ms, p95 {lat[95] * 1e3:.0f} ms, p99 {lat[99] * 1e3:.0f} ms "
              f"(non-streamed p50/p99 {by_stream[False][50] * 1e3:.0f}/{by_stream[False][99] * 1e3:.0f} ms, "
              f"streamed {by_stream[True][50] * 1e3:.0f}/{by_stream[True][99] * 1e3:.0f} ms)")


def test_a_tag_moving_under_load_never_mixes_versions(world):
    """While `moving:prod` flips between two versions, each answer is exactly the answer of the version its x-mask
    header names: a request resolved to one version is never computed with the other's mask."""
    server, store = world["server"], world["store"]
    shapes = [(route, stream, prompt) for route in ("completions", "chat") for stream in (False, True)
              for prompt in (0, 1)]
    solo = run_alone(server.url, [Call(r, s, f"moving@{v}", p) for r, s, p in shapes for v in (1, 2)])
    assert all(solo[Call(r, s, "moving@1", p)].token_ids != solo[Call(r, s, "moving@2", p)].token_ids
               for r, s, p in shapes)
    wave = [Call(r, s, "moving:prod", p) for r, s, p in shapes] * 4
    done = threading.Event()

    def flip():
        for i in range(10_000):  # bounded; ends when the load does
            store.tag(f"moving@{2 - i % 2}", "prod")
            if done.wait(TTL_S / 2):  # the flipping period: each resolution the server reuses may be stale
                return

    flipper = threading.Thread(target=flip)
    flipper.start()
    calls, answers = [], []
    try:
        # waves until the server has answered with both versions: a fast machine gets through a wave within one TTL
        for _ in range(50):
            calls += wave
            answers += asyncio.run(send_all(server.url, wave, 16))
            if {a.served for a in answers} >= {"moving@1", "moving@2"} and len(answers) >= 3 * len(wave):
                break
    finally:
        done.set()
        flipper.join()
    assert all(a.status == 200 for a in answers), [a.error for a in answers if a.status != 200][:3]
    served = [a.served for a in answers]
    assert set(served) == {"moving@1", "moving@2"}, f"the tag move was not exercised: {set(served)}"
    mixed = [(c, a.served) for c, a in zip(calls, answers)
             if (a.text, a.token_ids) != (solo[Call(c.route, c.stream, a.served, c.prompt)].text,
                                          solo[Call(c.route, c.stream, a.served, c.prompt)].token_ids)]
    assert not mixed, f"{len(mixed)} answers are not those of the version they name: {mixed[:3]}"

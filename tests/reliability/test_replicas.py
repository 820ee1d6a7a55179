"""Two mask-serve replicas on one S3-compatible store (moto on loopback), each with its own cache and A/B log, as
on two machines. A push and a tag move made by a third party are served by both within a deadline
(`--resolve-ttl 0.5`), with the same answers, and an A/B user lands on the same arm on either replica."""

import asyncio
import boto3
import httpx
import pytest
import yaml

from mask_store.store import Store
from tests.reliability.harness import Call, poll, push_masks, send_all, serving_replicas

pytestmark = pytest.mark.reliability

USERS = [f"user-{i}" for i in range(12)]
DEADLINE_S = 15  # resolutions are cached 0.5 s; S3 round trips on loopback take milliseconds


@pytest.fixture(scope="module")
def world(tiny_model, tmp_path_factory, s3_endpoint):
    root = tmp_path_factory.mktemp("replicas")
    boto3.client("s3").create_bucket(Bucket="replicas")
    store = Store("s3://replicas/team/masks")
    push_masks(tiny_model, store, ["shared", "arm-a", "arm-b"], root / "masks", seed0=500)
    experiments = root / "experiments.yaml"
    experiments.write_text(yaml.safe_dump({"experiments": [
        {"name": "exp", "arms": [{"mask": "arm-a"}, {"mask": "arm-b"}, {"mask": "base"}]}]}))
    caches = [{"MASKSERVE_CACHE": str(root / f"cache{i}")} for i in range(2)]  # S3 blob caches: one per "machine"
    with serving_replicas(tiny_model, store.uri, root, caches, "--experiments", str(experiments),
                          "--resolve-ttl", "0.5") as replicas:
        yield {"store": store, "replicas": replicas, "root": root, "model": tiny_model}


def ask(server, call: Call):
    return asyncio.run(send_all(server.url, [call], 1))[0]


def test_a_push_is_served_by_both_replicas(world):
    store, replicas = world["store"], world["replicas"]
    call = Call("completions", False, "fresh", 0)
    assert all(ask(r, call).status == 404 for r in replicas)
    push_masks(world["model"], store, ["fresh"], world["root"] / "fresh", seed0=600)
    answers = [poll(lambda r=r: (a := ask(r, call)).status == 200 and a, DEADLINE_S, f"{r.url} serves the push")
               for r in replicas]
    assert answers[0].same_output() == answers[1].same_output() and answers[0].served == "fresh@1"
    base = ask(replicas[0], Call("completions", False, None, 0))
    assert answers[0].token_ids != base.token_ids
    for replica in replicas:
        assert "fresh" in {m["id"] for m in httpx.get(f"{replica.url}/v1/models", timeout=10).json()["data"]}


def test_a_tag_move_is_served_by_both_replicas(world):
    store, replicas = world["store"], world["replicas"]
    push_masks(world["model"], store, ["moving"], world["root"] / "v1", seed0=700, tags=["prod"])
    push_masks(world["model"], store, ["moving"], world["root"] / "v2", seed0=701)
    call = Call("chat", True, "moving:prod", 1)
    first = [poll(lambda r=r: (a := ask(r, call)).status == 200 and a, DEADLINE_S, "moving:prod served")
             for r in replicas]
    assert [a.served for a in first] == ["moving@1", "moving@1"]
    store.tag("moving@2", "prod")
    moved = [poll(lambda r=r: (a := ask(r, call)).served == "moving@2" and a, DEADLINE_S, f"{r.url} follows the tag")
             for r in replicas]
    assert moved[0].same_output() == moved[1].same_output()
    assert moved[0].token_ids != first[0].token_ids
    direct = ask(replicas[0], Call("chat", True, "moving@2", 1))
    assert direct.token_ids == moved[0].token_ids


def test_an_ab_user_lands_on_the_same_arm_on_either_replica(world):
    replicas = world["replicas"]
    calls = [Call("completions", False, "ab:exp", 0, user) for user in USERS]
    answers = [asyncio.run(send_all(r.url, calls, 4)) for r in replicas]
    assert all(a.status == 200 for side in answers for a in side)
    arms = [[a.arm for a in side] for side in answers]
    assert arms[0] == arms[1], list(zip(USERS, *arms))
    assert len(set(arms[0])) >= 2, f"every user on one arm: {arms[0]}"
    assert [a.same_output() for a in answers[0]] == [a.same_output() for a in answers[1]]

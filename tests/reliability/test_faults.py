"""Faults, on one mask-serve (restarted once, by (d)):

(a) a client that goes away frees its request (a stream closed after one chunk; a plain request given up on): the
    engine aborts it (nothing stays running or waiting, no request finishes, fewer tokens than asked are
    generated) and maskserve releases the mask (it can be unloaded again);
(b) a blob damaged on disk after its push is refused with 422, every other mask is still served, and pushing the
    file again repairs it;
(c) a read-only store (a read-only bind mount over it when running as root, where chmod stops nothing; chmod -R a-w
    otherwise) refuses a push with exit 1 and one line, leaves the store as it was, and serving goes on, loads from
    the store included;
(d) SIGKILL to the server's process group while admin loads run leaves a store that `mask-store verify` passes, that
    takes the next push, and that a restarted server serves with the same answers as before;
(e) SIGTERM with `--shutdown-timeout` (vLLM's drain mode): sent to the server process alone, a long in-flight
    stream completes; sent to the whole process group, it ends cleanly (an error event and [DONE], no cut
    connection); either way the server exits 0 within a deadline (the group case starts the server a third time).
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from mask_store.store import Store
from serve.launch import wait_healthy
from tests.reliability.harness import (ADMIN, START_TIMEOUT_S, Call, Server, kill_group, metric_sum, poll, push_masks,
                                       run_alone, send_all, shut_down, spawn)
from tests.runtime.helpers import make_mask
from tests.tiny import make_tiny_model

pytestmark = pytest.mark.reliability

MASKS = [f"f{i}" for i in range(4)]
ADMIN_LOADS = [f"k{i}" for i in range(12)]  # more than the 8 slots: the loads evict one another
DRAIN_S = 30
CONTEXT = 8192  # this world's tiny model and --max-model-len: room for a request no machine finishes at once
EXTRA = ["--resolve-ttl", "0", "--shutdown-timeout", str(DRAIN_S), "--max-model-len", str(CONTEXT)]
LONG = 480  # tokens: a stream that runs for a while and still completes well within DRAIN_S on a slow machine
ENDLESS = CONTEXT - 64  # tokens: a request that is still running long after its client went away, however fast
GIVE_UP_S = 1.0  # how long the non-streaming client of (a) waits


class World:
    """The store, the server, and a way to start it again; stops whatever server is current at the end."""

    def __init__(self, model: Path, root: Path):
        self.model, self.root = model, root
        self.store = Store(root / "store")
        self.records = {r.name: r for r in push_masks(model, self.store, MASKS + ADMIN_LOADS, root / "masks", 200)}
        self.server: Server | None = None

    def start(self) -> Server:
        proc, url, log = spawn(self.model, self.store.uri, self.root, *EXTRA, name="faults")
        self.server = Server(proc, url, log)
        wait_healthy(url, proc, log, timeout_s=START_TIMEOUT_S)
        return self.server

    def mask_store(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mask_store.cli", "--store", self.store.uri, *args],
                              capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    world = World(make_tiny_model(root / "tiny", max_position_embeddings=CONTEXT), root)
    try:
        world.start()
        yield world
    finally:
        if world.server is not None:
            shut_down(world.server.proc)


@pytest.fixture(scope="module")
def solo(world):
    calls = [Call("completions", False, m, 0) for m in [None, *MASKS]] + [Call("chat", True, m, 1) for m in MASKS]
    answers = run_alone(world.server.url, calls)
    assert all(a.status == 200 for a in answers.values())
    assert len({a.token_ids for c, a in answers.items() if c.route == "completions"}) == len(MASKS) + 1
    return answers


def check_served(server: Server, solo: dict) -> None:
    answers = asyncio.run(send_all(server.url, list(solo), 4))
    assert [a.same_output() for a in answers] == [s.same_output() for s in solo.values()]


def long_stream_body(mask: str, tokens: int = LONG) -> dict:
    return {"model": "tiny", "prompt": "Tell a long story.", "max_tokens": tokens, "ignore_eos": True,
            "temperature": 0, "stream": True, "mask": mask}


# --- (a) ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
def test_a_client_disconnect_frees_the_request(world, solo, stream):
    """Streamed: the client reads one chunk and closes. Not streamed: the client gives up waiting after GIVE_UP_S."""
    server = world.server
    before = server.metrics()
    if stream:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            with client.stream("POST", "/v1/completions", json=long_stream_body("f0", ENDLESS)) as response:
                assert response.status_code == 200
                first = next(line for line in response.iter_lines() if line.startswith("data: {"))
                assert json.loads(first[6:])["mask"]["name"] == "f0"
            # leaving the block closes the connection after one chunk
    else:
        with pytest.raises(httpx.ReadTimeout):
            # a client giving up after GIVE_UP_S: by then the request runs (its first token takes milliseconds on an
            # idle server), and no machine has generated ENDLESS tokens of it yet
            httpx.post(f"{server.url}/v1/completions", json={**long_stream_body("f0", ENDLESS), "stream": False},
                       timeout=httpx.Timeout(60, read=GIVE_UP_S))

    def idle():
        m = server.metrics()
        return metric_sum(m, "vllm:num_requests_running") == 0 and metric_sum(m, "vllm:num_requests_waiting") == 0

    poll(idle, 30, "nothing running or waiting after the client went away")
    after = server.metrics()
    # aborted, not run to its end: no request finished, and fewer tokens than asked were generated
    assert metric_sum(after, "vllm:request_success_total") == metric_sum(before, "vllm:request_success_total")
    generated = metric_sum(after, "vllm:generation_tokens_total") - metric_sum(before, "vllm:generation_tokens_total")
    assert 1 <= generated < ENDLESS, f"{generated} tokens: the request never ran, or ran to its end"
    # maskserve let go of the mask too: unloading is refused (409) while a request holds it
    unload = lambda: httpx.post(f"{server.url}/v1/masks/unload", json={"mask": "f0"}, headers=ADMIN,
                                timeout=10).status_code == 200
    poll(unload, 30, "f0 released by the disconnected request (unload accepted)")
    check_served(server, solo)


# --- (b) ---------------------------------------------------------------------------------------------------------


def test_b_corrupted_blob_is_refused_and_others_are_served(world, solo):
    server, store = world.server, world.store
    mask_file = make_mask(world.model, world.root / "bad.mask", 0.3, "0-3", "all", seed=250)
    path = store.local_path(store.push(mask_file, "bad"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    refused = asyncio.run(send_all(server.url, [Call("completions", False, "bad", 0), Call("chat", True, "bad", 1)], 2))
    assert [a.status for a in refused] == [422, 422], [a.error for a in refused]
    assert all("bad@1 is damaged" in a.error for a in refused), [a.error for a in refused]
    check_served(server, solo)
    assert world.mask_store("verify").returncode == 1  # the store knows too
    # pushing the file again replaces the damaged blob, and the mask is served
    store.push(mask_file, "bad")
    repaired = asyncio.run(send_all(server.url, [Call("completions", False, "bad@1", 0)], 1))[0]
    assert repaired.status == 200 and repaired.served == "bad@1"
    assert repaired.token_ids != solo[Call("completions", False, None, 0)].token_ids
    assert world.mask_store("verify").returncode == 0


# --- (c) ---------------------------------------------------------------------------------------------------------


@contextmanager
def read_only(path: Path):
    """Make `path` read-only for everyone, root included; yields how."""
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(path)], check=True)
        try:
            yield "chmod -R a-w"
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(path)], check=True)
        return
    bind = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True, text=True)
    if bind.returncode != 0:
        pytest.skip(f"running as root, where chmod does not stop writes, and cannot bind-mount: {bind.stderr.strip()}")
    try:
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"running as root and cannot remount read-only: {remount.stderr.strip()}")
        yield "a read-only bind mount"
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)  # busy: the server has files open


def test_c_read_only_store_fails_pushes_cleanly_and_serving_goes_on(world, solo):
    server, store = world.server, world.store
    # f2 leaves the slots, so serving it below must read its blob from the read-only store again
    assert httpx.post(f"{server.url}/v1/masks/unload", json={"mask": "f2"}, headers=ADMIN, timeout=10).status_code == 200
    before = [(r.ref, r.digest) for r in store.versions()]
    new = make_mask(world.model, world.root / "new.mask", 0.3, "0-3", "all", seed=300)
    with read_only(Path(store.uri)) as how:
        with pytest.raises(OSError):
            (Path(store.uri) / "probe").write_bytes(b"x")  # the store really is read-only
        push = world.mask_store("push", str(new), "--name", "new")
        assert push.returncode != 0, f"push into {how} succeeded: {push.stdout}"
        lines = push.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mask-store: error:"), push.stderr
        assert push.stdout == ""
        check_served(server, solo)
        with httpx.Client(base_url=server.url, headers=ADMIN, timeout=30) as client:
            assert client.get("/v1/masks").status_code == 200
            assert {m["id"] for m in client.get("/v1/models").json()["data"]} >= set(MASKS)
    assert [(r.ref, r.digest) for r in store.versions()] == before, "the failed push changed the store"
    assert world.mask_store("verify").returncode == 0
    assert world.mask_store("push", str(new), "--name", "new").returncode == 0  # writable again: the push goes in


# --- (d) ---------------------------------------------------------------------------------------------------------


def test_d_sigkill_during_admin_loads_leaves_a_consistent_store(world, solo):
    server = world.server

    def load(name: str) -> int:
        try:
            response = httpx.post(f"{server.url}/v1/masks/load", json={"mask": name}, headers=ADMIN, timeout=60)
            return response.status_code
        except httpx.HTTPError:
            return 0  # the server died under it

    with ThreadPoolExecutor(len(ADMIN_LOADS)) as pool:
        futures = [pool.submit(load, name) for name in ADMIN_LOADS]
        wait(futures, timeout=60, return_when=FIRST_COMPLETED)
        kill_group(server.proc, signal.SIGKILL)
        statuses = [f.result() for f in futures]
    server.proc.wait(timeout=30)
    assert 200 in statuses and 0 in statuses, f"the kill did not land while loads ran: {statuses}"

    check = world.mask_store("verify")
    assert check.returncode == 0, check.stdout + check.stderr
    pushed = world.mask_store("push", str(world.root / "masks" / "k0.mask"), "--name", "after-kill")
    assert pushed.returncode == 0 and pushed.stdout.startswith("after-kill@1"), pushed.stdout + pushed.stderr

    restarted = world.start()
    check_served(restarted, solo)
    with httpx.Client(base_url=restarted.url, headers=ADMIN, timeout=60) as client:
        for name in ADMIN_LOADS[:4] + ["after-kill"]:
            assert client.post("/v1/masks/load", json={"mask": name}).status_code == 200


# --- (e) ---------------------------------------------------------------------------------------------------------


def stream_through_sigterm(server: Server, target: int) -> dict:
    """A long stream; after its first token, SIGTERM to `target` (a pid, or minus a process group id); read on."""
    seen = {"status": None, "tokens": 0, "done": False, "finish": None, "errors": [], "transport": None}
    signalled = False
    try:
        with httpx.stream("POST", f"{server.url}/v1/completions", json={**long_stream_body("k1"),
                          "return_token_ids": True}, timeout=DRAIN_S + 60) as response:
            seen["status"] = response.status_code
            for line in response.iter_lines():
                if line == "data: [DONE]":
                    seen["done"] = True
                elif line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        seen["errors"].append(chunk["error"])
                    for choice in chunk.get("choices") or ():
                        seen["tokens"] += len(choice.get("token_ids") or ())
                        seen["finish"] = choice.get("finish_reason") or seen["finish"]
                    if not signalled and seen["tokens"]:
                        os.kill(target, signal.SIGTERM) if target > 0 else os.killpg(-target, signal.SIGTERM)
                        signalled = True
    except httpx.HTTPError as e:
        seen["transport"] = f"{type(e).__name__}: {e}"
    assert signalled, f"no token arrived: {seen}"
    return seen


def exit_code(world: World) -> int:
    proc = world.server.proc
    try:
        return proc.wait(timeout=DRAIN_S + 60)
    finally:
        kill_group(proc)  # engine processes, if any outlived it
        world.server = None


def test_e_sigterm_to_the_server_drains_an_in_flight_stream(world):
    """The API server process alone gets SIGTERM (docker stop, Kubernetes): vLLM drains, the stream completes."""
    seen = stream_through_sigterm(world.server, world.server.proc.pid)
    log = world.server.log
    code = exit_code(world)
    assert seen["status"] == 200 and seen["transport"] is None and not seen["errors"], seen
    assert seen["done"] and seen["finish"] == "length" and seen["tokens"] == LONG, f"not drained: {seen}"
    assert code == 0, f"exit code {code}; end of the log:\n{log.read_text()[-3000:]}"


def test_e_sigterm_to_the_process_group_ends_streams_cleanly(world, capsys):
    """Every process of the group gets SIGTERM (launch.stop, systemd's default KillMode): vLLM's worker exits at
    once, so the stream cannot complete, but it must end cleanly (an error event, then [DONE]) and the server must
    exit 0."""
    server = world.start()
    seen = stream_through_sigterm(server, -server.proc.pid)
    code = exit_code(world)
    assert seen["status"] == 200 and seen["transport"] is None and seen["done"], f"stream not ended cleanly: {seen}"
    completed = seen["finish"] == "length" and seen["tokens"] == LONG and not seen["errors"]
    assert completed or (seen["errors"] and seen["tokens"] < LONG), seen
    with capsys.disabled():
        print(f"\n[faults] SIGTERM to the group: {'completed' if completed else 'ended with an error event'} after "
              f"{seen['tokens']} tokens: {seen['errors'][:1]}")
    assert code == 0, f"exit code {code}; end of the log:\n{server.tail()}"

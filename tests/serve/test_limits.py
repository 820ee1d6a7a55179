"""What a client can make the server keep or send back is bounded: REFs, the resolution cache, bodies, nesting, and
client strings quoted in error messages."""

import asyncio

import pytest

from mask_store.errors import InvalidRef
from mask_store.format import save_mask
from mask_store.store import Store
from serve import protocol
from serve.masks import MaskService
from tests.mask_store.helpers import BASE_A, random_mask

from .fake_vllm import BASE_NAME, FakeEngine, build, connect

HUGE = 2_000_000


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store")
    for i, name in enumerate(["math", "code"]):
        save_mask(random_mask(i), tmp_path / f"{name}.mask")
        store.push(tmp_path / f"{name}.mask", name)
    return store


def _service(store, **kwargs):
    expected = {n: t.shape for n, t in random_mask(0).tensors.items()}
    return MaskService(FakeEngine(), store, "unused", BASE_A, BASE_NAME, expected, **kwargs)


def test_refs_past_the_longest_valid_one_are_refused_and_not_cached(store):
    service = _service(store, resolve_ttl_s=60)
    with pytest.raises(InvalidRef, match="longer than") as refused:
        asyncio.run(service.resolve(" " * 100_000 + "math"))
    assert len(str(refused.value)) < 300
    assert len(service._resolved) == 0


def test_the_longest_valid_ref_is_not_refused_for_its_length(store):
    service = _service(store, resolve_ttl_s=60)
    longest = "a" * 128 + ":" + "t" * 128
    assert len(longest) == protocol.MAX_REF_CHARS
    with pytest.raises(Exception) as e:
        asyncio.run(service.resolve(longest))
    assert "longer than" not in str(e.value)


def test_spellings_of_one_ref_share_one_cache_entry(store):
    service = _service(store, resolve_ttl_s=60)

    async def scenario():
        for pad in range(50):
            await service.resolve(" " * pad + "math" + " " * pad)
        await service.resolve("math:latest")

    asyncio.run(scenario())
    assert len(service._resolved) == 1


def test_the_resolution_cache_is_bounded(store):
    service = _service(store, resolve_ttl_s=60, resolve_cache_size=4)
    digest = store.resolve("math").digest

    async def scenario():
        for n in range(12, 40):  # every digest prefix is a distinct, valid REF
            await service.resolve(digest[:n])
        return await service.resolve(digest[:39])

    assert asyncio.run(scenario()).digest == digest
    assert len(service._resolved) == 4


@pytest.fixture
def small(store, tmp_path):
    app, _ = build(store.uri, BASE_A, tmp_path, max_body_bytes=4096)
    with connect(app) as client:
        yield client


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/masks/load", "/v1/responses"])
def test_bodies_over_the_limit_are_413(small, path):
    body = {"model": BASE_NAME, "prompt": "x" * 5000, "mask": "math"}
    r = small.post(path, json=body)
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["code"] == 413 and "4096" in error["message"] and error["type"]


def test_a_chunked_body_over_the_limit_is_413(small):
    def chunks():
        yield b'{"model": "base-model", "prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    r = small.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_bodies_under_the_limit_pass(small):
    r = small.post("/v1/completions", json={"model": BASE_NAME, "prompt": "x" * 3000})
    assert r.status_code == 200


@pytest.fixture
def server(store, tmp_path):
    app, _ = build(store.uri, BASE_A, tmp_path)
    with connect(app) as client:
        yield client


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/masks/load"])
@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"mask": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"])
def test_deeply_nested_json_is_400(server, path, raw):
    r = server.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text[:200]
    assert r.json()["error"]["code"] == 400


@pytest.mark.parametrize("body", [
    {"mask": "x" * HUGE},
    {"mask": "é" * HUGE},
    {"mask": "ab:" + "x" * HUGE},
    {"model": "m" * HUGE},
    {"mask": "math@" + "9" * HUGE},
])
def test_client_strings_are_not_echoed_in_full(server, body):
    r = server.post("/v1/completions", json={"model": BASE_NAME, "prompt": "x", **body})
    assert 400 <= r.status_code < 500 and len(r.content) < 2000, (r.status_code, len(r.content))


@pytest.mark.parametrize("path, body", [
    ("/v1/masks/load", {"mask": "x" * HUGE}),
    ("/v1/masks/unload", {"mask": "x" * HUGE}),
    ("/v1/feedback", {"id": "x" * HUGE, "score": 1}),
    ("/v1/experiments", {"name": "e", "arms": [{"mask": "base"}, {"mask": "x" * HUGE}]}),
])
def test_admin_and_feedback_routes_do_not_echo_client_strings(server, path, body):
    r = server.post(path, json=body)
    assert 400 <= r.status_code < 500 and len(r.content) < 2000, (r.status_code, len(r.content))


def test_get_experiment_does_not_echo_a_long_name(server):
    r = server.get("/v1/experiments/" + "x" * 8000)
    assert r.status_code == 404 and len(r.content) < 2000


def test_a_ref_that_is_no_mask_is_not_asked_of_the_store_again_within_the_ttl(store, monkeypatch):
    """Every request naming a LoRA adapter as `model` (not a mask) went to the store: on S3, a LIST each time."""
    from mask_store.errors import NotFound

    service = _service(store, resolve_ttl_s=60)
    lookups = []
    real = store.resolve
    monkeypatch.setattr(store, "resolve", lambda ref: lookups.append(ref) or real(ref))

    async def scenario():
        for _ in range(5):
            with pytest.raises(NotFound, match="some-lora"):
                await service.resolve("some-lora")

    asyncio.run(scenario())
    assert len(lookups) == 1

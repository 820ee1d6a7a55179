"""The mask layer of the server (middleware, routes, auth) over a fake vLLM app: fast, no engine."""

import json

import pytest

from mask_store.errors import MaskError
from mask_store.format import save_mask
from mask_store.store import Store
from tests.mask_store.helpers import BASE_A, BASE_B, random_mask

from .fake_vllm import BASE_NAME, build, connect


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store")
    for i, name in enumerate(["math", "math", "code"]):
        path = tmp_path / f"{name}{i}.mask"
        save_mask(random_mask(i), path)
        store.push(path, name, tags=["prod"] if i == 0 else [])
    other = tmp_path / "other.mask"
    save_mask(random_mask(9, base_id=BASE_B), other)
    store.push(other, "foreign")
    return store


@pytest.fixture
def server(store, tmp_path):
    app, engine = build(store.uri, BASE_A, tmp_path)
    with connect(app) as client:
        yield client, engine, store


def complete(client, **body):
    return client.post("/v1/completions", json={"model": BASE_NAME, "prompt": "hi", "max_tokens": 3, **body})


def test_mask_becomes_xargs_and_cache_salt(server):
    client, engine, store = server
    r = complete(client, mask="math:prod")
    assert r.status_code == 200, r.text
    body = r.json()
    record = store.resolve("math@1")
    assert body["mask"] == {"name": "math", "version": 1, "digest": record.digest}
    assert r.headers["x-mask"] == "math@1" and r.headers["x-mask-digest"] == record.digest
    sent = body["received"]
    assert "mask" not in sent
    assert sent["vllm_xargs"]["mask"] == record.digest
    assert sent["cache_salt"].startswith("maskserve:") and record.digest not in sent["cache_salt"]
    # Only a digest and an HMAC token travel: no file path, no key (vLLM's request log prints extra_args).
    assert set(sent["vllm_xargs"]) == {"mask", "mask_token"} and len(sent["vllm_xargs"]["mask_token"]) == 32
    assert [c[0] for c in engine.calls].count("maskserve_load") == 1
    complete(client, mask="math@1")
    # asked again (the workers' bank is the only record of residency), loaded once
    assert [c[0] for c in engine.calls].count("maskserve_load") == 2 and len(engine.loaded) == 1


def test_the_request_that_loads_a_mask_says_so_and_evictions_are_counted(store, tmp_path):
    from prometheus_client import REGISTRY

    def evictions():
        return REGISTRY.get_sample_value("maskserve_mask_evictions_total") or 0

    app, _ = build(store.uri, BASE_A, tmp_path, capacity=1)
    before = evictions()
    with connect(app) as client:
        first, again = complete(client, mask="math@1"), complete(client, mask="math@1")
        assert first.headers["x-mask-loaded"] == "1" and "x-mask-loaded" not in again.headers
        other = complete(client, mask="code")  # one slot: math makes room
        assert other.headers["x-mask-loaded"] == "1" and evictions() == before + 1
        assert "x-mask-loaded" not in complete(client).headers


def test_no_mask_is_the_base_and_says_so_in_a_header(server):
    """A base response is vLLM's own body, untouched (no `mask` field to add, nothing re-encoded)."""
    client, _, _ = server
    r = complete(client)
    assert r.headers["x-mask"] == "base" and "mask" not in r.json()
    assert "vllm_xargs" not in r.json()["received"] and "cache_salt" not in r.json()["received"]
    r = complete(client, mask=None)
    assert r.status_code == 200 and r.headers["x-mask"] == "base" and "mask" not in r.json()


def test_clients_cannot_smuggle_a_mask_or_token(server):
    client, _, _ = server
    forged = {"mask": "0" * 64, "mask_token": "guess", "other": 1}
    r = complete(client, vllm_xargs=forged)
    assert r.json()["received"]["vllm_xargs"] == {"other": 1}
    r = complete(client, mask="code", vllm_xargs=forged)
    sent = r.json()["received"]["vllm_xargs"]
    assert sent["mask_token"] != "guess" and len(sent["mask_token"]) == 32 and sent["other"] == 1


def test_user_cache_salt_is_kept_inside_the_masks_namespace(server):
    client, _, store = server
    plain = complete(client, mask="code").json()["received"]["cache_salt"]
    r = complete(client, mask="code", cache_salt="tenant-7")
    assert r.json()["received"]["cache_salt"] == f"{plain}:tenant-7"


def test_no_client_salt_reaches_a_masks_prefix_cache_namespace(server):
    """Prefix-cache poisoning: digests are public (x-mask-digest, /v1/models), so no salt a client can send on a base
    request may equal the salt of a masked request, and a mask's salts never meet another mask's."""
    client, _, store = server
    digests = [store.resolve(r).digest for r in ("math@1", "math@2", "code")]
    client_salts = [None, "t", "", *digests, *(f"{d}:t" for d in digests), "maskserve", "base:t"]
    masked, base = {}, {}
    for mask in ("math@1", "math@2", "code"):
        for salt in client_salts:
            extra = {} if salt is None else {"cache_salt": salt}
            masked[(mask, salt)] = complete(client, mask=mask, **extra).json()["received"]["cache_salt"]
    for salt in client_salts:
        extra = {} if salt is None else {"cache_salt": salt}
        base[salt] = complete(client, **extra).json()["received"].get("cache_salt")
    assert len(set(masked.values())) == len(masked)  # every (mask, client salt) pair has its own namespace
    assert not set(masked.values()) & set(base.values())
    for reserved in [next(iter(masked.values())), "maskserve:x"]:  # even a leaked salt cannot be replayed
        r = complete(client, cache_salt=reserved)
        assert r.status_code == 400 and "reserved" in r.json()["error"]["message"]


def test_model_field_can_name_a_mask(server):
    client, _, _ = server
    r = client.post("/v1/chat/completions", json={"model": "math", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    assert r.json()["received"]["model"] == BASE_NAME and r.json()["mask"]["version"] == 2


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"mask": "nope"}, 404, "no mask named 'nope'"),
        ({"mask": "math@9"}, 404, "math@9"),
        ({"mask": "foreign"}, 422, BASE_B),
        ({"mask": 5}, 400, "'mask' must be a string"),
        ({"mask": ["math"]}, 400, "'mask' must be a string"),
        ({"mask": "bad/name"}, 400, "invalid mask name"),
        ({"mask": "ab:nothing"}, 404, "no experiment named 'nothing'"),
        ({"model": "gpt-4"}, 404, "neither the served model"),
    ],
)
def test_user_errors_use_the_openai_schema(server, body, status, words):
    client, _, _ = server
    r = complete(client, **body)
    assert r.status_code == status
    error = r.json()["error"]
    assert words in error["message"] and error["type"] and error["code"] == status
    if status == 422:
        assert BASE_A in error["message"]


def test_malformed_json_is_400(server):
    client, _, _ = server
    for raw in (b"{not json", b"[1, 2]"):
        r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "error" in r.json()


def _stream(client, **body):
    with client.stream("POST", "/v1/completions",
                       json={"model": BASE_NAME, "prompt": "hi", "stream": True, **body}) as r:
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    return r, [json.loads(e[6:]) for e in events[:-1]]


def test_streaming_chunks_carry_the_mask(server):
    client, _, store = server
    r, chunks = _stream(client, mask="code")
    assert r.headers["x-mask"] == "code@1"
    assert len(chunks) == 3 and all(c["mask"]["digest"] == store.resolve("code").digest for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello"


def test_streamed_tokens_are_counted_exactly(server):
    """We ask vLLM for the usage chunk to count tokens, and hide it unless the client asked for it too."""
    from prometheus_client import REGISTRY

    client, _, _ = server

    def tokens():
        return REGISTRY.get_sample_value("maskserve_generated_tokens_total", {"mask": "code@1"}) or 0

    before = tokens()
    _, chunks = _stream(client, mask="code")
    assert all(c["choices"] for c in chunks) and tokens() == before + 2
    _, chunks = _stream(client, mask="code", stream_options={"include_usage": True})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2
    assert tokens() == before + 4


def _base_tokens():
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("maskserve_generated_tokens_total", {"mask": "base"}) or 0


def test_base_streams_pass_through_as_vllm_sent_them(server):
    """No usage chunk forced on a base stream, no field spliced in: the chunks are the engine's bytes; tokens are
    still counted when the client's own stream_options bring a usage chunk, and from a plain JSON body."""
    client, _, _ = server
    before = _base_tokens()
    r, chunks = _stream(client)
    assert r.headers["x-mask"] == "base" and len(chunks) == 3
    assert all("mask" not in c for c in chunks)
    assert _base_tokens() == before  # no usage chunk was asked for on the client's behalf
    _, chunks = _stream(client, stream_options={"include_usage": True})
    assert chunks[-1]["usage"]["completion_tokens"] == 2 and _base_tokens() == before + 2
    complete(client)
    assert _base_tokens() == before + 5  # the fake's JSON body reports 3 completion tokens


def test_models_lists_base_and_compatible_masks(server):
    client, _, _ = server
    data = client.get("/v1/models").json()["data"]
    ids = [m["id"] for m in data]
    assert ids == [BASE_NAME, "code", "math"]  # foreign is for another base
    math = data[2]
    assert math["parent"] == BASE_NAME and math["root"] == "math@2" and math["mask"]["tags"] == ["latest"]


def test_tag_moves_are_served_without_restart(server, tmp_path):
    client, _, store = server
    assert complete(client, mask="math:prod").json()["mask"]["version"] == 1
    store.tag("math@2", "prod")
    assert complete(client, mask="math:prod").json()["mask"]["version"] == 2
    path = tmp_path / "new.mask"
    save_mask(random_mask(42), path)
    store.push(path, "math")
    assert complete(client, mask="math").json()["mask"]["version"] == 3


def test_admin_routes_load_unload_and_list(server):
    client, engine, store = server
    r = client.post("/v1/masks/load", json={"mask": "code", "pin": True})
    assert r.status_code == 200 and r.json()["pinned"] is True
    listing = client.get("/v1/masks").json()
    assert [m["ref"] for m in listing["masks"]] == ["code@1"] and listing["masks"][0]["pinned"]
    assert client.post("/v1/masks/unload", json={"mask": "code"}).json()["unloaded"] is True
    assert client.get("/v1/masks").json()["masks"] == []
    assert client.post("/v1/masks/load", json={"mask": "nope"}).status_code == 404
    assert client.post("/v1/masks/load", json={"mask": "foreign"}).status_code == 422
    assert client.post("/v1/masks/load", json={"pin": True}).status_code == 400


def test_a_mask_the_workers_evicted_is_loaded_again(store, tmp_path):
    app, engine = build(store.uri, BASE_A, tmp_path, capacity=1)
    with connect(app) as client:
        assert complete(client, mask="math@1").status_code == 200
        assert complete(client, mask="code").status_code == 200  # evicts math@1 in the workers
        assert complete(client, mask="math@1").status_code == 200
    loads = [digest for method, args in engine.calls if method == "maskserve_load" for _, digest, _ in args[0]]
    math, code = store.resolve("math@1").digest, store.resolve("code").digest
    assert loads == [math, code, math]


def test_a_full_mask_memory_is_503_and_other_requests_go_on(store, tmp_path):
    app, engine = build(store.uri, BASE_A, tmp_path, capacity=1)
    with connect(app) as client:
        assert client.post("/v1/masks/load", json={"mask": "code", "pin": True}).status_code == 200
        r = complete(client, mask="math")
        assert r.status_code == 503
        assert r.json()["error"]["code"] == 503 and "pinned or in use" in r.json()["error"]["message"]
        assert complete(client, mask="code").status_code == 200 and complete(client).status_code == 200


def test_experiment_routing_is_sticky_logged_and_scored(server):
    client, _, _ = server
    spec = {"name": "mathab", "arms": [{"mask": "base", "weight": 1}, {"mask": "math:prod", "weight": 3}]}
    assert client.post("/v1/experiments", json=spec).status_code == 200
    arms = {}
    for i in range(40):
        r = complete(client, mask="ab:mathab", user=f"user{i}", prompt="x" * i)
        assert r.status_code == 200
        arms[f"user{i}"] = r.headers["x-mask-arm"]
        assert r.json()["experiment"] == {"name": "mathab", "arm": r.headers["x-mask-arm"]}
        assert (r.json()["mask"] is None) == (r.headers["x-mask-arm"] == "base")
        score = 1.0 if r.headers["x-mask-arm"] == "math:prod" else 0.0
        assert client.post("/v1/feedback", json={"id": r.json()["id"], "score": score + (i % 3) / 10}).status_code == 200
    for user, arm in list(arms.items())[:10]:  # sticky per user
        assert complete(client, mask="ab:mathab", user=user).headers["x-mask-arm"] == arm
    assert 15 <= list(arms.values()).count("math:prod") <= 38  # weights 1:3, roughly
    assert client.post("/v1/feedback", json={"id": "nope", "score": 1}).status_code == 404
    assert client.post("/v1/feedback", json={"id": "x"}).status_code == 400


def test_a_request_that_fails_inside_vllm_is_still_logged(store, tmp_path):
    from serve.ablog import ABLog, report

    app, _ = build(store.uri, BASE_A, tmp_path)
    with connect(app, raise_server_exceptions=False) as client:
        spec = {"name": "e", "arms": [{"mask": "base", "weight": 1}, {"mask": "math", "weight": 1}]}
        assert client.post("/v1/experiments", json=spec).status_code == 200
        assert complete(client, mask="ab:e", user="u", prompt="crash").status_code == 500
        assert complete(client, mask="ab:e", user="u").status_code == 200
    app.state.maskserve.ablog.flush()
    arms = report(ABLog(tmp_path / "ab.sqlite", create=False), "e")["arms"]
    assert sum(a["requests"] for a in arms) == 2 and sum(a["errors"] for a in arms) == 1


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "x", "arms": [{"mask": "base"}]},
        {"name": "x", "arms": [{"mask": "base"}, {"mask": "base"}]},
        {"name": "x", "arms": [{"mask": "base"}, {"mask": "math", "weight": 0}]},
        {"name": "bad name", "arms": [{"mask": "base"}, {"mask": "math"}]},
        {"name": "x", "arms": [{"mask": "base"}, {"mask": "math@\u0661"}]},  # ARABIC-INDIC DIGIT ONE
        {"name": "x", "arms": [{"mask": "base"}, {"mask": "math\r\nx-evil: 1"}]},
        {"name": "x", "arms": [{"mask": "base"}, {"mask": "math", "name": "a\nb"}]},
        {"name": "x", "arms": [{"mask": "base"}, {"mask": "math", "weight": "Infinity"}]},
        {"name": "x", "arms": [{"mask": "base"}, {"mask": "math", "weight": "NaN"}]},
        {"name": "x", "arms": [{"mask": "base", "weight": 1e308}, {"mask": "math", "weight": 1e308}]},
    ],
)
def test_bad_experiments_are_refused(server, spec):
    client, _, _ = server
    r = client.post("/v1/experiments", json=spec)
    assert r.status_code == 400, r.text
    assert client.get("/v1/experiments/x").status_code == 404


def test_a_bad_arm_in_an_experiments_file_fails_at_start(store, tmp_path):
    """The file is read before the engine starts; a non-ASCII REF there made every request on its arm a 500."""
    path = tmp_path / "exp.yaml"
    path.write_text("experiments:\n  - name: e\n    arms:\n      - {mask: base}\n      - {mask: \"math@\u00b2\"}\n")
    with pytest.raises(MaskError, match="not a valid experiments file.*arms"):
        build(store.uri, BASE_A, tmp_path, experiments_file=str(path))


def test_experiment_with_unknown_mask_is_refused(server):
    client, _, _ = server
    spec = {"name": "x", "arms": [{"mask": "base"}, {"mask": "nope"}]}
    assert client.post("/v1/experiments", json=spec).status_code == 404


def test_experiments_file(store, tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("experiments:\n  - name: fromfile\n    arms:\n      - {mask: base}\n      - {mask: code}\n")
    app, _ = build(store.uri, BASE_A, tmp_path, experiments_file=str(path))
    with connect(app) as client:
        assert client.get("/v1/experiments/fromfile").json()["arms"][1]["mask"] == "code"
        assert complete(client, mask="ab:fromfile", user="u").status_code == 200


def test_a_mask_shaped_for_another_model_is_refused_before_any_worker(store, tmp_path):
    """Same base id, but tensors the served model does not have (or not in that shape): 422, no load RPC."""
    from dataclasses import replace

    from mask_store.mask import TensorMask

    mask = random_mask(5)
    name, tensor = next(iter(mask.tensors.items()))
    cases = {"renamed": {name.replace("layers.0", "layers.7"): tensor},
             "reshaped": {name: TensorMask((tensor.shape[1], tensor.shape[0]), tensor.removed)}}
    for label, tensors in cases.items():
        path = tmp_path / f"{label}.mask"
        save_mask(replace(mask, tensors=tensors), path)
        store.push(path, label)
    app, engine = build(store.uri, BASE_A, tmp_path)
    with connect(app) as client:
        for label in cases:
            r = complete(client, mask=label)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["message"].startswith(f"mask {label}@1")
    assert not [c for c in engine.calls if c[0] == "maskserve_load"]

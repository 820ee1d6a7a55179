"""`mask-serve` end to end: a real server on loopback, the official openai client, outputs checked against the
runtime engine run directly. Slow: starts two vLLM engines."""

import sys

import httpx
import openai
import pytest
from vllm import SamplingParams

from mask_store.store import Store
from runtime.reference import load_model
from serve.cli import main as serve_cli
from serve.launch import free_port, start, stop, wait_healthy
from tests.runtime.helpers import make_mask
from tests.tiny import make_tiny_model

pytestmark = pytest.mark.slow

ENGINE_ARGS = ["--dtype", "float32", "--max-model-len", "512", "--seed", "0"]
ADMIN_KEY = "sk-admin-e2e"  # admin routes are off on a server started without a key
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PROMPT = "Once upon a time, in a land of masks,"
MESSAGES = [{"role": "user", "content": "Tell me about masks."}]


@pytest.fixture(scope="module")
def world(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    store = Store(root / "store")
    for i, name in enumerate(["alpha", "beta"]):
        store.push(make_mask(tiny_model, root / f"{name}.mask", 0.2 + 0.2 * i, "0-3", "all", seed=i), name,
                   tags=["prod"])
    other = make_tiny_model(root / "other", seed=5)
    store.push(make_mask(other, root / "foreign.mask"), "foreign")
    port = free_port()
    proc = start(
        [sys.executable, "-m", "serve.cli", "--model", str(tiny_model), "--store", store.uri, "--port", str(port),
         "--ab-db", str(root / "ab.sqlite"), "--resolve-ttl", "0", "--admin-key", ADMIN_KEY, *ENGINE_ARGS],
        root / "server.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, root / "server.log", timeout_s=300)
    from runtime.engine import Engine

    engine = Engine(tiny_model, store, dtype="float32", max_model_len=512, seed=0)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    yield {"client": client, "engine": engine, "store": store, "url": url, "root": root, "model": tiny_model}
    engine.llm.llm_engine.engine_core.shutdown()
    stop(proc, timeout_s=60)


def expected(world, mask, prompt=PROMPT, max_tokens=12):
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return world["engine"].generate([prompt], [mask], params)[0].outputs[0].text


def chat_prompt(world):
    _, tokenizer = load_model(world["model"])
    return tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize("mask", [None, "alpha", "beta:prod"])
def test_completions_match_the_engine(world, mask):
    client = world["client"]
    body = {"mask": mask} if mask else {}
    raw = client.completions.with_raw_response.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0,
                                                      extra_body=body)
    response = raw.parse()
    assert response.choices[0].text == expected(world, mask)
    if mask:
        record = world["store"].resolve(mask)
        assert raw.headers["x-mask"] == record.ref and response.model_extra["mask"]["digest"] == record.digest
    else:
        assert raw.headers["x-mask"] == "base" and "mask" not in response.model_extra
    stream = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                       extra_body=body)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected(world, mask)
    assert all((c.model_extra.get("mask") or {}).get("name") == (mask.split(":")[0] if mask else None) for c in chunks)
    assert mask or all("mask" not in c.model_extra for c in chunks)  # base chunks are vLLM's own


def test_masks_differ_from_each_other(world):
    assert len({expected(world, m) for m in (None, "alpha", "beta")}) == 3


@pytest.mark.parametrize("stream", [False, True])
def test_chat_matches_the_engine(world, stream):
    client = world["client"]
    want = expected(world, "alpha", chat_prompt(world), max_tokens=10)
    kwargs = dict(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0, extra_body={"mask": "alpha"})
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)
                       if c.choices)
    else:
        text = client.chat.completions.create(**kwargs).choices[0].message.content
    assert text == want
    # "model" naming a mask works too.
    by_model = client.chat.completions.create(**{**kwargs, "model": "alpha", "extra_body": {}})
    assert by_model.choices[0].message.content == want


def test_models_list_masks(world):
    models = {m.id: m for m in world["client"].models.list()}
    assert {"tiny", "alpha", "beta"} <= set(models) and "foreign" not in models
    assert models["alpha"].model_extra["parent"] == "tiny"


def test_moving_a_tag_is_served_on_the_next_request(world):
    client, store = world["client"], world["store"]
    store.push(make_mask(world["model"], world["root"] / "alpha2.mask", 0.5, "1-2", "mlp", seed=11), "alpha")
    before = client.completions.with_raw_response.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0,
                                                         extra_body={"mask": "alpha:prod"})
    assert before.headers["x-mask"] == "alpha@1"
    store.tag("alpha@2", "prod")
    after = client.completions.with_raw_response.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0,
                                                        extra_body={"mask": "alpha:prod"})
    assert after.headers["x-mask"] == "alpha@2"
    assert after.parse().choices[0].text == expected(world, "alpha@2")


def test_ab_experiment_end_to_end(world, capsys):
    client, url = world["client"], world["url"]
    spec = {"name": "ab1", "arms": [{"mask": "base"}, {"mask": "beta", "weight": 1}]}
    assert httpx.post(f"{url}/v1/experiments", json=spec, headers=ADMIN).status_code == 200
    seen = {}
    for i in range(12):
        raw = client.completions.with_raw_response.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0,
                                                          user=f"user-{i}", extra_body={"mask": "ab:ab1"})
        arm = raw.headers["x-mask-arm"]
        response = raw.parse()
        assert response.choices[0].text == expected(world, None if arm == "base" else "beta")
        seen[arm] = seen.get(arm, 0) + 1
        httpx.post(f"{url}/v1/feedback", json={"id": response.id, "score": 1.0 if arm == "beta" else 0.0 + i % 2})
    assert set(seen) == {"base", "beta"}
    assert serve_cli(["ab", "report", "ab1", "--ab-db", str(world["root"] / "ab.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "beta - base" in out and f"{seen['beta']:>8}" in out


def test_errors_and_the_server_keeps_serving(world):
    client, store = world["client"], world["store"]
    with pytest.raises(openai.NotFoundError, match="no mask named"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"mask": "nope"})
    with pytest.raises(openai.UnprocessableEntityError, match="trained on base"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"mask": "foreign"})
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"mask": 3})
    # A blob damaged on disk after it was pushed: refused with 422 when loaded, everything else still served.
    record = store.push(make_mask(world["model"], world["root"] / "bad.mask", 0.3, "0-1", "attn", seed=99), "bad")
    blob = store.local_path(record)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(openai.UnprocessableEntityError, match="checksum"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"mask": "bad"})
    ok = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0,
                                   extra_body={"mask": "alpha@1"})
    assert ok.choices[0].text == expected(world, "alpha@1")


def test_metrics_have_mask_labels(world):
    text = httpx.get(f"{world['url']}/metrics").text
    assert 'maskserve_requests_total{mask="alpha@1",status="200"}' in text
    assert "maskserve_masks_loaded" in text and "vllm:" in text

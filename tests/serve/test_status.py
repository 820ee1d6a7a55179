"""Status codes say whether retrying can help: the official openai client retries 408, 409, 429 and every 5xx, so a
permanent refusal uses a code it does not retry, and a transient one a 503 with Retry-After."""

import openai
import pytest
from fastapi.testclient import TestClient

from mask_store.format import save_mask
from mask_store.store import Store
from tests.mask_store.helpers import BASE_A, BASE_B, random_mask

from .fake_vllm import ADMIN_KEY, BASE_NAME, build, connect


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store")
    for i, name in enumerate(["math", "code"]):
        save_mask(random_mask(i), tmp_path / f"{name}.mask")
        store.push(tmp_path / f"{name}.mask", name)
    save_mask(random_mask(9, base_id=BASE_B), tmp_path / "foreign.mask")
    store.push(tmp_path / "foreign.mask", "foreign")
    return store


class Counting:
    """The app, counting the HTTP requests that reach it."""

    def __init__(self, app):
        self.app, self.requests = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.requests.append(scope["path"])
        await self.app(scope, receive, send)


def _openai(app, **kwargs):
    http = TestClient(app)
    return openai.OpenAI(base_url="http://testserver/v1", api_key=ADMIN_KEY, http_client=http, **kwargs)


def test_a_mask_for_another_base_is_422_and_the_openai_client_does_not_retry(store, tmp_path):
    app, _ = build(store.uri, BASE_A, tmp_path)
    counted = Counting(app)
    client = _openai(counted, max_retries=2)
    with pytest.raises(openai.UnprocessableEntityError, match=BASE_B):
        client.completions.create(model=BASE_NAME, prompt="x", max_tokens=2, extra_body={"mask": "foreign"})
    assert counted.requests == ["/v1/completions"]


def test_a_full_bank_is_503_with_retry_after(store, tmp_path):
    app, _ = build(store.uri, BASE_A, tmp_path, capacity=1)
    with connect(app) as client:
        assert client.post("/v1/masks/load", json={"mask": "code", "pin": True}).status_code == 200
        r = client.post("/v1/completions", json={"model": BASE_NAME, "prompt": "x", "mask": "math"})
        assert r.status_code == 503 and r.json()["error"]["code"] == 503
        assert 0 < int(r.headers["retry-after"]) <= 60
        assert "pinned or in use" in r.json()["error"]["message"]
        r = client.post("/v1/masks/load", json={"mask": "math"})
        assert r.status_code == 503 and "retry-after" in r.headers


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"model": BASE_NAME, "prompt": "x", "mask": "foreign"}),
    ("/v1/masks/load", {"mask": "foreign"}),
    ("/v1/experiments", {"name": "e", "arms": [{"mask": "base"}, {"mask": "foreign"}]}),
])
def test_base_mismatch_is_422_on_every_route(store, tmp_path, path, body):
    app, _ = build(store.uri, BASE_A, tmp_path)
    with connect(app) as client:
        r = client.post(path, json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == 422 and "retry-after" not in r.headers

"""vLLM's routes other than /v1/completions and /v1/chat/completions do not apply masks: a request that asks for one
there is refused (400), never answered by the base model as if it had been served."""

import pytest

from mask_store.format import save_mask
from mask_store.store import Store
from tests.mask_store.helpers import BASE_A, random_mask

from .fake_vllm import BASE_NAME, build, connect

OTHER_ROUTES = ["/v1/responses", "/v1/messages", "/invocations", "/v1/embeddings"]


@pytest.fixture
def client(tmp_path):
    store = Store(tmp_path / "store")
    save_mask(random_mask(0), tmp_path / "math.mask")
    store.push(tmp_path / "math.mask", "math")
    app, _ = build(store.uri, BASE_A, tmp_path)
    with connect(app) as client:
        yield client


@pytest.mark.parametrize("path", OTHER_ROUTES)
@pytest.mark.parametrize("mask", ["math", "ab:exp", "nope", 5])
def test_a_mask_field_elsewhere_is_refused(client, path, mask):
    r = client.post(path, json={"model": BASE_NAME, "input": "x", "mask": mask})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == 400 and "/v1/completions" in error["message"] and "/v1/chat/completions" in error["message"]


@pytest.mark.parametrize("path", OTHER_ROUTES)
def test_a_mask_named_as_the_model_elsewhere_is_refused(client, path):
    r = client.post(path, json={"model": "math", "input": "x"})
    assert r.status_code == 400 and "/v1/chat/completions" in r.json()["error"]["message"]


@pytest.mark.parametrize("path", OTHER_ROUTES)
@pytest.mark.parametrize("extra", [{}, {"mask": None}, {"model": "some-lora"}])
def test_requests_without_a_mask_pass_through(client, path, extra):
    r = client.post(path, json={"model": BASE_NAME, "input": "x", **extra})
    assert r.status_code == 200 and r.json()["object"] == "other"


def test_non_json_bodies_pass_through(client):
    r = client.post("/v1/responses", content=b"mask=math", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code != 400 or "/v1/chat/completions" not in r.text

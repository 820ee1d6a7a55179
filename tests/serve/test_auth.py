"""Keys: every route off the public allowlist needs one whenever one is configured, websockets included; admin
routes never open without a key, whatever the bind address (a reverse proxy makes every client loopback)."""

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from mask_store.format import save_mask
from mask_store.store import Store
from tests.mask_store.helpers import BASE_A, random_mask

from .fake_vllm import BASE_NAME, build


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store")
    save_mask(random_mask(0), tmp_path / "code.mask")
    store.push(tmp_path / "code.mask", "code")
    return store


def _client(store, tmp_path, api_keys=(), admin_key=None):
    app, _ = build(store.uri, BASE_A, tmp_path, api_keys=api_keys, admin_key=admin_key)
    return TestClient(app)


def _bearer(key):
    return {"Authorization": f"Bearer {key}"}


ADMIN_CALLS = [("GET", "/v1/masks", None), ("POST", "/v1/masks/load", {"mask": "code"}),
               ("POST", "/v1/masks/unload", {"mask": "code"}), ("GET", "/v1/experiments", None)]


def test_api_key_guards_inference_and_vllms_other_routes(store, tmp_path):
    with _client(store, tmp_path, api_keys=("sk-in", "sk-other"), admin_key="sk-admin") as client:
        body = {"model": BASE_NAME, "prompt": "x"}
        r = client.post("/v1/completions", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == 401
        assert client.post("/v1/completions", json=body, headers=_bearer("wrong")).status_code == 401
        for key in ("sk-in", "sk-other", "sk-admin"):
            assert client.post("/v1/completions", json=body, headers=_bearer(key)).status_code == 200, key
        for path in ("/invocations", "/classify", "/tokenize"):  # vLLM's own --api-key leaves the first two open
            assert client.post(path, json={"prompt": "x"}).status_code == 401, path
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize("method, path, body", ADMIN_CALLS)
def test_api_key_alone_guards_admin_routes_on_loopback(store, tmp_path, method, path, body):
    with _client(store, tmp_path, api_keys=("sk-in",)) as client:
        r = client.request(method, path, json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == 401
        assert client.request(method, path, json=body, headers=_bearer("wrong")).status_code == 401
        assert client.request(method, path, json=body, headers=_bearer("sk-in")).status_code == 200


def test_admin_key_is_the_only_admin_key_when_set(store, tmp_path):
    with _client(store, tmp_path, api_keys=("sk-in",), admin_key="sk-admin") as client:
        assert client.get("/v1/masks", headers=_bearer("sk-in")).status_code == 401
        assert client.get("/v1/masks", headers=_bearer("sk-admin")).status_code == 200


def test_without_any_key_admin_routes_are_off(store, tmp_path):
    """Even bound to loopback: behind a reverse proxy on the same machine every client is loopback."""
    with _client(store, tmp_path) as client:
        r = client.get("/v1/masks")
        assert r.status_code == 403 and "--admin-key" in r.json()["error"]["message"]
        assert client.post("/v1/masks/load", json={"mask": "code"}).status_code == 403
        ok = client.post("/v1/completions", json={"model": BASE_NAME, "prompt": "x"})
        assert ok.status_code == 200  # inference stays open without keys, as in vLLM


def test_admin_key_alone_leaves_inference_open(store, tmp_path):
    with _client(store, tmp_path, admin_key="sk-admin") as client:
        assert client.post("/v1/completions", json={"model": BASE_NAME, "prompt": "x"}).status_code == 200
        assert client.get("/v1/masks").status_code == 401
        assert client.get("/v1/masks", headers=_bearer("sk-admin")).status_code == 200


@pytest.mark.parametrize("keys", [{"api_keys": ("sk-in",)}, {"admin_key": "sk-admin"}])
def test_websockets_need_the_key_too(store, tmp_path, keys):
    key = keys.get("admin_key") or keys["api_keys"][0]
    with _client(store, tmp_path, **keys) as client:
        if "api_keys" in keys:
            with pytest.raises(WebSocketDenialResponse) as denied:
                with client.websocket_connect("/v1/realtime"):
                    pass
            assert denied.value.status_code == 401 and denied.value.json()["error"]["code"] == 401
        with client.websocket_connect("/v1/realtime", headers=_bearer(key)) as ws:
            assert ws.receive_json() == {"type": "session.created"}


def test_websocket_on_an_admin_path_is_refused_without_keys(store, tmp_path):
    with _client(store, tmp_path) as client:
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect("/v1/masks"):
                pass
        assert denied.value.status_code == 403

"""The HTTP API fuzzed from the server's own OpenAPI description (schemathesis, valid and invalid inputs): no input
may produce a 5xx. The routes maskserve owns (/v1/masks*, /v1/experiments*, /v1/feedback, /v1/models, which it
extends) and the two inference routes that carry `mask`; 25 examples per operation, derandomized.

vLLM's schema does not know the `mask` field (the middleware reads it), so it is added here to both inference
request bodies, as a string or null, and fuzzed with the rest; some examples name a real mask or the experiment.
"""

import json
from collections import Counter

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from mask_store.store import Store
from tests.reliability.harness import ADMIN, push_masks, serving

pytestmark = pytest.mark.reliability

OPERATIONS = {("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/masks"),
              ("POST", "/v1/masks/load"), ("POST", "/v1/masks/unload"), ("GET", "/v1/experiments"),
              ("POST", "/v1/experiments"), ("GET", "/v1/experiments/{name}"), ("POST", "/v1/feedback"),
              ("GET", "/v1/models")}
EXAMPLES = 25  # per operation and generation mode (valid, invalid)
MASKS = ["alpha", "beta"]
MASK_FIELD = {"anyOf": [{"type": "string", "examples": ["alpha", "beta@1", "ab:exp", "nope", "alpha:prod"]},
                        {"type": "null"}], "description": "maskserve: REF, ab:EXPERIMENT or null"}


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    store = Store(root / "store")
    push_masks(tiny_model, store, MASKS, root / "masks", seed0=400, tags=["prod"])
    experiments = root / "experiments.yaml"
    experiments.write_text(yaml.safe_dump({"experiments": [{"name": "exp", "arms": [{"mask": "alpha"},
                                                                                      {"mask": "base"}]}]}))
    with serving(tiny_model, store.uri, root, "--experiments", str(experiments), name="fuzz") as server:
        yield server


def with_mask_field(spec: dict) -> dict:
    """Add `mask` to the request bodies of the two inference routes (wherever their schemas live)."""
    components = spec.get("components", {}).get("schemas", {})
    for path in ("/v1/completions", "/v1/chat/completions"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        for ref in [content.get("$ref")] + [s.get("$ref") for s in content.get("anyOf", [])]:
            if ref:
                components[ref.rsplit("/", 1)[1]].setdefault("properties", {})["mask"] = MASK_FIELD
    return spec


@pytest.fixture(scope="module")
def api(server):
    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(with_mask_field(spec))
    schema.config.update(base_url=server.url)
    return schema


def test_every_fuzzed_operation_is_in_the_schema(api):
    """A renamed route must fail here, not silently drop out of the fuzzing."""
    assert OPERATIONS <= {(op.ok().method.upper(), op.ok().path) for op in api.get_all_operations()}


CASES = [(m, p, GenerationMode.POSITIVE) for m, p in sorted(OPERATIONS)] + \
        [(m, p, GenerationMode.NEGATIVE) for m, p in sorted(OPERATIONS) if m == "POST"]  # GETs take no input to break


@pytest.mark.parametrize("method, path, mode", CASES, ids=lambda v: getattr(v, "value", v))
def test_no_input_gets_a_server_error(api, method, path, mode, capsys):
    """Every 5xx is collected (not just the first, and without shrinking) and reported together."""
    operation = api[path][method]
    failures, statuses = [], Counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def fuzz(case):
        response = case.call(headers=ADMIN, timeout=120)  # the admin key opens every route
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except (AssertionError, BaseExceptionGroup):  # one Failure, or a FailureGroup
            failures.append(f"{response.status_code} {method} {case.formatted_path} {json.dumps(case.body, default=str)[:300]}: "
                            f"{response.text[:300]}")

    fuzz()
    with capsys.disabled():
        print(f"\n[fuzz] {method} {path} {mode.value}: {sum(statuses.values())} requests, statuses {dict(statuses)}")
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures[:10])
    assert set(statuses) - {401, 403}, f"every request was refused by auth: the route was not fuzzed ({statuses})"

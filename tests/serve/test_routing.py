"""routing.route without a server: every way a body can name the base, a mask or an experiment's arm."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mask_store.errors import InvalidRef, MaskError, NotFound
from serve.experiments import Experiments
from serve.protocol import ExperimentSpec
from serve.routing import MaskFields, route

BASES = {"base-model"}


@pytest.fixture(scope="module")
def experiments():
    experiments = Experiments()
    experiments.add(ExperimentSpec.model_validate({"name": "exp", "arms": [{"mask": "math:prod"}, {"mask": "base"}]}))
    return experiments


def plan(body, experiments):
    return route(MaskFields.of(body), BASES, experiments)


@pytest.mark.parametrize("body, ref, from_model", [
    ({"model": "base-model"}, None, False),
    ({"model": "base-model", "mask": None}, None, False),
    ({"model": "base-model", "mask": "math@2"}, "math@2", False),
    ({"model": "math:prod"}, "math:prod", True),
    ({"model": "other", "mask": "code"}, "code", False),  # `mask` wins over `model`
    ({"model": 5}, None, False),  # not a name: vLLM answers it
])
def test_the_ref_a_body_asks_for(experiments, body, ref, from_model):
    r = plan(body, experiments)
    assert (r.ref, r.model_was_mask, r.experiment, r.served) == (ref, from_model, None, None)


def test_an_experiment_picks_an_arm_by_user(experiments):
    arms = {plan({"mask": "ab:exp", "user": f"u{i}"}, experiments).arm for i in range(40)}
    assert arms == {"math:prod", "base"}
    first = plan({"mask": "ab:exp", "user": "alice"}, experiments)
    assert all(plan({"model": "ab:exp", "user": "alice"}, experiments).arm == first.arm for _ in range(5))
    assert first.experiment == "exp" and first.ref == (None if first.arm == "base" else "math:prod")


@pytest.mark.parametrize("body, error", [
    ({"mask": 5}, InvalidRef), ({"mask": ["math"]}, InvalidRef), ({"mask": "ab:nope"}, NotFound),
    ({"cache_salt": "maskserve:abc"}, InvalidRef),
])
def test_bodies_that_are_refused(experiments, body, error):
    with pytest.raises(error):
        plan(body, experiments)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=8)


@given(st.dictionaries(st.sampled_from(["mask", "model", "user", "cache_salt", "prompt"]), json_values))
def test_any_body_routes_or_is_refused_with_a_mask_error(body):
    experiments = Experiments()
    try:
        r = route(MaskFields.of(body), BASES, experiments)
    except MaskError:
        return
    assert r.ref is None or isinstance(r.ref, str)

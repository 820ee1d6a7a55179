"""runtime/requests.py: the per-request token the workers check before every forward pass."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.requests import ServedMask, mask_token, new_mask_key, token_matches

KEY = new_mask_key()
DIGEST = "ab" * 32


def test_only_maskserves_own_token_matches():
    served = ServedMask("math", 1, DIGEST, "/unused")
    extra = served.extra_args(KEY)
    assert token_matches(KEY, extra["mask"], extra["mask_token"])
    assert not token_matches(new_mask_key(), extra["mask"], extra["mask_token"])
    assert not token_matches(KEY, "cd" * 32, extra["mask_token"])


@pytest.mark.parametrize("digest, token", [
    (DIGEST, "é" * 32),  # hmac.compare_digest raised TypeError on non-ASCII str: the engine died
    ("é", mask_token(KEY, DIGEST)),
    ("\ud800", "\udfff"),  # lone surrogates cannot even be encoded
    (DIGEST, None), (None, "x"), (DIGEST, 7), (["a"], {"b": 1}),
])
def test_anything_a_client_sends_is_false_never_an_error(digest, token):
    assert token_matches(KEY, digest, token) is False


@given(st.one_of(st.text(), st.binary(), st.integers(), st.none()), st.one_of(st.text(), st.binary(), st.none()))
def test_token_check_never_raises(digest, token):
    assert token_matches(KEY, digest, token) in (True, False)

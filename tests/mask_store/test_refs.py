import pytest
from hypothesis import given
from hypothesis import strategies as st

from mask_store.errors import InvalidRef
from mask_store.refs import MaskRef


@pytest.mark.parametrize(
    "text, expected",
    [
        ("math", MaskRef("math", tag="latest")),
        ("math@3", MaskRef("math", version=3)),
        ("math:prod", MaskRef("math", tag="prod")),
        ("0123456789ab", MaskRef(None, digest_prefix="0123456789ab")),
        ("my.task_v2-b", MaskRef("my.task_v2-b", tag="latest")),
    ],
)
def test_parse(text, expected):
    assert MaskRef.parse(text) == expected
    assert MaskRef.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "text", ["", "math@0", "math@x", "math@", "a/b", "math:", "math:1x", "base", "ab", "-x", "math:pr od", "m@1@2"]
)
def test_bad_refs_are_refused_with_a_message(text):
    with pytest.raises(InvalidRef):
        MaskRef.parse(text)


@given(st.text(max_size=40))
def test_parser_either_parses_or_raises_invalid_ref(text):
    try:
        ref = MaskRef.parse(text)
    except InvalidRef as e:
        assert str(e)
        return
    assert MaskRef.parse(str(ref)) == ref


@pytest.mark.parametrize(
    "text", ["math@١", "math@١٢", "x@²", "math@１", "math@𝟙", "math@1\u0663", "math@" + "9" * 5000]
)
def test_versions_are_ascii_digits_only(text):
    """str.isdigit and int() take Arabic-Indic, superscript and fullwidth digits; a ref must not."""
    with pytest.raises(InvalidRef, match="version"):
        MaskRef.parse(text)


@given(st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=6))
def test_a_version_in_any_other_digits_is_refused(digits):
    if digits.isascii():
        return
    with pytest.raises(InvalidRef):
        MaskRef.parse(f"math@{digits}")

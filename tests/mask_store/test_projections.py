import pytest

from mask_store.projections import ATTN, BLOCK, HF_PROJECTIONS, MLP, WEIGHT, weight_name


@pytest.mark.parametrize("proj", ATTN + MLP)
def test_weight_names_parse_back(proj):
    m = WEIGHT.fullmatch(weight_name(7, proj))
    assert (m["prefix"], m["layer"], m["block"], m["proj"]) == ("model.layers.7.", "7", BLOCK[proj], proj)
    assert f"{proj}_proj" in HF_PROJECTIONS


@pytest.mark.parametrize("name", ["model.layers.0.mlp.up_proj.bias", "model.embed_tokens.weight",
                                  "model.xlayers.0.mlp.up_proj.weight", "model.layers.٣.mlp.up_proj.weight"])
def test_other_tensors_are_not_projections(name):
    assert WEIGHT.fullmatch(name) is None

import numpy as np
import pytest
from safetensors.torch import load_file

from mask_store.errors import ModelError
from mask_store.format import load_mask
from mask_store.identity import base_id
from mask_store.store import Store
from trainer.cli import main
from trainer.targets import TargetSpec, select_targets


@pytest.mark.parametrize("method", ["random", "magnitude"])
@pytest.mark.parametrize("modules, per_layer", [("all", 7), ("attn", 4), ("mlp", 3), ("q,down", 2)])
def test_baseline_masks_remove_exactly_the_ratio(tmp_path, tiny_model, method, modules, per_layer):
    out = tmp_path / "m.mask"
    code = main(["--model", str(tiny_model), "--method", method, "--mask-ratio", "0.25", "--layers", "1-2",
                 "--modules", modules, "--out", str(out)])
    assert code == 0
    mask = load_mask(out)
    assert mask.base_id == base_id(tiny_model)
    assert len(mask.tensors) == 2 * per_layer
    for name, t in mask.tensors.items():
        assert ".layers.1." in name or ".layers.2." in name
        assert t.count == round(0.25 * t.size)
    assert mask.training["method"] == method and mask.training["layers"] == "1-2"


def test_magnitude_removes_the_smallest_weights(tmp_path, tiny_model):
    out = tmp_path / "m.mask"
    main(["--model", str(tiny_model), "--method", "magnitude", "--mask-ratio", "0.1", "--layers", "0-0",
          "--modules", "q", "--out", str(out)])
    name, t = next(iter(load_mask(out).tensors.items()))
    w = np.abs(load_file(tiny_model / "model.safetensors")[name].numpy().ravel())
    kept = np.delete(w, t.removed)
    assert w[t.removed].max() <= kept.min()


def test_random_is_reproducible_by_seed(tmp_path, tiny_model):
    paths = []
    for i, seed in enumerate((3, 3, 4)):
        paths.append(tmp_path / f"{i}.mask")
        main(["--model", str(tiny_model), "--method", "random", "--layers", "0-1", "--seed", str(seed),
              "--out", str(paths[-1])])
    a, b, c = (load_mask(p) for p in paths)
    assert a.same_removals(b) and not a.same_removals(c)


def test_push_after_training(tmp_path, tiny_model, capsys):
    store = tmp_path / "store"
    assert main(["--model", str(tiny_model), "--method", "random", "--layers", "0-1", "--out",
                 str(tmp_path / "m.mask"), "--push", "rand", "--tag", "exp", "--store", str(store)]) == 0
    assert Store(store).resolve("rand:exp").version == 1
    assert "pushed rand@1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--layers", "2-9"], "outside the model's layers 0-3"),
        (["--layers", "3-1"], "first layer is after the last"),
        (["--layers", "x"], "expected A-B"),
        (["--modules", "qkv"], "--modules 'qkv'"),
    ],
)
def test_bad_targets_fail_before_any_work(tmp_path, tiny_model, capsys, argv, message):
    base = ["--model", str(tiny_model), "--method", "random", "--out", str(tmp_path / "m.mask")]
    if "--layers" not in argv:
        base += ["--layers", "0-1"]
    assert main(base + argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("mask-train: error:")
    assert not (tmp_path / "m.mask").exists()


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.1"])
def test_mask_ratio_outside_open_interval_is_refused(tmp_path, tiny_model, capsys, ratio):
    with pytest.raises(SystemExit) as exc:
        main(["--model", str(tiny_model), "--method", "random", "--layers", "0-1", "--mask-ratio", ratio,
              "--out", str(tmp_path / "m.mask")])
    assert exc.value.code == 2 and "--mask-ratio" in capsys.readouterr().err


def test_model_without_weights(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--method", "random", "--layers", "0-1", "--out",
                 str(tmp_path / "m.mask")]) == 1
    assert "no *.safetensors" in capsys.readouterr().err


def test_select_targets_orders_by_layer(tiny_model):
    from mask_store.checkpoint import tensor_shapes

    names = select_targets(TargetSpec.parse("0-3", "down"), tensor_shapes(tiny_model))
    assert [n.split(".")[2] for n in names] == ["0", "1", "2", "3"]


@pytest.mark.parametrize("layers", ["٢٠-٢٣", "２０", "1-²"])
def test_layers_take_ascii_digits_only(layers):
    from trainer.targets import TargetSpec

    with pytest.raises(ModelError, match="--layers"):
        TargetSpec.parse(layers, "all")

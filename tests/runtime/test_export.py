import torch

from mask_store.cli import main
from runtime.export_cli import main as export
from mask_store.format import load_mask
from mask_store.identity import base_id
from runtime.reference import load_model, materialize
from tests.tiny import make_tiny_model

from .helpers import make_mask


def test_export_writes_the_materialized_checkpoint(tiny_model, tmp_path, capsys):
    store = str(tmp_path / "store")
    path = make_mask(tiny_model, tmp_path / "m.mask", 0.3, "1-2", "all", seed=3)
    assert main(["--store", store, "push", str(path), "--name", "m"]) == 0
    out = tmp_path / "exported"
    assert export(["m", "--store", store, "--model", str(tiny_model), "--out", str(out)]) == 0
    assert "materialized" in capsys.readouterr().out
    exported, _ = load_model(out)
    expected, _ = load_model(tiny_model)
    materialize(expected, load_mask(path))
    ids = torch.arange(20)[None]
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, expected(ids).logits, atol=0, rtol=0)
    assert base_id(out) != base_id(tiny_model)
    assert not (tmp_path / "exported.partial").exists()


def test_export_refuses_another_base(tiny_model, tmp_path, capsys):
    store = str(tmp_path / "store")
    other = make_tiny_model(tmp_path / "other", seed=3)
    main(["--store", store, "push", str(make_mask(other, tmp_path / "o.mask")), "--name", "o"])
    capsys.readouterr()
    assert export(["o", "--store", store, "--model", str(tiny_model), "--materialize",
                 str(tmp_path / "x")]) == 1
    assert "trained on base" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_export_never_overwrites_a_folder(tiny_model, tmp_path, capsys):
    store = str(tmp_path / "store")
    main(["--store", store, "push", str(make_mask(tiny_model, tmp_path / "m.mask")), "--name", "m"])
    capsys.readouterr()
    before = sorted(p.name for p in tiny_model.iterdir())
    assert export(["m", "--store", store, "--model", str(tiny_model), "--materialize", str(tiny_model)]) == 1
    assert "is not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in tiny_model.iterdir()) == before


def test_mask_store_export_says_where_it_went(capsys):
    assert main(["export", "m", "--model", "x", "--materialize", "y"]) == 2
    assert "'mask-store export' is now 'mask-export'" in capsys.readouterr().err


def test_out_is_the_flag_every_writing_command_takes():
    """mask-train, mask-store pull and mask-export write to --out; the older spellings still parse."""
    from runtime.export_cli import build_parser

    assert build_parser().parse_args(["m", "--model", "M", "--out", "D"]).out == "D"
    assert build_parser().parse_args(["m", "--model", "M", "--materialize", "D"]).out == "D"

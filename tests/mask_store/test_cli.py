import json

import pytest

from mask_store.cli import main
from mask_store.format import read_mask_file, save_mask
from mask_store.identity import base_id

from .helpers import random_mask


@pytest.fixture
def run(tmp_path, capsys):
    store = str(tmp_path / "store")

    def run(*argv):
        code = main(["--store", store, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def mask_file(tmp_path):
    path = tmp_path / "m.mask"
    save_mask(random_mask(0), path)
    return path


def test_push_prints_ref_and_digest(run, mask_file):
    code, out, _ = run("push", str(mask_file), "--name", "math", "--tag", "prod")
    assert code == 0
    assert out.strip() == f"math@1 {read_mask_file(mask_file).digest}"


def test_read_commands_speak_json(run, mask_file, tmp_path):
    run("push", str(mask_file), "--name", "math")
    code, out, _ = run("ls", "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["math"]
    code, out, _ = run("show", "math@1", "--json")
    shown = json.loads(out)
    assert shown["version"] == 1 and shown["tags"] == ["latest"] and shown["training"]["method"] == "random"
    code, out, _ = run("verify", "--json")
    assert json.loads(out) == {"checked": 1, "problems": []}
    code, out, _ = run("pull", "math", "--out", str(tmp_path / "pulled.mask"), "--json")
    assert json.loads(out)["ref"] == "math@1"


def test_human_listing(run, mask_file):
    run("push", str(mask_file), "--name", "math", "--tag", "prod")
    code, out, _ = run("ls")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["REF", "DIGEST", "BASE"]
    assert lines[1].startswith("math@1") and "latest,prod" in lines[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["show", "nope"], "no mask named 'nope'"),
        (["show", "math@9"], "no version math@9"),
        (["push", "missing.mask", "--name", "x"], "missing.mask"),
        (["push", "{mask}", "--name", "bad/name"], "invalid mask name"),
        (["tag", "math", "latest"], "latest"),
        (["untag", "math"], "NAME:TAG"),
    ],
)
def test_user_errors_are_one_line_and_nonzero(run, mask_file, argv, message):
    run("push", str(mask_file), "--name", "math")
    code, out, err = run(*[a.replace("{mask}", str(mask_file)) for a in argv])
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("mask-store: error:")


def test_verify_exits_nonzero_on_corruption(run, mask_file, tmp_path):
    run("push", str(mask_file), "--name", "math")
    blob = next((tmp_path / "store" / "blobs").glob("*/*.mask"))
    data = bytearray(blob.read_bytes())
    data[100] ^= 4
    blob.write_bytes(bytes(data))
    code, out, _ = run("verify")
    assert code == 1 and "math@1" in out


def test_push_checks_the_base_when_asked(run, tiny_model, mask_file):
    code, _, err = run("push", str(mask_file), "--name", "math", "--base", str(tiny_model))
    assert code == 2 and base_id(tiny_model) in err


def test_base_id_command(run, tiny_model):
    code, out, _ = run("base-id", str(tiny_model))
    assert code == 0 and out.strip() == base_id(tiny_model)


@pytest.mark.parametrize("where", ["missing/dir/m.mask", "."])
def test_pull_to_a_bad_path_is_one_line(run, mask_file, tmp_path, where):
    run("push", str(mask_file), "--name", "math")
    code, _, err = run("pull", "math", "-o", str(tmp_path / where))
    assert code == 2 and err.startswith("mask-store: error:") and len(err.strip().splitlines()) == 1


def test_base_id_of_an_empty_weight_file_is_one_line(run, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"")
    code, _, err = run("base-id", str(tmp_path / "model"))
    assert code == 2 and "not a safetensors file" in err and len(err.strip().splitlines()) == 1


def test_corrupt_file_and_unwritable_store_are_one_line(tmp_path, mask_file, capsys):
    corrupt = tmp_path / "corrupt.mask"
    corrupt.write_bytes(mask_file.read_bytes()[:-9])
    assert main(["--store", str(tmp_path / "store"), "push", str(corrupt), "--name", "x"]) == 2
    assert str(corrupt) in capsys.readouterr().err
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["--store", str(blocked / "store"), "push", str(mask_file), "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mask-store: error:") and len(err.strip().splitlines()) == 1


def test_unwritable_cache_is_one_line(run, tiny_model, tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("MASKSERVE_CACHE", str(blocked / "cache"))
    code, _, err = run("base-id", str(tiny_model))
    assert code == 2 and "MASKSERVE_CACHE" in err and len(err.strip().splitlines()) == 1


def test_pull_of_a_blob_holding_another_mask_is_one_line_naming_the_ref(run, mask_file, tmp_path):
    other = tmp_path / "other.mask"
    save_mask(random_mask(1), other)
    run("push", str(mask_file), "--name", "math")
    blob = next((tmp_path / "store" / "blobs").glob("*/*.mask"))
    blob.write_bytes(other.read_bytes())
    code, _, err = run("pull", "math", "--output", str(tmp_path / "out.mask"))
    assert code == 2 and "math@1" in err and err.count("\n") == 1 and err.startswith("mask-store: error:")
    assert not (tmp_path / "out.mask").exists()
    code, out, _ = run("verify")
    assert code == 1 and "math@1" in out


def test_stray_s3_objects_break_no_command(s3_store_uri, mask_file, capsys):
    import boto3

    bucket, _, prefix = s3_store_uri.removeprefix("s3://").partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/versions/notes.json", Body=b"not a record")
    assert main(["--store", s3_store_uri, "push", str(mask_file), "--name", "math"]) == 0
    assert main(["--store", s3_store_uri, "ls"]) == 0
    assert "math@1" in capsys.readouterr().out
    assert main(["--store", s3_store_uri, "verify"]) == 1
    assert "versions/notes.json" in capsys.readouterr().out


def test_exit_codes_tell_problems_from_errors(run, mask_file, tmp_path):
    """0: all good; 1: verify found problems in the store; 2: the command could not do its job (a user mistake,
    an unusable store, bad arguments), so a script can tell a damaged store from a mistyped REF."""
    run("push", str(mask_file), "--name", "math")
    assert run("verify")[0] == 0
    assert run("verify", "math@9")[0] == 2
    blob = next((tmp_path / "store" / "blobs").glob("*/*.mask"))
    blob.write_bytes(blob.read_bytes()[:-1])
    assert run("verify")[0] == 1
    with pytest.raises(SystemExit) as usage:
        run("verify", "--no-such-flag")
    assert usage.value.code == 2

"""MFT on a tiny random Llama: exact sparsity, frozen base, learning that shows, reproducibility, bad input."""

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from mask_store.checkpoint import tensor_shapes
from mask_store.errors import ModelError
from mask_store.format import load_mask
from mask_store.identity import base_id
from trainer.baselines import removed_count
from trainer.cli import main
from trainer.config import InvalidSetting, MFTConfig
from trainer.data import file_hash, load_examples
from trainer.mft import eval_loss, load_model, load_tokenizer, train_scores
from trainer.scored_linear import (
    ScoredLinear,
    extract_masks,
    keep_mask,
    keep_mask_reference,
    swap_in_scored_linears,
)
from trainer.targets import TargetSpec, select_targets

TOKEN = "Z"  # the toy task: whatever the prompt, answer Z


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def toy_records(n, seed, answers=True):
    rng = random.Random(seed)
    return [{"prompt": f"q{rng.randrange(10_000)}:", "completion": TOKEN, **({"answer": TOKEN} if answers else {})}
            for _ in range(n)]


def chat_records(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        out.append({"messages": [{"role": "user", "content": f"{a}+{b}?"},
                                 {"role": "assistant", "content": str(a + b)}], "answer": a + b})
    return out


def targets(model_dir, layers="0-3", modules="all"):
    return select_targets(TargetSpec.parse(layers, modules), tensor_shapes(model_dir))


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, tiny_model):
    """One CLI run on the toy task: the mask, the files, and what it printed."""
    work = tmp_path_factory.mktemp("toy")
    train = write_jsonl(work / "train.jsonl", toy_records(48, seed=0))
    held_out = write_jsonl(work / "eval.jsonl", toy_records(16, seed=1))
    out = work / "toy.mask"
    argv = ["--model", str(tiny_model), "--method", "mft", "--data", str(train), "--eval", str(held_out),
            "--layers", "1-3", "--mask-ratio", "0.1", "--steps", "25", "--lr", "0.05", "--batch-size", "8",
            "--seq-len", "32", "--max-new-tokens", "4", "--seed", "3", "--out", str(out)]
    return {"argv": argv, "main": main(argv), "mask": out, "train": train, "eval": held_out}


# --- the exact top-k rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 7, 50, 99, 100])
@pytest.mark.parametrize("values", ["distinct", "ties", "constant"])
def test_keep_mask_removes_exactly_k_like_the_sorting_reference(values, k):
    g = torch.Generator().manual_seed(k)
    magnitude = {
        "distinct": torch.rand(10, 10, generator=g),
        "ties": torch.randint(0, 4, (10, 10), generator=g).float(),  # every value repeated ~25 times
        "constant": torch.ones(10, 10),
    }[values]
    keep = keep_mask(magnitude, k)
    assert int((~keep).sum()) == k
    assert torch.equal(keep, keep_mask_reference(magnitude, k))
    if 0 < k < 100:
        assert magnitude[~keep].max() <= magnitude[keep].min()


def test_straight_through_gradient_reaches_scores_through_the_sign():
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 4, bias=False)
    scores = torch.randn(4, 6)
    layer = ScoredLinear(linear, k=5, scores=scores)
    x = torch.randn(3, 6)
    layer(x).pow(2).sum().backward()
    mask = keep_mask(scores.abs(), 5).float().requires_grad_(True)  # the same forward with M as a leaf
    torch.nn.functional.linear(x, linear.weight * mask).pow(2).sum().backward()
    assert torch.allclose(layer.scores.grad, mask.grad * scores.sign())
    assert linear.weight.grad is None


# --- module swap ---------------------------------------------------------------------------------------------


def test_swap_makes_scores_the_only_trainable_tensors(tiny_model):
    model = load_model(tiny_model, torch.device("cpu"), torch.float32)
    names = targets(tiny_model, "1-2", "q,down")
    swapped = swap_in_scored_linears(model, names, 0.25, "random", 0)
    assert sorted(swapped) == sorted(names)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == sorted(n.removesuffix(".weight") + ".scores" for n in names)
    assert not isinstance(model.model.layers[0].self_attn.q_proj, ScoredLinear)
    assert not isinstance(model.model.layers[1].self_attn.k_proj, ScoredLinear)


def test_swap_of_a_missing_module_is_an_error(tiny_model):
    model = load_model(tiny_model, torch.device("cpu"), torch.float32)
    with pytest.raises(ModelError, match="model.layers.9.mlp.up_proj.weight"):
        swap_in_scored_linears(model, ["model.layers.9.mlp.up_proj.weight"], 0.1, "random", 0)


def test_magnitude_init_starts_from_the_magnitude_mask(tiny_model):
    model = load_model(tiny_model, torch.device("cpu"), torch.float32)
    names = targets(tiny_model, "0-1")
    swap_in_scored_linears(model, names, 0.2, "magnitude", 0)
    weights = load_file(tiny_model / "model.safetensors")
    for name, t in extract_masks(model).items():
        w = weights[name].abs().flatten().numpy()
        assert t.count == removed_count(w.size, 0.2)
        assert w[t.removed].max() <= np.delete(w, t.removed).min()


def test_random_init_depends_on_seed_and_name_only(tiny_model):
    def first_masks(names, seed):
        model = load_model(tiny_model, torch.device("cpu"), torch.float32)
        swap_in_scored_linears(model, names, 0.1, "random", seed)
        return extract_masks(model)

    q = "model.layers.1.self_attn.q_proj.weight"
    alone, among_others, other_seed = first_masks([q], 5), first_masks(targets(tiny_model), 5), first_masks([q], 6)
    assert alone[q] == among_others[q] and alone[q] != other_seed[q]


# --- training ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frozen_weights_are_bit_identical_after_training(tmp_path, tiny_model, dtype):
    tokenizer = load_tokenizer(tiny_model)
    examples = load_examples(write_jsonl(tmp_path / "t.jsonl", toy_records(16, 0)), tokenizer, 32)
    model = load_model(tiny_model, torch.device("cpu"), dtype)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    swap_in_scored_linears(model, targets(tiny_model), 0.1, "magnitude", 0)
    scores = {name: p.detach().clone() for name, p in model.named_parameters() if name.endswith(".scores")}
    train_scores(model, examples, MFTConfig(steps=4, lr=0.05, batch_size=4, warmup=0.0), 257)
    after = dict(model.named_parameters())
    for name, value in before.items():
        assert after[name].dtype == dtype and torch.equal(after[name], value), name
    assert any(not torch.equal(after[name], value) for name, value in scores.items())  # and the scores did move


def test_gradient_accumulation_equals_one_larger_batch(tmp_path, tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    records = toy_records(8, 0)
    records[3]["prompt"] = "a much longer prompt than the others:"  # unequal lengths, so padding differs
    examples = load_examples(write_jsonl(tmp_path / "t.jsonl", records), tokenizer, 64)

    def scores_after(batch_size, grad_accum):
        model = load_model(tiny_model, torch.device("cpu"), torch.float32)
        swap_in_scored_linears(model, targets(tiny_model, "2-3"), 0.1, "magnitude", 0)
        config = MFTConfig(steps=1, lr=1e-3, batch_size=batch_size, grad_accum=grad_accum, warmup=0.0)
        return train_scores(model, examples, config, 257), model

    (one,), big = scores_after(8, 1)
    (acc,), small = scores_after(4, 2)
    assert acc == pytest.approx(one, rel=1e-5)
    for a, b in zip(extract_masks(big).values(), extract_masks(small).values()):
        assert a == b


def test_cli_writes_a_mask_with_exactly_the_requested_fraction(toy_run, tiny_model):
    assert toy_run["main"] == 0
    mask = load_mask(toy_run["mask"])
    assert mask.base_id == base_id(tiny_model)
    assert len(mask.tensors) == 3 * 7
    for name, t in mask.tensors.items():
        assert t.count == removed_count(t.size, 0.1), name
    training = mask.training
    assert training["achieved_ratio"]["min"] == min(t.ratio for t in mask.tensors.values())


def test_mask_metadata_records_every_setting(toy_run):
    training = load_mask(toy_run["mask"]).training
    assert training["method"] == "mft" and training["layers"] == "1-3" and training["init"] == "magnitude"
    for key, value in {"mask_ratio": 0.1, "steps": 25, "lr": 0.05, "batch_size": 8, "grad_accum": 1,
                       "seq_len": 32, "seed": 3, "warmup": 0.1, "weight_decay": 0.0, "dtype": "float32"}.items():
        assert training[key] == value, key
    assert training["data"] == {"file": "train.jsonl", "blake3": file_hash(toy_run["train"]), "examples": 48}
    assert training["eval_data"]["blake3"] == file_hash(toy_run["eval"])
    assert set(training["eval"]) == {"base", "masked", "examples"}


def test_loss_on_the_toy_task_falls(toy_run):
    training = load_mask(toy_run["mask"]).training
    base, masked = training["eval"]["base"], training["eval"]["masked"]
    assert masked["loss"] < 0.25 * base["loss"]
    assert training["train_loss"]["final"] < 0.25 * training["train_loss"]["first"]
    assert masked["exact_match"] > base["exact_match"]


def _materialized(model_dir, mask):
    """The base loaded by plain transformers, with the mask's removed weights zeroed."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in mask.tensors.items():
            params[name].view(-1)[torch.from_numpy(t.removed)] = 0
    return model


def test_materialized_mask_gives_the_reported_eval_loss(toy_run, tiny_model):
    mask = load_mask(toy_run["mask"])
    examples = load_examples(toy_run["eval"], load_tokenizer(tiny_model), 32)
    loss = eval_loss(_materialized(tiny_model, mask), examples, 32, 257)
    assert loss == pytest.approx(mask.training["eval"]["masked"]["loss"], abs=1e-4)


def test_a_mask_trained_to_prefer_a_token_makes_the_model_prefer_it(toy_run, tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    token = tokenizer.convert_tokens_to_ids(TOKEN)
    prompts = [r["prompt"] for r in toy_records(8, seed=7)]  # prompts neither run has seen

    def p_token(model):
        with torch.no_grad():
            probs = [model(**tokenizer(p, return_tensors="pt")).logits[0, -1].softmax(-1)[token] for p in prompts]
        return torch.stack(probs).mean().item()

    base = p_token(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval())
    masked = p_token(_materialized(tiny_model, load_mask(toy_run["mask"])))
    assert base < 0.05 and masked > 0.5


def test_same_seed_gives_the_same_mask(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", chat_records(24, 0))  # chat-template records, too

    def run(seed, name):
        out = tmp_path / name
        assert main(["--model", str(tiny_model), "--data", str(data), "--layers", "2-3", "--init", "random",
                     "--steps", "6", "--batch-size", "4", "--seed", str(seed), "--out", str(out)]) == 0
        return load_mask(out)

    a, b, c = run(11, "a.mask"), run(11, "b.mask"), run(12, "c.mask")
    assert a.same_removals(b) and not a.same_removals(c)
    assert a.training["init"] == "random"
    captured = capsys.readouterr()
    assert "removed per matrix: " in captured.out and "of 14 matrices" in captured.out
    assert "6 steps, train loss" in captured.out and "step/s" in captured.err  # summary and progress bar


# --- bad input: each a clear error before training starts ---------------------------------------------------


def _fails(capsys, argv, tmp_path):
    out = tmp_path / "x.mask"
    code = main(argv + ["--out", str(out)])
    captured = capsys.readouterr()
    assert not out.exists() and "mft:" not in captured.err  # no progress bar: training never started
    return code, captured.err


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "a", "completion": "b"', "not valid JSON"),
        ('["prompt", "completion"]', "expected a JSON object"),
        ('{"prompt": "a"}', '"completion" must be a string'),
        ('{"prompt": "a", "completion": ""}', '"completion" is empty'),
        ('{"prompt": "a", "completion": "b", "messages": []}', 'either "prompt" and "completion", or "messages"'),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
        ('{"messages": [{"role": "user"}]}', 'string "role" and "content"'),
        ('{"prompt": "a", "completion": "b", "answer": [1]}', '"answer" must be'),
    ],
)
def test_bad_data_line_names_file_and_line(tmp_path, tiny_model, capsys, line, message):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n\n' + line + "\n")
    code, err = _fails(capsys, ["--model", str(tiny_model), "--data", str(data), "--layers", "0-1"], tmp_path)
    assert code == 1 and err.startswith("mask-train: error:")
    assert f"{data} line 3: " in err and message in err


def test_prompt_longer_than_seq_len_is_an_error(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x" * 40, "completion": "y"}])
    code, err = _fails(capsys, ["--model", str(tiny_model), "--data", str(data), "--layers", "0-1",
                                "--seq-len", "16"], tmp_path)
    assert code == 1 and "line 1: no completion token falls within --seq-len 16" in err


def test_eval_accuracy_without_answers_is_an_error(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", toy_records(4, 0))
    held_out = write_jsonl(tmp_path / "e.jsonl", toy_records(2, 1) + toy_records(1, 2, answers=False))
    code, err = _fails(capsys, ["--model", str(tiny_model), "--data", str(data), "--eval", str(held_out),
                                "--eval-accuracy", "--layers", "0-1"], tmp_path)
    assert code == 1 and f"{held_out} line 3: no \"answer\"" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--method mft needs --data"),
        (["--data", "missing.jsonl"], "--data missing.jsonl: no such file"),
        (["--data", "DATA", "--eval-accuracy"], "--eval-accuracy needs --eval"),
        (["--data", "DATA", "--steps", "0"], "--steps must be at least 1"),
        (["--data", "DATA", "--lr", "-0.01"], "--lr must be positive"),
        (["--data", "DATA", "--lr", "nan"], "--lr must be positive"),
        (["--data", "DATA", "--warmup", "1"], "--warmup is a fraction in [0, 1)"),
        (["--data", "DATA", "--weight-decay", "-1"], "--weight-decay must not be negative"),
        (["--data", "DATA", "--epochs", "0"], "--epochs must be positive"),
        (["--data", "DATA", "--grad-accum", "0"], "--grad-accum must be at least 1"),
        (["--method", "random", "--mask-ratio", "1"], "--mask-ratio must be strictly between 0 and 1"),
        (["--data", "DATA", "--out", "missing/x.mask"], "not a file in an existing folder"),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path, tiny_model, capsys, argv, message):
    data = write_jsonl(tmp_path / "d.jsonl", toy_records(4, 0))
    argv = [str(data) if a == "DATA" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(["--model", str(tiny_model), "--layers", "0-1", "--out", str(tmp_path / "x.mask")] + argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--layers", "2-9"], "outside the model's layers 0-3"),
        (["--layers", "0-1", "--modules", "q,gate,lm_head"], "--modules 'q,gate,lm_head'"),
    ],
)
def test_bad_targets_fail_before_training(tmp_path, tiny_model, capsys, argv, message):
    data = write_jsonl(tmp_path / "d.jsonl", toy_records(4, 0))
    code, err = _fails(capsys, ["--model", str(tiny_model), "--data", str(data)] + argv, tmp_path)
    assert code == 1 and message in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--push", "bad name!"], "bad name!"),
        (["--push", "base"], "reserved"),
        (["--push", "math", "--tag", "latest"], "'latest' always names the newest version"),
    ],
)
def test_bad_push_target_fails_before_training(tmp_path, tiny_model, capsys, argv, message):
    data = write_jsonl(tmp_path / "d.jsonl", toy_records(4, 0))
    argv = ["--model", str(tiny_model), "--data", str(data), "--layers", "0-1", "--store", str(tmp_path / "s")] + argv
    code, err = _fails(capsys, argv, tmp_path)
    assert code == 1 and message in err


def test_model_folder_without_weights(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", toy_records(4, 0))
    code, err = _fails(capsys, ["--model", str(tmp_path), "--data", str(data), "--layers", "0-1"], tmp_path)
    assert code == 1 and "no *.safetensors" in err


def test_a_resumed_run_ends_with_the_mask_of_an_uninterrupted_one(tmp_path, tiny_model, capsys, monkeypatch):
    import trainer.mft as mft

    data = write_jsonl(tmp_path / "d.jsonl", toy_records(24, 0))
    argv = ["--model", str(tiny_model), "--data", str(data), "--layers", "2-3", "--init", "random", "--steps", "6",
            "--batch-size", "4", "--seed", "3"]
    assert main(argv + ["--out", str(tmp_path / "straight.mask")]) == 0

    checkpoint = ["--checkpoint", str(tmp_path / "run.ckpt"), "--checkpoint-every", "2"]
    real, calls = mft.completion_nll, []

    def preempted_at_step_5(model, batch):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("preempted")
        return real(model, batch)

    monkeypatch.setattr(mft, "completion_nll", preempted_at_step_5)
    with pytest.raises(RuntimeError, match="preempted"):
        main(argv + checkpoint + ["--out", str(tmp_path / "resumed.mask")])
    monkeypatch.setattr(mft, "completion_nll", real)
    assert not (tmp_path / "resumed.mask").exists()
    capsys.readouterr()
    assert main(argv + checkpoint + ["--resume", "--out", str(tmp_path / "resumed.mask")]) == 0
    assert "4/6" in capsys.readouterr().err  # the progress bar starts at the checkpoint's step

    straight, resumed = load_mask(tmp_path / "straight.mask"), load_mask(tmp_path / "resumed.mask")
    assert straight.same_removals(resumed)
    assert straight.training["train_loss"] == resumed.training["train_loss"]


def test_resume_refuses_another_runs_checkpoint(tmp_path, tiny_model, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", toy_records(8, 0))
    argv = ["--model", str(tiny_model), "--data", str(data), "--layers", "2-3", "--steps", "2", "--batch-size", "4",
            "--checkpoint", str(tmp_path / "run.ckpt"), "--out", str(tmp_path / "a.mask")]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv + ["--resume", "--lr", "0.5"]) == 1
    assert "differs in: lr" in capsys.readouterr().err
    (tmp_path / "run.ckpt").write_bytes(b"not a checkpoint")
    assert main(argv + ["--resume"]) == 1
    assert "not a readable mask-train checkpoint" in capsys.readouterr().err
    (tmp_path / "run.ckpt").unlink()
    assert main(argv + ["--resume"]) == 1
    assert "no checkpoint at" in capsys.readouterr().err


@pytest.mark.parametrize("settings, flag", [
    ({"mask_ratio": 0.0}, "--mask-ratio"), ({"warmup": -0.1}, "--warmup"), ({"lr": float("inf")}, "--lr"),
    ({"weight_decay": -1e-3}, "--weight-decay"), ({"seq_len": 0}, "--seq-len"), ({"init": "zeros"}, "--init"),
    ({"steps": 3, "epochs": 1.0}, "--steps"),
])
def test_mftconfig_is_the_one_check_of_every_setting(settings, flag):
    """Code that builds an MFTConfig without the CLI (examples, tests) gets the same refusals as mask-train."""
    with pytest.raises(InvalidSetting) as e:
        MFTConfig(**settings)
    assert e.value.flag == flag

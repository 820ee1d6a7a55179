"""Learn a math mask for SmolLM2-135M-Instruct offline, and compare base vs masked on unseen problems.

    python examples/math_mask.py [--steps 150 --layers 20-23 --lr 1e-2 ...]

1. Builds arithmetic word problems with the PyPI package `reasoning-gym` (`basic_arithmetic`, natural phrasing:
   "What is 48 + 16?", "Solve 61 - 36.", "Compute 8 - 3.", "Evaluate: 88 - 53."), two terms of one or two digits.
   The split is by template: training problems use the first three phrasings, held-out problems only the fourth
   ("Evaluate: ..."), and no held-out expression appears in training. So the eval problems are unseen twice over.
2. Writes train/eval JSON lines as chat `messages` with an `answer`, the format `mask-train` reads.
3. Runs `mask-train --method mft` on the default model (the trainer prints base vs masked eval loss and exact-match
   accuracy on the held-out problems), then prints the figures recorded in the mask file.

Runs in a few minutes on a 2-core CPU with the defaults. Needs `pip install reasoning-gym` (the `data` extra).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATES_TRAIN = ("What is", "Solve", "Compute")
TEMPLATE_EVAL = "Evaluate:"


def build_problems(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    import reasoning_gym

    pool = reasoning_gym.create_dataset(
        "basic_arithmetic", size=8 * (n_train + n_eval), seed=seed, min_terms=2, max_terms=2, min_digits=1,
        max_digits=2, operators=("+", "-"), allow_parentheses=False, allow_negation=False, format_style="natural",
    )
    train, held_out, seen = [], [], set()
    for item in pool:
        expression = item["metadata"]["expression"]
        if item["question"].startswith(TEMPLATES_TRAIN) and len(train) < n_train and expression not in seen:
            train.append(item)
            seen.add(expression)
    for item in pool:
        expression = item["metadata"]["expression"]
        if item["question"].startswith(TEMPLATE_EVAL) and len(held_out) < n_eval and expression not in seen:
            held_out.append(item)
            seen.add(expression)
    if len(train) < n_train or len(held_out) < n_eval:
        raise SystemExit(f"reasoning-gym gave only {len(train)} train and {len(held_out)} eval problems")
    return train, held_out


def record(item: dict) -> dict:
    return {"messages": [{"role": "user", "content": item["question"]},
                         {"role": "assistant", "content": item["answer"]}], "answer": item["answer"]}


def write_jsonl(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(record(item)) + "\n" for item in items))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=320)
    parser.add_argument("--eval-size", type=int, default=100)
    parser.add_argument("--layers", default="14-23")
    parser.add_argument("--modules", default="all")
    parser.add_argument("--mask-ratio", default="0.1")
    parser.add_argument("--init", default="magnitude")
    parser.add_argument("--steps", default="120")
    parser.add_argument("--lr", default="1e-2")
    parser.add_argument("--batch-size", default="8")
    parser.add_argument("--seq-len", default="64")
    parser.add_argument("--max-new-tokens", default="48")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="folder for the data and the mask (default: a new temp folder)")
    args = parser.parse_args()

    from mask_store.default_model import default_model_dir
    from mask_store.format import load_mask

    work = Path(args.work or tempfile.mkdtemp(prefix="maskserve-math-"))
    work.mkdir(parents=True, exist_ok=True)
    train, held_out = build_problems(args.train_size, args.eval_size, args.seed)
    write_jsonl(work / "train.jsonl", train)
    write_jsonl(work / "eval.jsonl", held_out)
    print(f"{len(train)} training problems ({', '.join(TEMPLATES_TRAIN)}), {len(held_out)} held-out problems "
          f"({TEMPLATE_EVAL}), written to {work}")
    print(f"e.g. train: {train[0]['question']!r} -> {train[0]['answer']}; "
          f"eval: {held_out[0]['question']!r} -> {held_out[0]['answer']}")

    out = work / "math.mask"
    argv = ["mask-train", "--model", str(default_model_dir()), "--method", "mft", "--data", str(work / "train.jsonl"),
            "--eval", str(work / "eval.jsonl"), "--eval-accuracy", "--layers", args.layers, "--modules", args.modules,
            "--mask-ratio", args.mask_ratio, "--init", args.init, "--steps", args.steps, "--lr", args.lr,
            "--batch-size", args.batch_size, "--seq-len", args.seq_len, "--max-new-tokens", args.max_new_tokens,
            "--seed", str(args.seed), "--out", str(out)]
    print("\n$ " + " ".join(argv), flush=True)
    started = time.perf_counter()
    subprocess.run(argv, check=True)
    seconds = time.perf_counter() - started

    training = load_mask(out).training
    ev = training["eval"]
    print(f"\nheld-out exact match ({ev['examples']} unseen problems, unseen template): "
          f"base {ev['base']['exact_match']:.1%} -> masked {ev['masked']['exact_match']:.1%}; "
          f"eval loss {ev['base']['loss']:.4f} -> {ev['masked']['loss']:.4f}; "
          f"{training['steps']} steps, {seconds:.0f} s wall in all")


if __name__ == "__main__":
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    main()

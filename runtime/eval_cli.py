"""`mask-eval`: exact-match accuracy of a model and its masks on a JSON-lines task, through the serving engine.

    mask-eval --model DIR --data eval.jsonl --mask math:prod --mask ./l1.mask [--json]

DIR is a base model or any checkpoint folder (a fine-tuned model is evaluated like a base). Each --mask is a store
REF or a .mask file; the model itself is evaluated too unless --no-base. Every score comes with the number of
problems and a 95% interval. Arguments, the task and the masks are checked before the engine starts.
"""

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mask_store.default_model import default_model_dir
from mask_store.errors import BaseMismatch, MaskError, ModelError
from mask_store.format import read_mask_file
from mask_store.identity import base_id
from mask_store.store import Store

from .evaluate import Subject, evaluate, greedy_params, load_problems, report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mask-eval", description=__doc__.splitlines()[0])
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--model", help="Hugging Face-format model or checkpoint folder (default: SmolLM2-135M-Instruct)")
    what.add_argument("--mask", action="append", default=[], metavar="REF|FILE",
                      help="a mask to evaluate: a store REF (name, name@N, name:tag, digest) or a .mask file; repeat")
    what.add_argument("--no-base", action="store_true", help="skip the model without a mask")
    what.add_argument("--store", help="store URI for REFs (default: $MASKSERVE_STORE or the local cache store)")

    task = parser.add_argument_group("task")
    task.add_argument("--data", required=True, help="JSON lines with an \"answer\" on every record (mask-train's schema)")
    task.add_argument("--limit", type=int, help="evaluate only the first N problems")
    task.add_argument("--max-new-tokens", type=int, default=32, help="greedy generation length (as mask-train's)")

    engine = parser.add_argument_group("engine")
    engine.add_argument("--dtype", help="vLLM dtype (default: float32 on CPUs without native bf16, else bfloat16)")
    engine.add_argument("--max-model-len", type=int, help="vLLM max_model_len")
    engine.add_argument("--seed", type=int, default=0, help="vLLM seed (greedy decoding does not depend on it)")

    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    return parser


def _looks_like_file(value: str) -> bool:
    return value.endswith(".mask") or os.sep in value or Path(value).exists()


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data}: no such file")
    if args.model and not Path(args.model).is_dir():
        parser.error(f"--model {args.model}: not a folder")
    for flag in ("limit", "max_new_tokens", "max_model_len"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.no_base and not args.mask:
        parser.error("--no-base with no --mask leaves nothing to evaluate")
    if len(set(args.mask)) != len(args.mask):
        parser.error("a --mask is given twice")
    for value in args.mask:
        if _looks_like_file(value) and not Path(value).is_file():
            parser.error(f"--mask {value}: no such file")


def stage_masks(values: Sequence[str], store_uri: str | None, served_base: str, staging: Store) -> list[dict]:
    """Copy every mask into the run's own `staging` store (a REF resolved once, so a tag that moves mid-run does
    not change what is evaluated); refuse, before any engine starts, a mask trained on another base."""
    staged, user_store = [], None
    for i, value in enumerate(values):
        if _looks_like_file(value):
            path, what = Path(value), f"mask {value}"
            header = read_mask_file(path).header
            digest, mask_base = header.digest, header.base_id
        else:
            user_store = user_store or Store(store_uri)
            record = user_store.resolve(value)
            path, what, digest, mask_base = user_store.local_path(record), f"mask {record.ref}", record.digest, \
                record.base_id
        if mask_base != served_base:
            raise BaseMismatch(what, mask_base, served_base)
        record = staging.push(path, f"m{i}")
        staged.append({"label": value, "ref": record.ref, "digest": digest})
    return staged


def open_engine(model_dir: Path, store: Store, args: argparse.Namespace):
    """The serving engine; its own function so tests can hand in a fake."""
    from .engine import Engine

    return Engine(model_dir, store, max_masks=max(1, min(8, len(args.mask))), dtype=args.dtype,
                  max_model_len=args.max_model_len, seed=args.seed)


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise ModelError(f"{model_dir}: cannot load its tokenizer ({e})") from e


def run(args: argparse.Namespace) -> dict:
    model_dir = Path(args.model) if args.model else default_model_dir()
    tokenizer = load_tokenizer(model_dir)
    problems = load_problems(args.data, tokenizer, args.limit)
    served_base = base_id(model_dir)
    with tempfile.TemporaryDirectory(prefix="mask-eval-") as tmp:
        staging = Store(Path(tmp) / "store")
        staged = stage_masks(args.mask, args.store, served_base, staging)
        subjects = ([] if args.no_base else [Subject("base", None)]) + [Subject(m["label"], m["ref"]) for m in staged]
        engine = open_engine(model_dir, staging, args)
        scores = evaluate(engine, problems, subjects, greedy_params(tokenizer, args.max_new_tokens))
    base = None if args.no_base else scores[0]
    rows = report(scores, base)
    digests = {m["label"]: m["digest"] for m in staged}
    for row, score in zip(rows, scores):
        row["digest"] = digests.get(score.subject.label)
        row["per_problem"] = [int(c) for c in score.correct]
    return {"task": str(args.data), "problems": len(problems), "model": str(model_dir), "base_id": served_base,
            "max_new_tokens": args.max_new_tokens, "results": rows}


def _interval(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{ci[0]:.1%}, {ci[1]:.1%}]"


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    print(f"exact match on {result['task']}: {result['problems']} problems, greedy, at most "
          f"{result['max_new_tokens']} new tokens; 95% intervals (Wilson; paired Newcombe for differences)")
    table = Table()
    for column in ("subject", "n", "correct", "exact match", "95% CI", "vs base", "95% CI of difference"):
        table.add_column(column, justify="left" if column == "subject" else "right", no_wrap=column != "subject")
    for row in result["results"]:
        vs = row.get("vs_base")
        table.add_row(row["subject"], str(row["n"]), str(row["correct"]), f"{row['exact_match']:.1%}",
                      _interval(row["ci95"]), "" if vs is None else f"{vs['difference']:+.1%}",
                      "" if vs is None else _interval(vs["ci95"]))
    console = Console()
    if not console.is_terminal:  # a file or a pipe: no terminal width to honour, so never wrap a number
        console.width = 200
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout carries the results alone
    try:
        result = run(args)
    except MaskError as e:
        print(f"mask-eval: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

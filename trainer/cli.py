"""`mask-train`: make a task mask for a base model, by MFT or by a baseline, and optionally push it.

    mask-train --model DIR --data train.jsonl --method mft --layers 20-23 --out task.mask
    mask-train --model DIR --method magnitude --mask-ratio 0.1 --layers 20-23 --out l1.mask
    torchrun --nproc-per-node 2 --no-python mask-train ...    # data parallel (trainer/parallel.py)

Arguments are checked here, before any model is loaded; the library functions trust them. Under torchrun only
rank 0 writes, pushes and prints.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mask_store.identity import base_id
from mask_store.checkpoint import tensor_shapes
from mask_store.default_model import default_model_dir
from mask_store.errors import MaskError
from mask_store.format import save_mask
from mask_store.mask import Mask
from mask_store.store import Store

from .baselines import baseline_mask
from .config import InvalidSetting, MFTConfig
from .parallel import DataParallel
from .targets import TargetSpec, select_targets


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mask-train", description=__doc__.splitlines()[0])
    what = parser.add_argument_group("what to mask")
    what.add_argument("--model", help="Hugging Face-format model folder (default: SmolLM2-135M-Instruct)")
    what.add_argument("--method", choices=("mft", "random", "magnitude"), default="mft")
    what.add_argument("--layers", required=True, help="decoder layers A-B, inclusive (e.g. 20-23)")
    what.add_argument("--modules", default="all", help="all, attn, mlp, or a comma list of q,k,v,o,gate,up,down")
    what.add_argument("--mask-ratio", type=float, default=0.1, help="fraction of each target matrix removed")
    what.add_argument("--seed", type=int, default=0)

    mft = parser.add_argument_group("MFT training (--method mft)")
    mft.add_argument("--data", help="training JSON lines: {prompt, completion} or {messages}")
    mft.add_argument("--eval", help="held-out JSON lines, same schema, for the final base-vs-mask summary")
    mft.add_argument("--init", choices=("magnitude", "random"), default="magnitude", help="initial scores")
    length = mft.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps (default: one epoch)")
    length.add_argument("--epochs", type=float, help="passes over the training data")
    mft.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate on the scores")
    mft.add_argument("--warmup", type=float, default=0.1, help="fraction of steps with linear warm-up")
    mft.add_argument("--batch-size", type=int, default=8)
    mft.add_argument("--grad-accum", type=int, default=1)
    mft.add_argument("--seq-len", type=int, default=256, help="examples are truncated to this many tokens")
    mft.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay on the scores")
    mft.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                     help="auto: bfloat16 on a GPU that supports it, else float32")
    mft.add_argument("--eval-accuracy", action="store_true",
                     help="require exact-match accuracy on --eval (every record needs an \"answer\"); "
                          "without it, accuracy is reported whenever every eval record has one")
    mft.add_argument("--max-new-tokens", type=int, default=32, help="greedy generation length for exact match")
    mft.add_argument("--eval-batch-size", type=int, default=32, help="examples per batch when evaluating")
    mft.add_argument("--autocast", action="store_true",
                     help="run the training forward passes under bf16 autocast (weights keep --dtype); for large "
                          "models on a GPU")
    mft.add_argument("--gradient-checkpointing", action="store_true",
                     help="recompute decoder activations in the backward pass: less memory, same mask, slower")
    mft.add_argument("--checkpoint", metavar="FILE", help="save the training state here as training goes")
    mft.add_argument("--checkpoint-every", type=int, default=50, metavar="N", help="steps between saves")
    mft.add_argument("--resume", action="store_true",
                     help="continue from --checkpoint; the mask is the one an uninterrupted run gives")

    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, help="where to write the .mask file")
    out.add_argument("--push", metavar="NAME", help="also push the mask to the store under NAME")
    out.add_argument("--tag", action="append", default=[], help="with --push: tags for the new version")
    out.add_argument("--store", help="store URI for --push (default: $MASKSERVE_STORE or the local cache store)")
    return parser


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """What flags need of each other and of the file system; each setting's range is MFTConfig's to check."""
    try:
        MFTConfig.from_args(args)
    except InvalidSetting as e:
        parser.error(f"{e.flag} {e.rule}")
    if args.method == "mft":
        if not args.data:
            parser.error("--method mft needs --data")
        for flag, path in (("--data", args.data), ("--eval", args.eval)):
            if path and not Path(path).is_file():
                parser.error(f"{flag} {path}: no such file")
        if args.eval_accuracy and not args.eval:
            parser.error("--eval-accuracy needs --eval")
        if args.resume and not args.checkpoint:
            parser.error("--resume needs --checkpoint FILE")
        if args.checkpoint_every < 1:
            parser.error("--checkpoint-every must be at least 1")
        if args.checkpoint:
            _check_file_path(parser, "--checkpoint", args.checkpoint)
    if args.tag and not args.push:
        parser.error("--tag needs --push")
    _check_file_path(parser, "--out", args.out)


def _check_file_path(parser: argparse.ArgumentParser, flag: str, path: str) -> None:
    """A file this run will write: refused now, not after training, when its folder is missing."""
    if Path(path).is_dir() or not Path(path).parent.is_dir():
        parser.error(f"{flag} {path}: not a file in an existing folder")


def _open_push_target(args: argparse.Namespace) -> Store | None:
    """Check the --push name, tags and store before training, not after it."""
    if not args.push:
        return None
    store = Store(args.store)
    store.check_push(args.push, args.tag)
    return store


def run(args: argparse.Namespace) -> Mask:
    model_dir = Path(args.model) if args.model else default_model_dir()
    if args.method != "mft":
        return baseline_mask(model_dir, args.method, args.layers, args.modules, args.mask_ratio, args.seed)
    from .mft import train_from_args

    spec = TargetSpec.parse(args.layers, args.modules)
    names = select_targets(spec, tensor_shapes(model_dir))
    tensors, extra = train_from_args(args, model_dir, names)
    training = {"method": "mft", **spec.describe(), "model": model_dir.name, **extra}
    return Mask(base_id(model_dir), tensors, training)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    try:
        store = _open_push_target(args)
        mask = run(args)
        if not DataParallel.from_env().is_main:
            return 0
        digest = save_mask(mask, args.out)
        print(f"wrote {args.out}: {mask.removed_count:,} of {mask.masked_count:,} weights removed, digest {digest}")
        if store is not None:
            record = store.push(args.out, args.push, args.tag)
            print(f"pushed {record.ref} {record.digest}")
    except MaskError as e:
        print(f"mask-train: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`mask-serve`: vLLM's OpenAI server for one base model, with per-request masks, A/B experiments and keys.

    mask-serve [--model DIR] [--store URI] [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--admin-key KEY]
               [--experiments FILE] [--mask-memory 1GiB] [any vLLM engine or server option]
    mask-serve ab report NAME [--db FILE] [--json]

Every vLLM option works as it does for `vllm serve`; maskserve forces `--enforce-eager` (the per-request mask
correction runs eager Python in the forward pass) and sets the worker extension.
"""

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence

from mask_store.errors import MaskError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'512MiB', '1GiB', '2GB', '1048576' -> bytes (binary multiples either way)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512MiB or 2GiB)")
    unit = (m[2] or "B").upper()[0]
    return int(float(m[1]) * {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit])


def report_main(argv: Sequence[str]) -> int:
    from .ablog import ABLog, format_report, report
    from .app import default_ab_db

    parser = argparse.ArgumentParser(prog="mask-serve ab report", description="per-arm results of an experiment")
    parser.add_argument("name")
    parser.add_argument("--db", default=default_ab_db(), help="the server's A/B log (default: %(default)s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        data = report(ABLog(args.db, create=False), args.name)
    except MaskError as e:
        print(f"mask-serve: error: {e}", file=sys.stderr)
        return 1
    if not data["arms"]:
        print(f"mask-serve: error: no requests or definition for experiment {args.name!r} in {args.db}",
              file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else format_report(data))
    return 0


def build_parser():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from .app import default_ab_db

    parser = make_arg_parser(FlexibleArgumentParser(prog="mask-serve", description=__doc__.splitlines()[0]))
    parser.set_defaults(host="127.0.0.1")
    ours = parser.add_argument_group("maskserve")
    ours.add_argument("--store", default=None, help="mask store URI (default: $MASK_STORE or the local cache store)")
    ours.add_argument("--admin-key", default=None, help="key for /v1/masks and /v1/experiments")
    ours.add_argument("--experiments", default=None, help="YAML or JSON file of A/B experiments")
    ours.add_argument("--mask-memory", type=parse_size, default=parse_size("1GiB"),
                      help="memory for loaded masks per worker (LRU beyond it; default 1GiB)")
    ours.add_argument("--ab-db", default=default_ab_db(), help="SQLite file of the A/B log (default: %(default)s)")
    ours.add_argument("--resolve-ttl", type=float, default=1.0,
                      help="seconds a REF resolution is reused before the store is asked again")
    return parser


def serve_main(argv: Sequence[str]) -> int:
    import uvloop
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup

    from mask_store.default_model import default_model_dir
    from mask_store.identity import base_id
    from mask_store.paths import default_store_uri
    from runtime.requests import default_engine_args

    from .app import MaskServeConfig, run

    cli_env_setup()
    parser = build_parser()
    explicit_model = any(a == "--model" or a.startswith("--model=") for a in argv)
    args = parser.parse_args(list(argv))
    try:
        if args.model_tag:
            args.model = args.model_tag
        elif not explicit_model:
            args.model = str(default_model_dir())
        config = MaskServeConfig(
            model_dir=args.model,
            base_id=base_id(args.model),
            store=args.store or default_store_uri(),
            api_keys=tuple(args.api_key or ()) or tuple(filter(None, [os.environ.pop("VLLM_API_KEY", None)])),
            admin_key=args.admin_key,
            experiments_file=args.experiments,
            ab_db=args.ab_db,
            mask_memory_bytes=args.mask_memory,
            resolve_ttl_s=args.resolve_ttl,
        )
    except MaskError as e:
        print(f"mask-serve: error: {e}", file=sys.stderr)
        return 1
    args.api_key = None  # our AuthMiddleware checks keys (VLLM_API_KEY too, popped above), in the OpenAI error schema
    engine_defaults = default_engine_args()
    args.enforce_eager = True
    args.worker_extension_cls = engine_defaults["worker_extension_cls"]
    if args.enable_prefix_caching is None:
        args.enable_prefix_caching = True
    if args.kv_cache_memory_bytes is None and "kv_cache_memory_bytes" in engine_defaults:
        args.kv_cache_memory_bytes = engine_defaults["kv_cache_memory_bytes"]
    if not args.served_model_name:
        from pathlib import Path

        args.served_model_name = [Path(args.model).name]
    validate_parsed_serve_args(args)
    try:
        uvloop.run(run(args, config))
    except MaskError as e:
        print(f"mask-serve: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["ab", "report"]:
        return report_main(argv[2:])
    return serve_main(argv)


if __name__ == "__main__":
    sys.exit(main())

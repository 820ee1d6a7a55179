"""`mask-serve`: vLLM's OpenAI server for one base model, with per-request masks, A/B experiments and keys.

    mask-serve [--model DIR] [--store URI] [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--admin-key KEY]
               [--experiments FILE] [--max-masks 8] [--mask-memory-bytes 1GiB] [--max-body-bytes 32MiB]
               [any vLLM engine or server option]
    mask-serve ab report NAME [--ab-db FILE] [--json]

This is vLLM's own server (`run_server`) with maskserve as an endpoint plugin (serve/plugin.py), so every vLLM
option works as it does for `vllm serve`, vLLM's default compilation included. maskserve sets the worker extension
and its model loader (which wraps the `--load-format` you choose), and, unless you pass `--dtype`, the dtype that is
fast on this machine (runtime/requests.py). Before serving, a canary checks that masks apply.
"""

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence

from mask_store.errors import MaskError
from runtime.requests import DEFAULT_MASK_MEMORY, DEFAULT_MAX_MASKS

_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT])([iI]?)[bB]\s*$")


def parse_size(text: str) -> int:
    """Bytes in the grammar of vLLM's `*-bytes` flags (`human_readable_int`: 1k = 1000, 1K = 1024, 25.6k), which
    also takes the unit spellings people write: 512MiB and 2GiB are binary, 2GB and 2gB follow the letter's case."""
    from vllm.utils.argparse_utils import human_readable_int

    if m := _UNIT.match(text):
        number, prefix, binary = m.groups()
        text = number + (prefix.upper() if binary else prefix)
    try:
        return human_readable_int(text)
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} ({e}; try 512MiB, 2G or 1500000000)") from None


def report_main(argv: Sequence[str]) -> int:
    from .ablog import ABLog, format_report, report
    from .config import default_ab_db

    parser = argparse.ArgumentParser(prog="mask-serve ab report", description="per-arm results of an experiment")
    parser.add_argument("name")
    parser.add_argument("--ab-db", "--db", dest="ab_db", default=default_ab_db(),
                        help="the server's A/B log, as mask-serve --ab-db (default: %(default)s; --db is its older name)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        data = report(ABLog(args.ab_db, create=False), args.name)
    except MaskError as e:
        print(f"mask-serve: error: {e}", file=sys.stderr)
        return 1
    if not data["arms"]:
        print(f"mask-serve: error: no requests or definition for experiment {args.name!r} in {args.ab_db}",
              file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else format_report(data))
    return 0


def build_parser():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from .config import default_ab_db
    from .limits import DEFAULT_MAX_BODY_BYTES
    from .masks import DEFAULT_RESOLVE_TTL_S

    parser = make_arg_parser(FlexibleArgumentParser(prog="mask-serve", description=__doc__.splitlines()[0]))
    parser.set_defaults(host="127.0.0.1")
    ours = parser.add_argument_group("maskserve")
    ours.add_argument("--store", default=None,
                      help="mask store URI (default: $MASKSERVE_STORE or the local cache store)")
    ours.add_argument("--admin-key", default=None, help="key for /v1/masks and /v1/experiments")
    ours.add_argument("--experiments", default=None, help="YAML or JSON file of A/B experiments")
    ours.add_argument("--max-masks", type=int, default=DEFAULT_MAX_MASKS,
                      help="masks resident at once per worker, like --max-loras (LRU beyond; default %(default)s)")
    ours.add_argument("--mask-memory-bytes", "--mask-memory", dest="mask_memory_bytes", type=parse_size,
                      default=DEFAULT_MASK_MEMORY,
                      help="memory for the resident masks per worker, split evenly over --max-masks slots "
                           f"(default {DEFAULT_MASK_MEMORY >> 30}GiB; sizes as vLLM's *-bytes flags take them: "
                           "1G or 1GiB = 2^30, 1g = 10^9)")
    ours.add_argument("--ab-db", default=default_ab_db(), help="SQLite file of the A/B log (default: %(default)s)")
    ours.add_argument("--resolve-ttl", type=float, default=DEFAULT_RESOLVE_TTL_S,
                      help="seconds a REF resolution is reused before the store is asked again (default %(default)s)")
    ours.add_argument("--max-body-bytes", type=parse_size, default=DEFAULT_MAX_BODY_BYTES,
                      help="larger request bodies are refused with 413, on every route "
                           f"(default {DEFAULT_MAX_BODY_BYTES >> 20}MiB)")
    return parser


def model_tensor_shapes(model_dir: str) -> dict[str, tuple[int, ...]]:
    from transformers import AutoConfig

    from runtime.layout import ModelShape

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise MaskError(f"cannot read the model config in {model_dir}: {e}") from e
    return ModelShape.from_config(config).hf_shapes()


def apply_engine_defaults(args) -> None:
    """What runtime.requests.default_engine_args sets, applied to vLLM's parsed CLI arguments; the user's win."""
    from runtime import vllm_compat
    from runtime.requests import default_engine_args

    vllm_compat.prefer_v1_runner()
    user = {"load_format": args.load_format, "model_loader_extra_config": args.model_loader_extra_config,
            "additional_config": args.additional_config}
    if args.dtype != "auto":
        user["dtype"] = args.dtype
    defaults = default_engine_args(args.max_masks, args.mask_memory_bytes, **user)
    for key, value in defaults.items():  # every key: a default added in runtime reaches mask-serve unasked
        if key == "compilation_config":  # vLLM parsed it into an object; fill the fields the user left unset
            for field, default in value.items():
                if getattr(args.compilation_config, field) is None and not args.enforce_eager:
                    setattr(args.compilation_config, field, default)
        elif key in user or key == "worker_extension_cls" or getattr(args, key) in (None, "auto"):
            setattr(args, key, value)  # `user`'s keys came back merged with ours; None / "auto": left to us


def serve_main(argv: Sequence[str]) -> int:
    import uvloop
    from vllm.entrypoints.launchers.api_server.entry import run_server
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args

    from mask_store.default_model import default_model_dir
    from mask_store.identity import base_id
    from mask_store.paths import default_store_uri
    from .config import ARGS_FIELD, MaskServeConfig
    from .plugin import allow_plugin, open_experiments

    cli_env_setup()
    parser = build_parser()
    explicit_model = any(a == "--model" or a.startswith("--model=") for a in argv)
    args = parser.parse_args(list(argv))
    try:
        if args.model_tag:
            args.model = args.model_tag
        elif not explicit_model:
            args.model = str(default_model_dir())
        if args.max_masks < 1:
            raise MaskError(f"--max-masks must be at least 1, got {args.max_masks}")
        if args.headless or (args.api_server_count or 1) > 1:
            raise MaskError("mask-serve runs one API server process, where mask admission and the A/B log live; "
                            "--headless and --api-server-count above 1 are not supported (run replicas instead)")
        config = MaskServeConfig(
            model_dir=args.model,
            base_id=base_id(args.model),
            tensor_shapes=model_tensor_shapes(args.model),
            store=args.store or default_store_uri(),
            api_keys=tuple(args.api_key or ()) or tuple(filter(None, [os.environ.pop("VLLM_API_KEY", None)])),
            admin_key=args.admin_key,
            experiments_file=args.experiments,
            ab_db=args.ab_db,
            resolve_ttl_s=args.resolve_ttl,
            max_body_bytes=args.max_body_bytes,
        )
        open_experiments(config)[1].close()  # a bad experiments file or A/B log path fails now, not after start-up
        allow_plugin()
    except MaskError as e:
        print(f"mask-serve: error: {e}", file=sys.stderr)
        return 1
    args.api_key = None  # our AuthMiddleware checks keys (VLLM_API_KEY too, popped above), in the OpenAI error schema
    apply_engine_defaults(args)
    if not args.served_model_name:
        from pathlib import Path

        args.served_model_name = [Path(args.model).name]
    validate_parsed_serve_args(args)
    setattr(args, ARGS_FIELD, config)
    configure_logging_from_args(args)  # as vLLM's own server entry does: --log-level, --log-config-file
    try:
        uvloop.run(run_server(args))
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

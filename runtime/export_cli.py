"""`mask-export`: a standalone checkpoint with a stored mask applied, for whoever wants the masked model without
maskserve (another server, a fine-tune, a comparison).

It lives in runtime because the materialized model (torch, transformers) does; mask-store, which only moves `.mask`
files, stays free of both. User mistakes print one line on stderr and exit 1.
"""

import argparse
import sys
from collections.abc import Sequence

from mask_store.errors import MaskError
from mask_store.paths import default_store_uri
from mask_store.store import Store

from .reference import export_materialized


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mask-export", description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="the mask: NAME, NAME@N, NAME:TAG or a digest prefix (12+ hex)")
    parser.add_argument("--store", default=None, help=f"store URI (default: $MASKSERVE_STORE or {default_store_uri()})")
    parser.add_argument("--model", required=True, metavar="MODEL_DIR", help="the base model the mask was trained on")
    parser.add_argument("--out", "--materialize", dest="out", required=True, metavar="OUT_DIR",
                        help="a new (or empty) folder to write (--materialize is its older name)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = Store(args.store)
        record = store.resolve(args.ref)
        export_materialized(args.model, store.local_path(record), args.out)
    except MaskError as e:
        print(f"mask-export: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a path the user gave: missing folder, no permission
        print(f"mask-export: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"{record.ref} materialized into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

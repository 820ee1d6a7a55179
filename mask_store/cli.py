"""`mask-store`: push, list, tag and check masks in a store (a local folder or s3://bucket/prefix).

Every read command takes --json for scripts. Exit codes, as grep and diff use them: 0 done; 1 `verify` found
problems in the store (listed on stdout); 2 the command could not run: a user mistake, an unusable store or bad
arguments, with one line on stderr.
"""

import argparse
import json
import logging
import sys
from collections.abc import Sequence

PROBLEMS, ERROR = 1, 2  # exit codes beside 0 (argparse exits 2 on bad arguments too)

from .identity import base_id
from .errors import MaskError
from .paths import default_store_uri
from .store import Store, VersionRecord


def _short(digest: str) -> str:
    return digest[:12]


def _size(nbytes: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError


def _print_table(records: list[VersionRecord]) -> None:
    rows = [("REF", "DIGEST", "BASE", "REMOVED", "SIZE", "TAGS", "PUSHED")]
    for r in records:
        ratio = f"{100 * r.removed / r.masked:.2f}%" if r.masked else "0%"
        rows.append((r.ref, _short(r.digest), _short(r.base_id), ratio, _size(r.nbytes), ",".join(r.tags), r.pushed_at))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _print_record(r: VersionRecord) -> None:
    ratio = r.removed / r.masked if r.masked else 0.0
    print(f"{r.ref}  ({', '.join(r.tags) or 'no tags'})")
    print(f"  digest      {r.digest}")
    print(f"  base        {r.base_id}")
    print(f"  removed     {r.removed:,} of {r.masked:,} masked weights ({100 * ratio:.2f}%)")
    print(f"  size        {_size(r.nbytes)}")
    print(f"  created     {r.created_at}")
    print(f"  pushed      {r.pushed_at}")
    for key in sorted(r.training):
        value = r.training[key]
        print(f"  {key:<11} {json.dumps(value) if isinstance(value, (dict, list)) else value}")


def _emit(args: argparse.Namespace, payload, human) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        human()


def cmd_push(args, store: Store) -> int:
    expected = base_id(args.base) if args.base else None
    record = store.push(args.file, args.name, args.tag, base_id=expected)
    _emit(args, record.to_json(), lambda: print(f"{record.ref} {record.digest}"))
    return 0


def cmd_ls(args, store: Store) -> int:
    records = store.versions(base_id=args.base, name=args.name)
    _emit(args, [r.to_json() for r in records], lambda: _print_table(records))
    return 0


def cmd_show(args, store: Store) -> int:
    record = store.resolve(args.ref)
    _emit(args, record.to_json(), lambda: _print_record(record))
    return 0


def cmd_pull(args, store: Store) -> int:
    record = store.pull(args.ref, args.out)
    _emit(args, record.to_json(), lambda: print(f"{record.ref} {record.digest} -> {args.out}"))
    return 0


def cmd_tag(args, store: Store) -> int:
    record = store.tag(args.ref, args.tag)
    _emit(args, record.to_json(), lambda: print(f"{record.name}:{args.tag} -> {record.ref}"))
    return 0


def cmd_untag(args, store: Store) -> int:
    store.untag(args.name_tag)
    print(f"removed tag {args.name_tag}")
    return 0


def cmd_rm(args, store: Store) -> int:
    record = store.remove(args.ref)
    print(f"removed {record.ref} {record.digest}")
    return 0


def cmd_verify(args, store: Store) -> int:
    problems = store.verify(args.ref)
    checked = 1 if args.ref else len(store.versions())
    _emit(
        args,
        {"checked": checked, "problems": problems},
        lambda: print("\n".join(problems) if problems else f"ok: {checked} version(s) verified"),
    )
    return PROBLEMS if problems else 0


def cmd_gc(args, store: Store) -> int:
    removed = store.gc(grace_s=args.grace)
    _emit(args, {"removed": removed}, lambda: print(f"removed {len(removed)} unreferenced blob(s)"))
    return 0


def cmd_base_id(args, store: Store | None) -> int:
    bid = base_id(args.model_dir, use_cache=not args.no_cache)
    _emit(args, {"model_dir": args.model_dir, "base_id": bid}, lambda: print(bid))
    return 0


def cmd_export(args, store: Store | None) -> int:
    """Moved to runtime with the model code it needs; kept so old scripts learn where it went."""
    print("mask-store: error: 'mask-store export' is now 'mask-export' (same arguments)", file=sys.stderr)
    return ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mask-store", description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help=f"store URI (default: $MASKSERVE_STORE or {default_store_uri()})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help, json_flag=True):
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = command("push", cmd_push, "add a .mask file as the next version of NAME; prints NAME@VERSION DIGEST")
    p.add_argument("file")
    p.add_argument("--name", required=True)
    p.add_argument("--tag", action="append", default=[], help="also point TAG at the new version (repeatable)")
    p.add_argument("--base", metavar="MODEL_DIR", help="refuse the mask unless it was trained on this model")

    p = command("ls", cmd_ls, "list live versions")
    p.add_argument("name", nargs="?", help="only this mask name")
    p.add_argument("--base", metavar="BASE_ID", help="only masks for this base id")

    p = command("show", cmd_show, "show one version: REF is NAME, NAME@N, NAME:TAG or a digest prefix (12+ hex)")
    p.add_argument("ref")

    p = command("pull", cmd_pull, "write a version's .mask file")
    p.add_argument("ref")
    p.add_argument("--out", "-o", "--output", dest="out", required=True, metavar="FILE",
                   help="where to write the .mask file (-o and --output are older names)")

    p = command("tag", cmd_tag, "point NAME:TAG at the version REF names")
    p.add_argument("ref")
    p.add_argument("tag")

    p = command("untag", cmd_untag, "remove a tag", json_flag=False)
    p.add_argument("name_tag", metavar="NAME:TAG")

    p = command("rm", cmd_rm, "remove a version (its number is never reused) and its tags", json_flag=False)
    p.add_argument("ref")

    p = command("verify", cmd_verify, "re-hash and decode stored masks; exit 1 on any problem, 2 if verify cannot run")
    p.add_argument("ref", nargs="?")

    p = command("gc", cmd_gc, "delete blobs that no live version references")
    p.add_argument("--grace", type=float, default=3600.0, help="S3 only: keep blobs younger than this (seconds)")

    p = command("base-id", cmd_base_id, "print the base id of a Hugging Face-format model folder")
    p.add_argument("model_dir")
    p.add_argument("--no-cache", action="store_true", help="re-hash every tensor")

    p = sub.add_parser("export", help="moved: use mask-export")
    p.set_defaults(func=cmd_export)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="mask-store: %(message)s")  # e.g. stored objects a read skipped, one line each
    try:
        store = None if args.func in (cmd_base_id, cmd_export) else Store(args.store)
        return args.func(args, store)
    except MaskError as e:
        print(f"mask-store: error: {e}", file=sys.stderr)
        return ERROR
    except OSError as e:  # a path the user gave: missing folder, a directory, no permission
        print(f"mask-store: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return ERROR


if __name__ == "__main__":
    sys.exit(main())

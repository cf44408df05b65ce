"""``kms audit ...``: the CloudTrail audit stream from the command line.

Rules: each subcommand lives in its own module of kms.audit, which gives
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status); this module only
routes, so the subcommands are built and tested apart.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module under kms.audit, one-line help)
SUBCOMMANDS = {
    "tail": ("tail", "print audit records as readable lines or JSON lines (--follow)"),
    "export": ("export", "write the log's records in CloudTrail's S3 layout, with digests"),
    "verify": ("verify", "check an export (or a live log with --data-dir)"),
    "prune": ("prune", "drop exported audit facts older than an age from the live log"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kms audit", description="The CloudTrail audit stream")
    sub = p.add_subparsers(dest="subcommand", required=True)
    for name, (module, help_) in SUBCOMMANDS.items():
        s = sub.add_parser(name, help=help_)
        try:
            mod = importlib.import_module(f"kms.audit.{module}")
        except ModuleNotFoundError:  # not built yet
            s.set_defaults(module=None)
            continue
        mod.add_arguments(s)
        s.set_defaults(module=mod)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.module is None:
        print(f"kms audit: error: {args.subcommand} is not available", file=sys.stderr)
        return 2
    return int(args.module.run(args))


if __name__ == "__main__":
    sys.exit(main())

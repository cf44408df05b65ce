"""The ``kms`` command: ``kms serve`` runs one region node.

Rules: flags override the ``--config`` TOML file, which overrides the defaults;
with no configuration at all, a development-ready node starts on 127.0.0.1:8080.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aiohttp import web

from kms import logs as kms_logging
from kms.api.app import create_app
from kms.config import Config
from kms.node import Node


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kms", description="A self-hosted AWS KMS-compatible service")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run one region node")
    s.add_argument("--host", help="listen address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="listen port (default 8080)")
    s.add_argument("--region", help="this node's region (default us-east-1)")
    s.add_argument("--data-dir", type=Path, help="where the log and keys live (default ./kms-data)")
    s.add_argument("--account-id", help="the account of this node (default 111122223333)")
    s.add_argument("--dev", action="store_true", default=None,
                   help="development mode: any access key acts as the account root; "
                        "/_kms/reset and /_kms/clock exist")
    s.add_argument("--config", type=Path, help="TOML configuration file")
    s.add_argument("--log-format", choices=("auto", "json", "console"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {
        "host": args.host, "port": args.port, "region": args.region, "data_dir": args.data_dir,
        "account_id": args.account_id, "dev": args.dev, "log_format": args.log_format,
    }
    try:
        config = Config.load(args.config, overrides)
    except (OSError, ValueError, TypeError) as exc:  # TOMLDecodeError is a ValueError
        print(f"kms: error: configuration: {exc}", file=sys.stderr)
        return 2
    kms_logging.configure(config.log_format)
    try:
        node = Node(config)
    except (OSError, ValueError) as exc:  # unreadable data dir, bad KMS_ROOT_KEY or root.key
        print(f"kms: error: cannot start the node: {exc}", file=sys.stderr)
        return 2
    if node.root_credential is not None and not config.dev:
        c = node.root_credential
        print(
            "Created the account root credential (shown once; stored in "
            f"{config.data_dir / 'credentials.json'}):\n"
            f"  aws_access_key_id     = {c.access_key_id}\n"
            f"  aws_secret_access_key = {c.secret_access_key}\n"
            f"  region                = {config.region}",
            flush=True,
        )
    print(f"kms: serving region {config.region} on http://{config.host}:{config.port}"
          f"{' (dev mode)' if config.dev else ''}", flush=True)
    web.run_app(create_app(node), host=config.host, port=config.port, print=None,
                access_log=None, handle_signals=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

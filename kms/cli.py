"""``python -m kms.cli serve`` runs one region node; its parts (``build_parser``,
``load_config``, ``serve``) are reused by regions.cli, the ``kms`` console script.

Rules: flags override the ``--config`` TOML file, which overrides the defaults;
with no configuration at all, a development-ready node starts on 127.0.0.1:8080.
Start-up is ordered so a mistake costs nothing: validate the configuration, bind the
port, lock and check the data dir, and only then create anything or print "serving";
each refusal is one ``kms: error:`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from aiohttp import web

import kms
from kms import logs as kms_logging
from kms.api.app import create_app
from kms.config import Config
from kms.datadir import DataDirRefused, open_data_dir
from kms.node import Node


def version() -> str:
    try:
        return metadata.version("kms-selfhosted")
    except metadata.PackageNotFoundError:  # running from a source tree
        return kms.__version__


def build_parser(
    serve_options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.ArgumentParser:
    """The ``kms`` parser; ``serve_options`` adds a layer's own ``serve`` flags."""
    p = argparse.ArgumentParser(
        prog="kms", description="A self-hosted AWS KMS-compatible service",
        epilog="each command takes --help")
    p.add_argument("--version", action="version", version=f"kms {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run one region node")
    # Listed for --help; `kms region ...` and `kms audit ...` are routed before this parser
    # (regions.cli.main) to their own parsers.
    sub.add_parser("region", help="multi-region operator actions: promote, conflicts",
                   add_help=False)
    sub.add_parser("audit", help="the CloudTrail audit stream: tail, export, verify, prune",
                   add_help=False)
    s.add_argument("--host", help="listen address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="listen port (default 8080)")
    s.add_argument("--region", help="this node's region (default us-east-1)")
    s.add_argument("--data-dir", type=Path, help="where the log and keys live (default ./kms-data)")
    s.add_argument("--account-id", help="the account of this node (default 111122223333)")
    s.add_argument("--dev", action="store_true", default=None,
                   help="development mode: signatures are not checked; a caller acts as "
                        "the principal the config names for its access key, else as the "
                        "account root (policies still apply); /_kms/reset and /_kms/clock "
                        "exist")
    s.add_argument("--config", type=Path, help="TOML configuration file")
    s.add_argument("--log-format", choices=("auto", "json", "console"))
    if serve_options is not None:
        serve_options(s)
    return p


def load_config(args: argparse.Namespace) -> Config:
    """The merged, validated configuration (flags over the file over the defaults);
    raises OSError, ValueError or TypeError saying what is wrong."""
    overrides = {
        "host": args.host, "port": args.port, "region": args.region, "data_dir": args.data_dir,
        "account_id": args.account_id, "dev": args.dev, "log_format": args.log_format,
    }
    return Config.load(args.config, overrides)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else happens (OSError says why not)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"cannot listen on {where}: {_reason(exc)}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {where}: {_reason(exc)}") from None
    return sock


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def fail(message: str) -> int:
    print(f"kms: error: {message}", file=sys.stderr)
    return 2


class StartRefused(Exception):
    """A layer's ``make_app`` refuses to start; the message says why, in one line."""


def serve(config: Config,
          make_app: Callable[[Node], web.Application] = create_app) -> int:
    """Run a node for a validated ``config`` until a signal stops it: bind the port, lock and
    check the data dir, create the node, let ``make_app`` wire it (it may refuse with
    DataDirRefused or StartRefused), print "serving", run. Each refusal returns 2."""
    try:
        sock = listen(config.host, config.port)
    except OSError as exc:
        return fail(str(exc))
    try:
        data = open_data_dir(config.data_dir, region=config.region, account_id=config.account_id)
    except DataDirRefused as exc:
        sock.close()
        return fail(str(exc))
    kms_logging.configure(config.log_format)
    try:
        node = Node(config, root_key=data.root_key)
        app = make_app(node)
    except (DataDirRefused, StartRefused) as exc:
        sock.close()
        return fail(str(exc))
    except (OSError, ValueError) as exc:  # unreadable data dir or credentials
        sock.close()
        return fail(f"cannot start the node: {exc}")
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
    host, port = config.host, sock.getsockname()[1]  # port 0: the one the system chose
    shown = f"[{host}]" if ":" in host else host
    print(f"kms: serving region {config.region} on http://{shown}:{port}"
          f"{' (dev mode)' if config.dev else ''}", flush=True)
    asyncio.run(run_until_signalled(app, sock))
    return 0  # the data dir lock is released as the process exits


SHUTDOWN_GRACE_SECONDS = 5.0  # for requests in flight at a stop (a container's stop allows 10)


async def run_until_signalled(app: web.Application, sock: socket.socket) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM or SIGINT, then stop it: stop listening, let
    requests in flight finish (held long polls are answered at once by ``on_shutdown``),
    then the cleanup contexts (read facts, summaries, the regions' logs with their final
    checkpoint). The stop runs in a task nobody has cancelled: aiohttp's ``run_app`` runs it
    inside its own cancelled main task, where one stray CancelledError ends the cleanup
    before the logs are closed and the process then waits forever on their threads."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await runner.setup()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await web.SockSite(runner, sock).start()
        await stopping.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """``python -m kms.cli``: one region node, no peers (``regions.cli`` is the ``kms``
    console script, which adds them)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "audit":
        from kms.audit import cli as audit_cli
        return audit_cli.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command != "serve":  # `region` needs the multi-region layer: the `kms` script
        return fail(f"'{args.command}' is a command of the `kms` script (regions.cli)")
    try:
        config = load_config(args)
    except (OSError, ValueError, TypeError) as exc:  # TOMLDecodeError is a ValueError
        return fail(f"configuration: {exc}")
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())

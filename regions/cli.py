"""The ``kms`` console script: ``kms serve`` as kms.cli runs it, plus the node's peers.

Rules: the same parser, start-up order and refusals as kms.cli (validate -> bind -> lock and
check the data dir -> node -> print -> run); the topology (``--peer REGION=URL``, repeatable,
over the config's ``[[peers]]``) is validated with the rest of the configuration, before the
port is bound, and a mistake is one ``kms: error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from kms.api.app import create_app
from kms.cli import build_parser, fail, load_config, serve
from kms.node import Node
from regions.forward import Forwarder
from regions.host import RegionHost
from regions.peering import Peering
from regions.topology import Topology


def _peer_options(serve_parser: argparse.ArgumentParser) -> None:
    serve_parser.add_argument(
        "--peer", action="append", default=[], metavar="REGION=URL",
        help="another region's node (repeatable): requests signed for REGION are "
             "forwarded to URL")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "region":  # operator actions on a cluster (promote, conflicts)
        from regions import admin_cli
        return admin_cli.main(argv[1:])
    if argv and argv[0] == "audit":  # the CloudTrail stream: tail, export, verify, prune
        from kms.audit import cli as audit_cli
        return audit_cli.main(argv[1:])
    args = build_parser(_peer_options).parse_args(argv)
    try:
        config = load_config(args)
    except (OSError, ValueError, TypeError) as exc:  # TOMLDecodeError is a ValueError
        return fail(f"configuration: {exc}")
    try:
        topology = Topology.parse(config.region, config.peers, args.peer)
    except ValueError as exc:
        return fail(f"configuration: {exc}")
    return serve(config, lambda node: make_app(node, topology))


def make_app(node: Node, topology: Topology) -> web.Application:
    """The kms app, with the region host deciding which node serves each signed region.
    Raises DataDirRefused for a region dir on disk (``--dev``) that cannot be served."""
    forwarder = Forwarder(node.config.region)
    host = RegionHost(node, topology,
                      {region: forwarder.to(peer) for region, peer in topology.peers.items()})
    host.peering = Peering(host, topology)
    app = create_app(node, host)
    app.cleanup_ctx.append(forwarder.session_ctx)
    host.peering.install(app)
    return app


if __name__ == "__main__":
    sys.exit(main())

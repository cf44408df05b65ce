"""``kms region promote`` and ``kms region conflicts``: operator actions on one region node.

Rules: each talks to the node at ``--endpoint`` (``/_kms/region/promote``,
``/_kms/region/conflicts``, regions.admin), signing the request with SigV4 for the node's
region when credentials are found (the usual AWS environment and profile chain, or
``--access-key``/``--secret-key``); a ``--dev`` node takes it unsigned. One line of text on
success, or the JSON answer with ``--json``; a refusal is one ``kms region: error:`` line
on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from kms import admin_client

TIMEOUT = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kms region",
                                     description="Operator actions on a region node.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint", required=True, help="the region node's URL")
        p.add_argument("--region", help="the region (default: the one the node serves)")
        p.add_argument("--json", action="store_true", help="print the JSON answer")
        p.add_argument("--access-key", help="sign with this access key id")
        p.add_argument("--secret-key", help="... and this secret access key")

    promote = sub.add_parser("promote", help="make the replica at --endpoint the primary "
                             "under a higher epoch (the old primary is not asked)")
    common(promote)
    promote.add_argument("key_id", metavar="KEY_ID", help="a multi-Region key id or ARN")
    conflicts = sub.add_parser("conflicts", help="list events an old primary wrote under an "
                               "old epoch that were fenced, and keys orphaned by them")
    common(conflicts)
    return parser


def _call(args: argparse.Namespace, method: str, path: str,
          body: dict[str, Any] | None = None, query: str = "") -> dict[str, Any]:
    creds = admin_client.credentials(args.access_key, args.secret_key)
    return admin_client.call(args.endpoint, method, path, creds, body=body, query=query,
                             timeout=TIMEOUT)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def promote(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"KeyId": args.key_id}
    if args.region:
        body["Region"] = args.region
    out = _call(args, "POST", "/_kms/region/promote", body)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"promoted {out['KeyId']} to primary in {out['PrimaryRegion']} "
              f"(epoch {out['Epoch']})")
    return 0


def conflicts(args: argparse.Namespace) -> int:
    out = _call(args, "GET", "/_kms/region/conflicts",
                query=f"region={args.region}" if args.region else "")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    found = out["Conflicts"]
    if not found:
        print(f"no conflicts in {out['Region']}")
    for c in found:
        print(f"{c['KeyId']}: {c['EventType']} written in {c['Region']} under epoch "
              f"{c['Epoch']} (origin seq {c['OriginSeq']}, {_when(c['Time'])}) fenced by "
              f"epoch {c['FencedByEpoch']}, primary {c['PrimaryRegion']}")
    for o in out.get("Orphans", []):  # a node before orphans were reported has none
        print(f"{o['KeyId']}: orphaned in {o['Region']} ({o['KeyState']}). {o['Hint']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return promote(args) if args.command == "promote" else conflicts(args)
    except admin_client.NodeRefused as exc:
        print(f"kms region: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

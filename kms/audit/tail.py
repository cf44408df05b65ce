"""``kms audit tail``: a region's CloudTrail records as readable lines or JSON lines.

Rules: reads ``GET /_kms/audit`` of each ``--endpoint`` (one thread each, long-polling with
``--follow``), signed with the usual AWS credential chain (env vars, profile) when one is
found; filters are applied here, on the records as the node serves them; every line names
its region. A cursor the node refuses as expired (a reset) restarts that region from the
oldest record it holds, with one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

PAGE = 1000
FOLLOW_WAIT = 20
_RELATIVE = re.compile(r"^(\d+)([smhd])$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep reading: print records as they become durable")
    p.add_argument("--since", metavar="TIME",
                   help="only records at or after TIME (ISO 8601, or 30s, 10m, 2h, 7d ago)")
    p.add_argument("--event-name", metavar="NAME", action="append",
                   help="only this eventName (repeatable)")
    p.add_argument("--principal", metavar="ARN", help="only calls by this principal ARN")
    p.add_argument("--key", metavar="KEY", help="only records naming this key (id or ARN)")
    p.add_argument("--errors", action="store_true", help="only failed or refused calls")
    p.add_argument("--json", action="store_true", help="one CloudTrail record per line")
    p.add_argument("--endpoint", metavar="URL", action="append",
                   help="a region node (repeatable: one per region of a cluster); default "
                        "$AWS_ENDPOINT_URL_KMS, $AWS_ENDPOINT_URL or http://127.0.0.1:8080")
    p.add_argument("--region", action="append",
                   help="a region the endpoint hosts (repeatable; default: its own)")
    p.add_argument("--account", metavar="ID",
                   help="only the records this account receives (a cross-account call gives "
                        "one to the key's owner and one to the caller's account)")


_PIPE_CLOSED = threading.Event()  # stdout's reader went away (a pipe into `head`)


def run(args: argparse.Namespace) -> int:
    try:
        since = _since(args.since)
    except ValueError as exc:
        print(f"kms audit tail: error: {exc}", file=sys.stderr)
        return 2
    endpoints = args.endpoint or [os.environ.get("AWS_ENDPOINT_URL_KMS")
                                  or os.environ.get("AWS_ENDPOINT_URL")
                                  or "http://127.0.0.1:8080"]
    keep = _filter(args, since)
    _credentials()  # once, before the readers start
    lock = threading.Lock()
    failures: list[str] = []
    readers: list[threading.Thread] = []
    for url in endpoints:
        try:
            regions = args.region or [_own_region(url)]
        except OSError as exc:
            print(f"kms audit tail: error: {url} is not reachable: {exc}", file=sys.stderr)
            return 1
        for region in regions:
            t = threading.Thread(target=_read_region, daemon=True,
                                 args=(url.rstrip("/"), region, args, keep, lock, failures))
            t.start()
            readers.append(t)
    try:
        for t in readers:
            while t.is_alive() and not _PIPE_CLOSED.is_set():
                t.join(0.5)
    except KeyboardInterrupt:
        return 130
    if _PIPE_CLOSED.is_set():  # quiet, as `head` expects; nothing more reaches the pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    for line in failures:
        print(f"kms audit tail: error: {line}", file=sys.stderr)
    return 1 if failures else 0


def _read_region(url: str, region: str, args: argparse.Namespace, keep: Any,
                 lock: threading.Lock, failures: list[str]) -> None:
    cursor = ""
    while True:
        query = {"limit": str(PAGE), "region": region}
        if cursor:
            query["after"] = cursor
        if args.follow:
            query["wait"] = str(FOLLOW_WAIT)
        if getattr(args, "account", None):
            query["account"] = args.account
        try:
            page = _get(f"{url}/_kms/audit?{urllib.parse.urlencode(query)}", region)
        except urllib.error.HTTPError as exc:
            body = _error_body(exc)
            if body.get("__type") == "ExpiredCursorException" and cursor:
                with lock:
                    print(f"kms audit tail: {region}: {body.get('message', '')}",
                          file=sys.stderr, flush=True)
                cursor = ""
                continue
            with lock:
                failures.append(f"{region} ({url}): {exc.code} {body.get('__type', '')}: "
                                f"{body.get('message', exc.reason)}")
            return
        except OSError as exc:
            with lock:
                failures.append(f"{region} ({url}) is not reachable: {exc}")
            return
        records = page.get("Records", [])
        cursor = page.get("NextCursor", cursor)
        shown = [r for r in records if keep(r)]
        if shown:
            with lock:
                if _PIPE_CLOSED.is_set():
                    return
                try:
                    for r in shown:
                        print(json.dumps(r, separators=(",", ":")) if args.json
                              else line_of(r))
                    sys.stdout.flush()
                except BrokenPipeError:  # `kms audit tail | head`: the reader has enough
                    _PIPE_CLOSED.set()
                    return
        if not records and not args.follow:
            return


def line_of(r: dict[str, Any]) -> str:
    """time, region, eventName, principal, key, error: one readable line."""
    ident = r.get("userIdentity") or {}
    who = ident.get("arn") or ident.get("invokedBy") or (
        f"{ident.get('type', '?')}:{ident.get('accountId') or ident.get('accessKeyId', '-')}")
    keys = ",".join(res.get("ARN", "").rsplit("/", 1)[-1] for res in r.get("resources") or [])
    parts = [r.get("eventTime", ""), r.get("awsRegion", ""), r.get("eventName", ""), who,
             keys or "-"]
    if r.get("errorCode"):
        parts.append(f"{r['errorCode']}: {r.get('errorMessage', '')}")
    return " ".join(parts)


def _filter(args: argparse.Namespace, since: str | None) -> Any:
    names = set(args.event_name or ())
    key = args.key

    def keep(r: dict[str, Any]) -> bool:
        if names and r.get("eventName") not in names:
            return False
        if since and r.get("eventTime", "") < since:
            return False
        if args.errors and not r.get("errorCode"):
            return False
        if args.principal and (r.get("userIdentity") or {}).get("arn") != args.principal:
            return False
        if key:
            arns = [res.get("ARN", "") for res in r.get("resources") or []]
            if not any(a == key or a.endswith("/" + key) for a in arns):
                return False
        return True

    return keep


def _since(text: str | None) -> str | None:
    """--since as the eventTime form (records compare as strings: same width, UTC)."""
    if not text:
        return None
    m = _RELATIVE.match(text)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        at = datetime.now(UTC) - timedelta(**{unit: int(m.group(1))})
    else:
        try:
            at = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--since {text!r} is neither ISO 8601 nor like 10m, 2h, 7d") \
                from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _own_region(url: str) -> str:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/_kms/health", timeout=10) as r:
            return str(json.load(r)["region"])
    except urllib.error.HTTPError as exc:  # a 503 (degraded, starting) still names it
        region = _error_body(exc).get("region")
        if not region:
            raise
        return str(region)


def _get(url: str, region: str) -> dict[str, Any]:
    headers = _signed_headers(url, region)
    req = urllib.request.Request(url, headers=headers, method="GET")
    with urllib.request.urlopen(req, timeout=FOLLOW_WAIT + 30) as r:
        doc: dict[str, Any] = json.load(r)
        return doc


_CREDENTIALS: list[Any] = []


def _credentials() -> Any:
    if not _CREDENTIALS:
        from botocore.session import Session

        _CREDENTIALS.append(Session().get_credentials())
    return _CREDENTIALS[0]


def _signed_headers(url: str, region: str) -> dict[str, str]:
    """SigV4 headers from botocore's credential chain; none if it finds no credential."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    creds = _credentials()
    if creds is None:
        return {}
    req = AWSRequest(method="GET", url=url)
    SigV4Auth(creds.get_frozen_credentials(), "kms", region).add_auth(req)
    return dict(req.headers.items())


def _error_body(exc: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads(exc.read() or b"{}")
        return doc
    except ValueError:
        return {}

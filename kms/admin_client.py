"""The client side of a node's operator endpoints (``kms audit prune --endpoint``, ``kms region
promote|conflicts``): one JSON request, SigV4-signed with the given key or the AWS credential
chain (for the region the node names), answered with its JSON document or ``NodeRefused``.

Rules: the credential chain never probes an instance metadata service; an error answer is
``"<__type>: <message>"``, an unreachable node says so; every wait is bounded by ``timeout``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.session import Session


class NodeRefused(Exception):
    """The node answered with an error, or could not be asked; the message says which."""


def credentials(access_key: str | None, secret_key: str | None) -> Credentials | None:
    """The given key, else the AWS credential chain's (None: send unsigned, as ``--dev``
    accepts)."""
    if access_key and secret_key:
        return Credentials(access_key, secret_key)
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # no IMDS probe on a laptop
    found = Session().get_credentials()
    return found.get_frozen_credentials() if found is not None else None  # type: ignore[return-value]


def node_region(endpoint: str, timeout: float = 30.0) -> str:
    """The region the node at ``endpoint`` serves (a degraded node still names it)."""
    try:
        with urllib.request.urlopen(endpoint + "/_kms/health", timeout=timeout) as r:
            return str(json.load(r)["region"])
    except urllib.error.HTTPError as exc:  # 503: degraded, but it answers as a node
        try:
            return str(json.load(exc)["region"])
        except (ValueError, KeyError):
            raise NodeRefused(f"{endpoint} does not answer as a kms node: {exc}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise NodeRefused(f"{endpoint} does not answer as a kms node: {exc}") from None


def call(endpoint: str, method: str, path: str, creds: Credentials | None, *,
         body: dict[str, Any] | None = None, query: str = "",
         timeout: float = 30.0) -> dict[str, Any]:
    """``method path[?query]`` on the node with a JSON ``body``; its JSON answer."""
    endpoint = endpoint.rstrip("/")
    url = endpoint + path + (f"?{query}" if query else "")
    data = json.dumps(body).encode() if body is not None else b""
    headers = {"Content-Type": "application/json"}
    if creds is not None:
        request = AWSRequest(method=method, url=url, data=data, headers=headers)
        SigV4Auth(creds, "kms", node_region(endpoint, timeout)).add_auth(request)
        headers = dict(request.headers.items())
    req = urllib.request.Request(url, data=data if method == "POST" else None,
                                 method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            answer: dict[str, Any] = json.load(r)
            return answer
    except urllib.error.HTTPError as exc:
        try:
            doc = json.load(exc)
            message = f"{doc.get('__type', 'Error')}: {doc.get('message', '')}"
        except ValueError:
            message = f"HTTP {exc.code}"
        raise NodeRefused(message) from None
    except (OSError, ValueError) as exc:
        raise NodeRefused(f"{endpoint} is not reachable: {exc}") from None

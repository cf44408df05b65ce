"""The ceiling of this stack: a bare aiohttp app doing the least an Encrypt/Decrypt can do.

One ``POST /`` handler: read the body, ``json.loads`` it, base64-decode the
plaintext (or ciphertext), do ONE AES-256-GCM call with ``cryptography``'s
AESGCM, and answer the same AWS JSON 1.1 response shape the node answers
(``CiphertextBlob``/``Plaintext``, ``KeyId``, ``EncryptionAlgorithm``, an
``x-amzn-RequestId`` header). No auth, no validation model, no key lookup, no
KDF, no audit fact, no log line: whatever the node does beyond this is its overhead.

The ciphertext layout mimics the node's blob in size (a 98-byte header used as
AAD, then ciphertext || tag), so Decrypt request and Encrypt response bodies have
the same length on both servers.

    python ops/bench/ceiling.py --port 9000
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import uuid

from aiohttp import web
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_ID = "00000000-0000-4000-8000-000000000000"
KEY_ARN = f"arn:aws:kms:us-east-1:111122223333:key/{KEY_ID}"
ALGORITHM = "SYMMETRIC_DEFAULT"
# Same size as the node's header: version, len, key id (36), material id (32), salt (16), IV (12).
_PREFIX = bytes((1, 36)) + KEY_ID.encode() + b"\x00" * (32 + 16)
_IV_AT = len(_PREFIX)
_HEADER_LEN = _IV_AT + 12
_AEAD = AESGCM(os.urandom(32))
_CTYPE = "application/x-amz-json-1.1"


def _answer(body: dict[str, str], status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body, separators=(",", ":")), status=status,
                        content_type=_CTYPE, headers={"x-amzn-RequestId": str(uuid.uuid4())})


async def handle(request: web.Request) -> web.Response:
    target = request.headers.get("X-Amz-Target", "")
    doc = json.loads(await request.read())
    if target == "TrentService.Encrypt":
        plaintext = base64.b64decode(doc["Plaintext"])
        iv = os.urandom(12)
        header = _PREFIX + iv
        blob = header + _AEAD.encrypt(iv, plaintext, header)
        return _answer({"CiphertextBlob": base64.b64encode(blob).decode("ascii"),
                        "KeyId": KEY_ARN, "EncryptionAlgorithm": ALGORITHM})
    if target == "TrentService.Decrypt":
        blob = base64.b64decode(doc["CiphertextBlob"])
        header = blob[:_HEADER_LEN]
        plaintext = _AEAD.decrypt(header[_IV_AT:], blob[_HEADER_LEN:], header)
        return _answer({"KeyId": KEY_ARN, "Plaintext": base64.b64encode(plaintext).decode("ascii"),
                        "EncryptionAlgorithm": ALGORITHM})
    return _answer({"__type": "UnknownOperationException"}, 400)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    args = p.parse_args()
    app = web.Application(client_max_size=1024 * 1024)
    app.add_routes([web.post("/", handle), web.get("/_kms/health", health)])
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()

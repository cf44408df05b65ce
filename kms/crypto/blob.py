"""The symmetric ciphertext blob: versioned, self-describing, context-bound.

Layout (all integers big-endian):
    0       1   format version (0x01)
    1       1   n = length of the key id
    2       n   key id, ASCII (a UUID or an mrk- id: the same in every region)
    2+n     32  key material id (KeyMaterialId, 64 hex characters as raw bytes)
    34+n    16  per-call KDF salt
    50+n    12  AES-GCM IV
    62+n    *   AES-256-GCM ciphertext, then its 16-byte tag
The header (bytes 0..62+n) and the canonical encryption context are the AAD.
Rules: parse() raises InvalidCiphertextException with no message for any defect.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kms.domain.errors import InvalidCiphertextException

FORMAT_V1 = 1
SALT_LEN = 16
IV_LEN = 12
TAG_LEN = 16
MATERIAL_ID_LEN = 32


@dataclass(frozen=True, slots=True)
class Blob:
    key_id: str
    material_id: str  # hex
    salt: bytes
    iv: bytes
    header: bytes
    body: bytes  # ciphertext || tag


def build_header(key_id: str, material_id: str, salt: bytes, iv: bytes) -> bytes:
    kid = key_id.encode("ascii")
    return bytes((FORMAT_V1, len(kid))) + kid + bytes.fromhex(material_id) + salt + iv


def parse(data: bytes) -> Blob:
    try:
        if data[0] != FORMAT_V1:
            raise ValueError
        n = data[1]
        end = 2 + n + MATERIAL_ID_LEN + SALT_LEN + IV_LEN
        if n == 0 or len(data) < end + TAG_LEN:
            raise ValueError
        key_id = data[2 : 2 + n].decode("ascii")
        mid = data[2 + n : 2 + n + MATERIAL_ID_LEN].hex()
        salt = data[2 + n + MATERIAL_ID_LEN : 2 + n + MATERIAL_ID_LEN + SALT_LEN]
        iv = data[end - IV_LEN : end]
        return Blob(key_id, mid, salt, iv, data[:end], data[end:])
    except (ValueError, IndexError, UnicodeDecodeError):
        raise InvalidCiphertextException() from None


def canonical_context(context: dict[str, str] | None) -> bytes:
    """Order-independent, unambiguous encoding of an encryption context."""
    if not context:
        return b""
    items = sorted((k.encode(), v.encode()) for k, v in context.items())
    out = [struct.pack(">I", len(items))]
    for k, v in items:
        out.append(struct.pack(">I", len(k)) + k + struct.pack(">I", len(v)) + v)
    return b"".join(out)

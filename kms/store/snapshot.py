"""Projection snapshots: the codec, the snapshot record, and what a projection provides.

Rules: a snapshot holds the folded state of every projection subscribed to the log (and the
log's own heads and replication marks) as of the seq of a signed checkpoint; it is bound to
that checkpoint by its seq and chain hash and signed, with its body's SHA-256, by the audit
signing key (kms.audit.checkpoints). Nothing unsealed is in it: key material stays sealed, as
in the events, and the vault (wrapped KEKs) is not in it at all.

The codec is driven by type hints, like the events' (kms.domain.events): frozen dataclasses by
field name, enums by value, tuples/lists/sets as arrays, dicts as arrays of pairs (keys may be
tuples), ``X | None``, and ``ev.Event`` as (type name, event body) through the event codec.
A hint it cannot encode is refused when the codec is built, not met at run time.
``SCHEMA`` digests every reachable dataclass's fields and hints: a change of shape makes old
snapshots unusable (start-up replays all rows instead), as does a change of ``VERSION``,
which is bumped when a fold's rules change without a change of shape.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import msgpack

from kms.domain import events as ev

VERSION = 1
MESSAGE_TAG = b"kms-log-snapshot-v1\x00"

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


class SnapshotUnusable(ValueError):
    """A stored snapshot that cannot be trusted or read: start-up replays every row."""


@runtime_checkable
class Projection(Protocol):
    """A log subscriber whose folded state can be saved and restored. ``snapshot`` returns
    plain data (``dump`` of a typed dataclass); ``restore`` replaces the whole state with
    what ``snapshot`` returned, or raises (ValueError, TypeError, KeyError) leaving it as
    it was."""

    snapshot_name: str
    snapshot_type: type  # the dataclass ``snapshot`` dumps (its shape is in the schema)

    def __call__(self, envelopes: Any) -> None: ...

    def snapshot(self) -> Any: ...

    def restore(self, data: Any) -> None: ...


# -- the codec ------------------------------------------------------------------------------
_ENCODERS: dict[Any, Encoder] = {}
_DECODERS: dict[Any, Decoder] = {}
_SCALARS = (str, int, float, bool, bytes, type(None))


def _ident(v: Any) -> Any:
    return v


def _union_arg(hint: Any) -> Any | None:
    """X for ``X | None`` (None when ``hint`` is not such a union)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0]
        raise TypeError(f"snapshot codec: unsupported union {hint!r}")
    return None


def encoder(hint: Any) -> Encoder:
    return _built(_ENCODERS, _build_encoder, hint)


def decoder(hint: Any) -> Decoder:
    return _built(_DECODERS, _build_decoder, hint)


def _built(cache: dict[Any, Callable[[Any], Any]],
           build: Callable[[Any], Callable[[Any], Any]], hint: Any) -> Callable[[Any], Any]:
    """``cache[hint]``, built once; a builder may park a forwarder there while it recurses."""
    found = cache.get(hint)
    if found is not None:
        return found
    made = build(hint)
    cache[hint] = made
    return made


def _build_encoder(hint: Any) -> Encoder:
    if hint is Any or hint in _SCALARS:
        return _ident
    if hint is ev.Event:
        return lambda v: [v.type_name, ev.encode(v)]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return lambda v: v.value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        _ENCODERS[hint] = lambda v: fields_enc(v)  # recursion through self-reference
        hints = typing.get_type_hints(hint)
        parts = [(f.name, encoder(hints[f.name])) for f in dataclasses.fields(hint)]

        def fields_enc(v: Any) -> Any:
            return {name: enc(getattr(v, name)) for name, enc in parts}
        return fields_enc
    inner = _union_arg(hint)
    if inner is not None:
        enc = encoder(inner)
        return lambda v: None if v is None else enc(v)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis or origin in (
            list, set, frozenset):
        item = encoder(args[0])
        return lambda v: [item(x) for x in v]
    if origin is tuple and args:
        each = [encoder(a) for a in args]
        return lambda v: [e(x) for e, x in zip(each, v, strict=True)]
    if origin is dict:
        k_enc, v_enc = encoder(args[0]), encoder(args[1])
        return lambda v: [[k_enc(k), v_enc(x)] for k, x in v.items()]
    raise TypeError(f"snapshot codec: unsupported type hint {hint!r}")


def _build_decoder(hint: Any) -> Decoder:
    if hint is Any:
        return _ident
    if hint in _SCALARS:
        def scalar(v: Any, _t: type = hint) -> Any:
            if type(v) is not _t:
                raise TypeError(f"expected {_t.__name__}, got {type(v).__name__}")
            return v
        return scalar if hint not in (float, type(None)) else _ident
    if hint is ev.Event:
        def event(v: Any) -> Any:
            type_name, body = v
            return ev.decode(type_name, body)
        return event
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        _DECODERS[hint] = lambda v: fields_dec(v)
        hints = typing.get_type_hints(hint)
        parts = [(f.name, decoder(hints[f.name])) for f in dataclasses.fields(hint)]
        names = frozenset(name for name, _ in parts)

        def fields_dec(v: Any, _cls: type = hint) -> Any:
            if v.keys() != names:  # AttributeError for what is not a map at all
                raise TypeError(f"{_cls.__name__}: fields do not match")
            return _cls(*[dec(v[name]) for name, dec in parts])
        return fields_dec
    inner = _union_arg(hint)
    if inner is not None:
        dec = decoder(inner)
        return lambda v: None if v is None else dec(v)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = decoder(args[0])
        return lambda v: tuple(item(x) for x in v)
    if origin in (list, set, frozenset):
        item, build = decoder(args[0]), origin
        return lambda v: build(item(x) for x in v)
    if origin is tuple and args:
        each = [decoder(a) for a in args]
        return lambda v: tuple(d(x) for d, x in zip(each, v, strict=True))
    if origin is dict:
        k_dec, v_dec = decoder(args[0]), decoder(args[1])
        return lambda v: {k_dec(k): v_dec(x) for k, x in v}
    raise TypeError(f"snapshot codec: unsupported type hint {hint!r}")


def dump(value: Any) -> Any:
    """Plain (msgpack-able) data of a typed dataclass value."""
    return encoder(type(value))(value)


def load(cls: type, data: Any) -> Any:
    """The ``cls`` value ``dump`` made ``data`` of; TypeError/ValueError/KeyError if not."""
    return decoder(cls)(data)


def schema(*roots: type) -> str:
    """A digest of the fields and hints of every dataclass reachable from ``roots``."""
    seen: dict[str, str] = {}

    def walk(hint: Any) -> None:
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            name = f"{hint.__module__}.{hint.__qualname__}"
            if name in seen:
                return
            hints = typing.get_type_hints(hint)
            seen[name] = ";".join(f"{f.name}:{hints[f.name]!r}" for f in dataclasses.fields(hint))
            for f in dataclasses.fields(hint):
                walk(hints[f.name])
        elif isinstance(hint, type) and issubclass(hint, enum.Enum):
            seen.setdefault(hint.__qualname__, ",".join(repr(m.value) for m in hint))
        else:
            for a in typing.get_args(hint):
                walk(a)

    for root in roots:
        walk(root)
    text = "\n".join(f"{k}={v}" for k, v in sorted(seen.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# -- the record -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LogMarks:
    """The log's own state as of the snapshot's seq: stream heads, per origin region the
    last origin seq its rows reached, the last row's batch time."""

    heads: dict[str, int]
    held: dict[str, int]
    last_at_ms: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A stored snapshot: bound to the checkpoint at ``seq`` (``head`` is the hash it
    signs), ``digest`` the SHA-256 of ``body``, signed by the audit key (``fingerprint``)."""

    seq: int
    head: bytes
    version: int
    digest: bytes
    fingerprint: str
    signature: bytes
    body: bytes


def message(region: str, seq: int, head: bytes, version: int, digest: bytes) -> bytes:
    return (MESSAGE_TAG + region.encode() + b"\x00" + seq.to_bytes(8, "big") + head
            + version.to_bytes(4, "big") + digest)


def pack_body(schema_id: str, marks: LogMarks, projections: dict[str, Any]) -> bytes:
    return msgpack.packb({"schema": schema_id, "log": dump(marks), "projections": projections},
                         use_bin_type=True)


def unpack_body(body: bytes) -> tuple[str, LogMarks, dict[str, Any]]:
    doc = msgpack.unpackb(body, raw=False, strict_map_key=False)
    if not isinstance(doc, dict) or not isinstance(doc.get("projections"), dict):
        raise TypeError("not a snapshot body")
    return str(doc["schema"]), load(LogMarks, doc["log"]), doc["projections"]


def digest_of(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()

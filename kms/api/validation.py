"""Request validation compiled once from botocore's KMS model (no shape is retyped here).

Rules: a wrong JSON type fails fast with SerializationException; constraint failures are all
collected, in member order, into one ValidationException worded as AWS words it. Blobs -> bytes,
timestamps -> epoch floats, unknown members dropped; an offending value is echoed whole, except
sensitive and blob values, which never are; enum sets are listed in AWS's order where known."""

from __future__ import annotations

import binascii
import functools
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime

from kms.domain.errors import (
    SerializationException,
    UnknownOperationException,
    ValidationException,
)

# A compiled check: (value, path, errors) -> converted value. Appends constraint failures to
# `errors`; raises SerializationException at once for a value of the wrong JSON type.
Check = Callable[[object, str, list[str]], object]

# Enum sets in the order AWS lists them in its messages, where a recorded answer shows that
# it differs from the model's order (keyed by the model's set, so a set that grows falls back
# to the model's order rather than to a stale list).
_AWS_ENUM_ORDER: dict[frozenset[str], tuple[str, ...]] = {
    frozenset(order): order for order in (
        ("HMAC_SHA_384", "HMAC_SHA_256", "HMAC_SHA_224", "HMAC_SHA_512"),  # macAlgorithm
    )
}
_INT_RANGE = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_JSON_TYPE = {str: "string", int: "number", float: "number", bool: "boolean",
              list: "array", dict: "object", type(None): "null"}


@functools.cache
def load_botocore_model() -> dict:
    """The KMS service model shipped with the installed botocore (loaded once per process)."""
    from botocore.loaders import Loader

    return Loader().load_service_model("kms", "service-2")


@functools.cache
def _pattern(java_regex: str) -> re.Pattern[str]:
    # The model's Java patterns compile as-is in Python; Java's \w \d \s are ASCII-only.
    return re.compile(java_regex, re.ASCII)


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _show(value: object, depth: int = 0) -> str:
    """A value as AWS (Java toString) shows it, whole: AWS repeats even a 129-character tag
    key in full. Only nesting is bounded (a hostile body may nest far deeper than anything
    worth echoing); the body-size limit bounds the rest."""
    if depth > 8 and isinstance(value, list | dict):
        return "[...]" if isinstance(value, list) else "{...}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_show(k, depth + 1)}={_show(v, depth + 1)}"
                               for k, v in value.items()) + "}"
    return str(value)


def _wrong_type(path: str, expected: str, value: object) -> SerializationException:
    got = _JSON_TYPE.get(type(value), type(value).__name__)
    return SerializationException(f"Invalid value at '{path}': expected {expected}, got {got}")


def _failure(errors: list[str], value: object, path: str, rule: str, hidden: bool) -> None:
    shown = "Value at" if hidden else f"Value '{_show(value)}' at"
    errors.append(f"{shown} '{path}' failed to satisfy constraint: Member must {rule}")


def _limits(shape: dict, noun: str = "length") -> tuple[float, float, str, str]:
    """(low, high, rule-if-below, rule-if-above) for a shape's min/max constraint."""
    low, high = shape.get("min", -math.inf), shape.get("max", math.inf)
    return (low, high, f"have {noun} greater than or equal to {low}",
            f"have {noun} less than or equal to {high}")


_MIN_EPOCH, _MAX_EPOCH = 0.0, 253402300799.0  # 1970 .. 9999-12-31T23:59:59Z


class RequestModel:
    """Per-operation validators compiled from a service model (botocore's KMS model by default)."""

    def __init__(self, model: dict | None = None) -> None:
        model = model if model is not None else load_botocore_model()
        self._shapes: dict[str, dict] = model["shapes"]
        self._memo: dict[tuple[str, bool], Check] = {}
        self._ops: dict[str, Check] = {}
        for name, op in model["operations"].items():
            shape = op.get("input", {}).get("shape")
            self._ops[name] = self._check(shape, False) if shape else self._structure({}, False)

    @property
    def operations(self) -> frozenset[str]:
        return frozenset(self._ops)

    def parse(self, operation: str, body: object) -> dict[str, object]:
        """Validate one decoded JSON body against `operation`'s input shape; see module doc."""
        check = self._ops.get(operation)
        if check is None:
            raise UnknownOperationException(f"Unknown operation {operation}")
        if type(body) is not dict:
            raise SerializationException("The request body must be a JSON object")
        errors: list[str] = []
        params = check(body, "", errors)
        if errors:
            count = f"{len(errors)} validation error{'s' if len(errors) != 1 else ''}"
            raise ValidationException(f"{count} detected: " + "; ".join(errors))
        return params  # type: ignore[return-value]

    # -- compilation ---------------------------------------------------------------------
    def _check(self, shape_name: str, hidden: bool) -> Check:
        shape = self._shapes[shape_name]
        hidden = hidden or bool(shape.get("sensitive"))
        key = (shape_name, hidden)
        found = self._memo.get(key)
        if found is not None:
            return found
        cell: list[Check] = []  # a recursive shape reaches itself through this trampoline
        self._memo[key] = lambda v, p, e: cell[0](v, p, e)
        builder = getattr(self, "_" + shape["type"], self._passthrough)
        cell.append(builder(shape, hidden))
        self._memo[key] = cell[0]
        return cell[0]

    def _structure(self, shape: dict, hidden: bool) -> Check:
        required = set(shape.get("required", ()))
        members = [
            (name, _camel(name), name in required,
             self._check(m["shape"], hidden or bool(m.get("sensitive"))))
            for name, m in shape.get("members", {}).items()
        ]

        def check(value: object, path: str, errors: list[str]) -> object:
            if type(value) is not dict:
                raise _wrong_type(path, "an object", value)
            prefix = path + "." if path else ""
            out: dict[str, object] = {}
            for name, segment, is_required, member_check in members:
                item = value.get(name)
                if item is None:
                    if is_required:
                        errors.append(f"Value null at '{prefix}{segment}' failed to satisfy "
                                      "constraint: Member must not be null")
                    continue
                out[name] = member_check(item, prefix + segment, errors)
            return out

        return check

    def _string(self, shape: dict, hidden: bool) -> Check:
        low, high, too_small, too_big = _limits(shape)
        regex = _pattern(shape["pattern"]) if "pattern" in shape else None
        regex_rule = f"satisfy regular expression pattern: {shape.get('pattern')}"
        enum = frozenset(shape.get("enum", ()))
        listed = _AWS_ENUM_ORDER.get(enum, tuple(shape.get("enum", ())))
        enum_rule = "satisfy enum value set: [" + ", ".join(listed) + "]"

        def check(value: object, path: str, errors: list[str]) -> object:
            if type(value) is not str:
                raise _wrong_type(path, "a string", value)
            size = len(value)
            if size < low:
                _failure(errors, value, path, too_small, hidden)
            elif size > high:
                _failure(errors, value, path, too_big, hidden)
            if regex is not None and regex.fullmatch(value) is None:
                _failure(errors, value, path, regex_rule, hidden)
            if enum and value not in enum:
                _failure(errors, value, path, enum_rule, hidden)
            return value

        return check

    def _blob(self, shape: dict, hidden: bool) -> Check:
        low, high, too_small, too_big = _limits(shape)

        def check(value: object, path: str, errors: list[str]) -> object:
            if type(value) is not str:
                raise _wrong_type(path, "a base64-encoded string", value)
            try:
                data = binascii.a2b_base64(value, strict_mode=True)
            except (binascii.Error, ValueError):
                raise SerializationException(f"Invalid base64 value at '{path}'") from None
            if len(data) < low:
                _failure(errors, None, path, too_small, True)
            elif len(data) > high:
                _failure(errors, None, path, too_big, True)
            return data

        return check

    def _integer(self, shape: dict, hidden: bool) -> Check:
        type_low, type_high = _INT_RANGE[shape["type"]]
        low, high, too_small, too_big = _limits(shape, "value")
        kind = shape["type"]

        def check(value: object, path: str, errors: list[str]) -> object:
            if type(value) is not int:
                raise _wrong_type(path, "an integer", value)
            if not type_low <= value <= type_high:
                raise SerializationException(f"Number at '{path}' is out of range for {kind}")
            if value < low:
                _failure(errors, value, path, too_small, hidden)
            elif value > high:
                _failure(errors, value, path, too_big, hidden)
            return value

        return check

    _long = _integer

    def _double(self, shape: dict, hidden: bool) -> Check:
        def check(value: object, path: str, errors: list[str]) -> object:
            if type(value) not in (int, float):
                raise _wrong_type(path, "a number", value)
            return value

        return check

    _float = _double

    def _boolean(self, shape: dict, hidden: bool) -> Check:
        def check(value: object, path: str, errors: list[str]) -> object:
            if type(value) is not bool:
                raise _wrong_type(path, "a boolean", value)
            return value

        return check

    def _timestamp(self, shape: dict, hidden: bool) -> Check:
        def check(value: object, path: str, errors: list[str]) -> object:
            if type(value) in (int, float) and math.isfinite(value):  # type: ignore[arg-type]
                if not _MIN_EPOCH <= value <= _MAX_EPOCH:  # type: ignore[operator]
                    raise SerializationException(
                        f"Invalid timestamp at '{path}': out of range"
                    )
                return float(value)  # type: ignore[arg-type]
            if type(value) is str:
                try:
                    moment = datetime.fromisoformat(value)
                except ValueError:
                    raise SerializationException(
                        f"Invalid timestamp at '{path}': expected epoch seconds or ISO-8601"
                    ) from None
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=UTC)
                return moment.timestamp()
            raise _wrong_type(path, "a timestamp", value)

        return check

    def _list(self, shape: dict, hidden: bool) -> Check:
        item_check = self._check(shape["member"]["shape"], hidden)
        low, high, too_small, too_big = _limits(shape)

        def check(value: object, path: str, errors: list[str]) -> object:
            if type(value) is not list:
                raise _wrong_type(path, "an array", value)
            if len(value) < low:
                _failure(errors, value, path, too_small, hidden)
            elif len(value) > high:
                _failure(errors, value, path, too_big, hidden)
            return [item_check(item, f"{path}.{i}.member", errors)
                    for i, item in enumerate(value, 1)]

        return check

    def _map(self, shape: dict, hidden: bool) -> Check:
        key_check = self._check(shape["key"]["shape"], hidden)
        value_check = self._check(shape["value"]["shape"], hidden)
        low, high, too_small, too_big = _limits(shape)

        def check(value: object, path: str, errors: list[str]) -> object:
            if type(value) is not dict:
                raise _wrong_type(path, "an object", value)
            if len(value) < low:
                _failure(errors, value, path, too_small, hidden)
            elif len(value) > high:
                _failure(errors, value, path, too_big, hidden)
            return {key_check(k, path, errors): value_check(v, path, errors)
                    for k, v in value.items()}

        return check

    def _passthrough(self, shape: dict, hidden: bool) -> Check:
        return lambda value, path, errors: value

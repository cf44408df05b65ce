"""Policy conditions: the IAM condition operators compiled once per statement into one
matcher per condition key, and their evaluation against a lazily asked request context.

Rules: pure (no I/O, no clock: times arrive as context values). Condition keys compare
case-insensitively (the context is asked by lowercased name); a key's values OR, keys and
operators AND (the statement's job); negated operators and IfExists hold for an absent
key, ForAllValues holds for an empty set, ForAnyValue does not. Policy variables
(``${aws:username}``) are substituted per request.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from kms.domain.errors import MalformedPolicyDocumentException

VARIABLE = re.compile(r"\$\{([^}]*)\}")
MALFORMED = "The policy is not syntactically correct."  # shape errors, AWS's generic words
INVALID_PRINCIPALS = "Policy contains a statement with one or more invalid principals."


def malformed(message: str = MALFORMED) -> MalformedPolicyDocumentException:
    return MalformedPolicyDocumentException(message)


class Context(Protocol):
    """The request context, asked by condition key (lowercased); None when absent."""

    def values(self, key: str) -> tuple[str, ...] | None: ...


def glob(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    """An IAM wildcard pattern (``*`` any run, ``?`` one character) as a regex."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


@functools.lru_cache(maxsize=4096)
def glob_cached(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    return glob(pattern, ignore_case=ignore_case)


def substitute(text: str, ctx: Context) -> str | None:
    """Policy variables (``${aws:username}``, ``${*}``...); None when one is absent."""
    missing = False

    def one(m: re.Match[str]) -> str:
        nonlocal missing
        name = m.group(1)
        if name in ("*", "?", "$"):
            return name
        key, _, default = name.partition(",")
        got = ctx.values(key.strip().lower())
        if got:
            return got[0]
        if default:
            return default.strip().strip("'")
        missing = True
        return ""

    out = VARIABLE.sub(one, text)
    return None if missing else out


def _number(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _date(v: str) -> float | None:
    if re.fullmatch(r"-?\d+(\.\d+)?", v):
        return float(v)
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def _address(v: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(v)
    except ValueError:
        return None


def _network(p: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(p, strict=False)
    except ValueError:
        return None


def _arn_parts(pattern: str) -> tuple[re.Pattern[str], ...] | None:
    parts = pattern.split(":", 5)
    return tuple(glob(x, ignore_case=False) for x in parts) if len(parts) == 6 else None


def _binary(p: str) -> bytes | None:
    try:
        return base64.b64decode(p, validate=True)
    except ValueError:
        return None


Test = Callable[[str], bool]  # does one request value match any of the patterns


def _ordered(patterns: tuple[str, ...], parse: Callable[[str], float | None],
             op: Callable[[float, float], bool]) -> Test:
    bounds = [b for b in map(parse, patterns) if b is not None]

    def test(v: str) -> bool:
        a = parse(v)
        return a is not None and any(op(a, b) for b in bounds)
    return test


def _matcher(operator: str, patterns: tuple[str, ...]) -> Test:  # noqa: C901 - one per family
    """The compiled OR over a condition's values for one request value."""
    if operator in ("stringequals", "stringnotequals"):
        exact = frozenset(patterns)
        return exact.__contains__
    if operator in ("stringequalsignorecase", "stringnotequalsignorecase", "bool"):
        lowered = frozenset(p.lower() for p in patterns)
        return lambda v: v.lower() in lowered
    if operator in ("stringlike", "stringnotlike"):
        rx = re.compile("|".join(f"(?:{glob(p, ignore_case=False).pattern})"
                                 for p in patterns), re.DOTALL)
        return lambda v: rx.match(v) is not None
    if operator.startswith("numeric"):
        op = _COMPARISONS[operator.removeprefix("numeric").replace("not", "")]
        return _ordered(patterns, _number, op)
    if operator.startswith("date"):
        return _ordered(patterns, _date, _COMPARISONS[operator.removeprefix("date")
                                                      .replace("not", "")])
    if operator in ("ipaddress", "notipaddress"):
        nets = [n for n in map(_network, patterns) if n is not None]

        def in_nets(v: str) -> bool:
            a = _address(v)
            return a is not None and any(a.version == n.version and a in n for n in nets)
        return in_nets
    if operator.startswith("arn"):
        arns = [a for a in map(_arn_parts, patterns) if a is not None]

        def arn_like(v: str) -> bool:
            parts = v.split(":", 5)
            return len(parts) == 6 and any(
                all(rx.match(x) for rx, x in zip(a, parts, strict=True)) for a in arns)
        return arn_like
    if operator == "binaryequals":
        blobs = frozenset(b for b in map(_binary, patterns) if b is not None)
        return lambda v: v.encode("utf-8") in blobs or v in patterns
    raise AssertionError(operator)


_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "equals": lambda a, b: a == b, "lessthan": lambda a, b: a < b,
    "lessthanequals": lambda a, b: a <= b, "greaterthan": lambda a, b: a > b,
    "greaterthanequals": lambda a, b: a >= b,
}
OPERATORS = frozenset({
    "stringequals", "stringnotequals", "stringequalsignorecase", "stringnotequalsignorecase",
    "stringlike", "stringnotlike", "numericequals", "numericnotequals", "numericlessthan",
    "numericlessthanequals", "numericgreaterthan", "numericgreaterthanequals", "dateequals",
    "datenotequals", "datelessthan", "datelessthanequals", "dategreaterthan",
    "dategreaterthanequals", "bool", "binaryequals", "ipaddress", "notipaddress", "arnequals",
    "arnlike", "arnnotequals", "arnnotlike", "null",
})
_NEGATED = frozenset({"stringnotequals", "stringnotequalsignorecase", "stringnotlike",
                      "numericnotequals", "datenotequals", "notipaddress", "arnnotequals",
                      "arnnotlike"})


class Condition:
    """One key under one operator, compiled: its values OR (one matcher), the qualifier
    says how a set of request values meets them."""

    __slots__ = ("_absent", "_test", "if_exists", "key", "negated", "operator", "patterns",
                 "qualifier")

    def __init__(self, operator: str, key: str, patterns: tuple[str, ...], qualifier: str,
                 if_exists: bool) -> None:
        self.operator, self.key, self.patterns = operator, key, patterns
        self.qualifier, self.if_exists = qualifier, if_exists
        self.negated = operator in _NEGATED
        # The answer when the key is absent from the request (or an empty set).
        self._absent = (qualifier == "forallvalues" or if_exists
                        or (self.negated and qualifier != "foranyvalue"))
        variable = any("${" in p for p in patterns)
        self._test: Test | None = None
        if operator != "null" and not variable:
            self._test = _matcher(operator, patterns)

    def holds(self, ctx: Context) -> bool:
        got = ctx.values(self.key)
        if self.operator == "null":
            absent = not got
            return any((p.lower() == "true") == absent for p in self.patterns)
        if not got:
            return self._absent
        test = self._test
        if test is None:  # policy variables: substituted per request
            live = tuple(x for x in (substitute(p, ctx) for p in self.patterns)
                         if x is not None)
            test = _matcher(self.operator, live) if live else (lambda v: False)
        if self.qualifier == "forallvalues":
            return (not any(map(test, got))) if self.negated else all(map(test, got))
        if self.negated:
            if self.qualifier == "foranyvalue":
                return not all(map(test, got))
            return not any(map(test, got))
        return any(map(test, got))


def conditions(raw: Any) -> tuple[Condition, ...]:
    if not isinstance(raw, dict):
        raise malformed()
    out: list[Condition] = []
    for op_name, block in raw.items():
        if not isinstance(op_name, str) or not isinstance(block, dict) or not block:
            raise malformed()
        name = op_name.lower()
        qualifier = ""
        for q in ("foranyvalue:", "forallvalues:"):
            if name.startswith(q):
                qualifier, name = q[:-1], name[len(q):]
        if_exists = name.endswith("ifexists") and name != "null"
        if if_exists:
            name = name[: -len("ifexists")]
        if name not in OPERATORS:
            raise malformed(f"Policy contains an unknown condition operator: {op_name}")
        for key, values in block.items():
            items = [values] if isinstance(values, str | bool | int | float) else values
            if not isinstance(items, list) or not items:
                raise malformed()
            patterns = tuple(_scalar(v) for v in items)
            out.append(Condition(name, str(key).lower(), patterns, qualifier, if_exists))
    return tuple(out)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, str):
        return v
    raise malformed()

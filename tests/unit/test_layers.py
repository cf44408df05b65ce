"""The dependency rules of DESIGN §2, checked on the source: domain is pure,
api -> service -> domain, regions -> kms and never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_IN_DOMAIN = {"asyncio", "aiohttp", "aiosqlite", "cryptography", "os", "time", "random",
                       "socket", "structlog", "secrets", "uuid", "hashlib"}


def imports(package: str) -> dict[Path, set[str]]:
    found: dict[Path, set[str]] = {}
    for path in (ROOT / package.replace(".", "/")).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[path] = names
    return found


def offenders(package: str, bad: set[str]) -> list[str]:
    out = []
    for path, names in imports(package).items():
        for name in names:
            if any(name == b or name.startswith(b + ".") for b in bad):
                out.append(f"{path.relative_to(ROOT)} imports {name}")
    return out


def test_domain_is_pure() -> None:
    assert offenders("kms.domain", FORBIDDEN_IN_DOMAIN) == []


def test_domain_imports_nothing_of_ours_but_itself() -> None:
    ours = {"kms.api", "kms.service", "kms.store", "kms.crypto", "kms.audit", "kms.node",
            "kms.cli", "kms.config", "kms.clock", "regions"}
    assert offenders("kms.domain", ours) == []


def test_layers_point_one_way() -> None:
    assert offenders("kms.service", {"kms.api", "kms.cli", "regions"}) == []
    assert offenders("kms.store", {"kms.api", "kms.service", "regions"}) == []
    assert offenders("kms.crypto", {"kms.api", "kms.service", "kms.store", "regions"}) == []
    assert offenders("kms", {"regions"}) == []

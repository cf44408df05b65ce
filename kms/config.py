"""Node configuration: defaults, a TOML file (``--config``), then command-line flags.

Rules: no configuration at all is a working development node; every setting has
exactly one name, used alike in the TOML ``[node]`` table and on the command line;
the merged settings are validated (port, region, account id) before anything is bound
or created.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kms.identity import parse_principals


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    region: str = "us-east-1"
    data_dir: Path = Path("kms-data")
    account_id: str = "111122223333"
    dev: bool = False
    log_format: str = "auto"  # "json", "console" or "auto" (console on a terminal)
    max_dev_regions: int = 32  # --dev: regions hosted in one process at most, own included
    # Failed authentications audited one by one per source address and window; the rest of
    # a window's are counted into one summary fact (kms.api.auth_failures).
    auth_failure_audit_limit: int = 60
    auth_failure_window_seconds: int = 60
    # Signed checkpoints of the log (kms.audit.checkpoints): one every ``checkpoint_rows`` rows
    # or ``checkpoint_seconds`` of batch time; start-up re-hashes the rows after the last one
    # and ``start_recheck_rows`` before it; a projection snapshot is stored every
    # ``snapshot_checkpoints`` checkpoints (0: only at clean shutdown). The environment
    # variables KMS_CHECKPOINT_ROWS, KMS_CHECKPOINT_SECONDS, KMS_START_RECHECK_ROWS and
    # KMS_SNAPSHOT_CHECKPOINTS override them.
    checkpoint_rows: int = 1000
    checkpoint_seconds: int = 60
    start_recheck_rows: int = 10_000
    snapshot_checkpoints: int = 10
    # The top-level ``[[principals]]`` tables, raw: kms.identity parses and validates them.
    principals: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    # Top-level lists of principal ARNs: who may run ``kms region`` admin actions (promote),
    # and who may read the audit stream (``/_kms/audit``), on a node without --dev.
    admins: tuple[str, ...] = field(default_factory=tuple)
    audit_readers: tuple[str, ...] = field(default_factory=tuple)
    # The top-level ``[[peers]]`` tables, raw: the regions layer parses and validates them.
    peers: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def load(cls, path: Path | None, overrides: dict[str, Any]) -> Config:
        cfg = cls()
        if path is not None:
            with path.open("rb") as f:
                try:
                    doc = tomllib.load(f)
                except tomllib.TOMLDecodeError as exc:
                    raise ValueError(f"{path}: not valid TOML: {exc}") from None
            node = doc.get("node", {})
            if not isinstance(node, dict):
                raise ValueError(f"{path}: [node] must be a table")
            known = {f.name for f in fields(cls)} - _TOP_LEVEL
            unknown = set(node) - known
            if unknown:
                raise ValueError(
                    f"{path}: unknown settings in [node]: {', '.join(sorted(unknown))}")
            for name, value in node.items():
                _check_setting(path, name, value)
            peers = doc.get("peers", [])
            if not isinstance(doc.get("principals", []), list):
                raise ValueError(f"{path}: principals must be an array of tables "
                                 "([[principals]])")
            if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
                raise ValueError(f"{path}: peers must be an array of tables ([[peers]])")
            top = _top_level(path, doc)
            cfg = replace(cfg, **top)
            cfg = replace(cfg, **node, principals=tuple(doc.get("principals", ())),
                          peers=tuple(peers))
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        cfg = replace(cfg, data_dir=Path(cfg.data_dir), port=int(cfg.port))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse a setting no node could serve under, naming it and the rule it breaks."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range (0-65535)")
        if not _REGION.fullmatch(self.region):
            raise ValueError(f"region {self.region!r} is not a region name like us-east-1")
        if not _ACCOUNT.fullmatch(self.account_id):
            raise ValueError(f"account id {self.account_id!r} is not 12 digits")
        if self.max_dev_regions < 1:
            raise ValueError(f"max_dev_regions must be at least 1, not {self.max_dev_regions}")
        if self.log_format not in _LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(_LOG_FORMATS)}")
        for name in ("auth_failure_audit_limit", "auth_failure_window_seconds",
                     "checkpoint_rows", "checkpoint_seconds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("start_recheck_rows", "snapshot_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, not {getattr(self, name)}")
        parse_principals(self.principals)  # malformed ARNs, duplicates, bad policy JSON


_TOP_LEVEL = frozenset({"principals", "peers", "admins", "audit_readers"})


def _top_level(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """The settings a file may give outside ``[node]``: ``account_id`` (as issue 9's
    principal files write it; ``[node] account_id`` wins), ``admins``, ``audit_readers``."""
    out: dict[str, Any] = {}
    unknown = set(doc) - {"node", "account_id", *_TOP_LEVEL}
    if unknown:
        raise ValueError(f"{path}: unknown top-level settings: {', '.join(sorted(unknown))}")
    if "account_id" in doc:
        _check_setting(path, "account_id", doc["account_id"])
        out["account_id"] = doc["account_id"]
    for name in ("admins", "audit_readers"):
        value = doc.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{path}: {name} must be a list of principal ARNs")
        out[name] = tuple(value)
    return out


_SETTING_TYPES: dict[str, type] = {
    "host": str, "port": int, "region": str, "data_dir": str, "account_id": str,
    "dev": bool, "log_format": str, "max_dev_regions": int,
    "auth_failure_audit_limit": int, "auth_failure_window_seconds": int,
    "checkpoint_rows": int, "checkpoint_seconds": int, "start_recheck_rows": int,
    "snapshot_checkpoints": int,
}
_LOG_FORMATS = ("auto", "json", "console")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+", re.ASCII)  # AWS's shape: eu-west-1
_ACCOUNT = re.compile(r"[0-9]{12}", re.ASCII)


def is_region_name(name: str) -> bool:
    """Whether ``name`` has the shape of an AWS region (the rule ``region`` is checked by)."""
    return _REGION.fullmatch(name) is not None


def _check_setting(path: Path, name: str, value: Any) -> None:
    """A TOML value of the wrong type is refused by name, not discovered later."""
    expected = _SETTING_TYPES.get(name)
    if expected is None:
        return
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f"{path}: [node] {name} must be a {expected.__name__}, "
                         f"not {type(value).__name__} ({value!r})")
    if name == "log_format" and value not in _LOG_FORMATS:
        raise ValueError(f"{path}: [node] log_format must be one of {', '.join(_LOG_FORMATS)}")

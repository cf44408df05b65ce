"""Node configuration: defaults, a TOML file (``--config``), then command-line flags.

Rules: no configuration at all is a working development node; every setting has
exactly one name, used alike in the TOML ``[node]`` table and on the command line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    region: str = "us-east-1"
    data_dir: Path = Path("kms-data")
    account_id: str = "111122223333"
    dev: bool = False
    log_format: str = "auto"  # "json", "console" or "auto" (console on a terminal)
    principals: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def load(cls, path: Path | None, overrides: dict[str, Any]) -> Config:
        cfg = cls()
        if path is not None:
            with path.open("rb") as f:
                doc = tomllib.load(f)
            node = doc.get("node", {})
            known = {f.name for f in fields(cls)}
            unknown = set(node) - known
            if unknown:
                raise ValueError(f"unknown settings in [node]: {', '.join(sorted(unknown))}")
            cfg = replace(cfg, **node, principals=tuple(doc.get("principals", ())))
        cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
        return replace(cfg, data_dir=Path(cfg.data_dir), port=int(cfg.port))

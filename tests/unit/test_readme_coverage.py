"""The README's API coverage table names every operation of the pinned botocore model."""

from __future__ import annotations

import re
from pathlib import Path

from kms.api.validation import RequestModel

README = Path(__file__).resolve().parents[2] / "README.md"


def coverage_rows() -> list[str]:
    text = README.read_text()
    section = text.split("## API coverage", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ")]


def test_every_model_operation_has_a_row_in_the_coverage_table() -> None:
    named = set()
    for row in coverage_rows():
        first_cell = row.split("|")[1]
        named |= set(re.findall(r"\b([A-Z][A-Za-z]+)\b", first_cell))
    missing = sorted(RequestModel().operations - named)
    assert missing == [], f"README coverage table lacks {missing}"

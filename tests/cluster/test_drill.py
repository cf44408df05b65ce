"""``python ops/drill.py failover`` as an operator runs it: the primary region is killed,
replicas keep serving, a replica is promoted, the old primary returns demoted and reports the
writes it stranded. The drill exits 0 and prints one figure line in RELIABILITY.md's shape,
with no dual-primary writes, nothing silently lost and every old ciphertext decrypted; it
leaves no process behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"writes unavailable (\d+\.\d) s; dual-primary writes (\d+); "
                  r"old-primary events silently lost (\d+); "
                  r"old ciphertexts decrypted (\d+)/(\d+); conflicts reported (\d+)")


def node_pids(state: Path) -> list[int]:
    """Running processes whose command line names a data dir under ``state``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if proc.name.isdigit() and str(state) in cmdline and "serve" in cmdline:
            found.append(int(proc.name))
    return found


def test_the_failover_drill_passes_and_prints_its_figures(tmp_path: Path) -> None:
    state = tmp_path / "drill"
    done = subprocess.run([sys.executable, str(ROOT / "ops" / "drill.py"), "failover",
                           "--compose", str(ROOT / "compose.yaml"), "--state", str(state)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(lines) == 1 and LINE.fullmatch(lines[0]), done.stdout
    match = LINE.fullmatch(lines[0])
    assert match is not None
    seconds, dual, lost, decrypted, total, conflicts = match.groups()
    assert (dual, lost) == ("0", "0")
    assert decrypted == total and int(total) == 15  # 5 ciphertexts in 3 regions
    assert int(conflicts) >= 1  # the primary's stranded writes are reported, not dropped
    assert float(seconds) > 0
    assert node_pids(state) == []
    for region in ("us-east-1", "eu-west-1", "ap-southeast-2"):  # each node really ran
        assert (state / region / "serve.log").stat().st_size > 0

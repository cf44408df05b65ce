"""The local cluster from the repository's compose.yaml (ops/cluster.py): every service runs
as a process on loopback, each region serves itself, `status` reports it, and `down` leaves
no process behind, for a cluster started in-process (Cluster.up) or by the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.cluster import LOG_FILE, STATE_FILE, Cluster, load_compose, plan
from tests.conftest import ACCOUNT, client_for
from tests.support.cluster import COMPOSE, ROOT, cluster_fixture

REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2"]


def cluster_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "ops" / "cluster.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def gone(pid: int) -> bool:
    """No such process, or one that has exited and waits only to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


cluster = cluster_fixture("cluster")


def test_every_compose_service_runs_as_a_healthy_region(cluster: Cluster) -> None:
    assert list(cluster.urls) == REGIONS
    health = cluster.health()
    assert {r: (h["status"], h["region"]) for r, h in health.items()} == {
        r: ("ok", r) for r in REGIONS}
    assert len(set(cluster.urls.values())) == 3


def test_each_region_creates_keys_in_its_own_region(cluster: Cluster) -> None:
    arns = {}
    for region, url in cluster.urls.items():
        kms = client_for(url, region=region)
        meta = kms.create_key(Description=f"made in {region}")["KeyMetadata"]  # type: ignore[attr-defined]
        assert meta["Arn"] == f"arn:aws:kms:{region}:{ACCOUNT}:key/{meta['KeyId']}"
        arns[region] = meta["KeyId"]
    for region, url in cluster.urls.items():  # each region is its own node with its own log
        listed = {k["KeyId"] for k in client_for(url, region=region)  # type: ignore[attr-defined]
                  .list_keys()["Keys"]}
        assert {r for r, key in arns.items() if key in listed} == {region}


def test_the_compose_healthcheck_passes_against_every_node(cluster: Cluster) -> None:
    assert {r: cluster.healthcheck(r) for r in REGIONS} == {r: 0 for r in REGIONS}


def test_peers_data_dirs_and_logs_follow_compose(cluster: Cluster) -> None:
    state = json.loads(cluster.state_file.read_text())["regions"]
    for region, node in state.items():
        argv = node["argv"]
        peers = sorted(argv[i + 1] for i, a in enumerate(argv) if a == "--peer")
        if cluster.peers:
            assert peers == sorted(f"{r}={cluster.urls[r]}" for r in REGIONS if r != region)
        else:
            assert peers == []
        assert Path(node["data_dir"]) == cluster.state_dir / region
        log = (Path(node["data_dir"]) / LOG_FILE).read_text()
        assert f"kms: serving region {region} on {cluster.urls[region]} (dev mode)" in log


def test_status_prints_health_per_region(cluster: Cluster) -> None:
    out = cluster_cli("status", "--state", str(cluster.state_dir))
    assert out.returncode == 0, out.stderr
    lines = [line.split() for line in out.stdout.splitlines()]
    assert [line[:5] for line in lines] == [
        [r, cluster.urls[r], "pid", str(cluster.pids[r]), "ok"] for r in REGIONS]


def test_down_stops_every_process_and_keeps_the_data(cluster: Cluster) -> None:
    pids = dict(cluster.pids)
    out = cluster_cli("down", "--state", str(cluster.state_dir))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{r} stopped" for r in REGIONS]
    assert all(gone(pid) for pid in pids.values())
    for proc in cluster.procs.values():  # reap them: then the pids are gone for good
        proc.wait(timeout=10)
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not cluster.state_file.exists()
    assert all((cluster.state_dir / r / "events.sqlite3").exists() for r in REGIONS)
    status = cluster_cli("status", "--state", str(cluster.state_dir))
    assert status.returncode == 1
    assert "no cluster is up" in status.stderr


def test_the_command_line_cluster_outlives_up_and_not_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    try:
        up = cluster_cli("up", str(COMPOSE), "--state", str(state))
        assert up.returncode == 0, up.stderr
        lines = [line.split() for line in up.stdout.splitlines()]
        assert [(line[0], line[2]) for line in lines] == [(r, "pid") for r in REGIONS]
        pids = [int(line[3]) for line in lines]
        status = cluster_cli("status", "--state", str(state))  # `up` has exited; they serve
        assert status.returncode == 0, status.stdout
        assert [line.split()[4] for line in status.stdout.splitlines()] == ["ok"] * 3
        down = cluster_cli("down", "--state", str(state))
        assert down.stdout.splitlines() == [f"{r} stopped" for r in REGIONS]
        assert all(gone(pid) for pid in pids)
    finally:
        if (state / STATE_FILE).exists():
            Cluster.load(state).down(quiet=True)


def test_plan_rewrites_what_a_container_supplies(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text("""
services:
  a:
    command: serve --host 0.0.0.0 --port 9000 --region r-a --data-dir /var/kms/node --dev
             --peer r-b=http://b:9000
    environment: {UPSTREAM: "http://b:9000/x", OTHER: "http://b:9001", LEVEL: debug}
    volumes: [{type: volume, source: a, target: /var/kms}]
  b:
    command: ["serve", "--port=9000", "--region", "r-b", "--peer", "r-a=http://a:9000"]
    environment: ["MODE=test"]
""")
    monkeypatch.setenv("KMS_ROOT_KEY", "not-for-every-region")
    a, b = plan(load_compose(compose), [5001, 5002], tmp_path / "st", module="regions.cli")
    assert a.argv[1:] == ("-m", "regions.cli", "serve", "--host", "127.0.0.1", "--port", "5001",
                          "--region", "r-a", "--data-dir", str(tmp_path / "st" / "a" / "node"),
                          "--dev", "--peer", "r-b=http://127.0.0.1:5002")
    assert b.argv[3:] == ("serve", "--port", "5002", "--region", "r-b",
                          "--peer", "r-a=http://127.0.0.1:5001",
                          "--host", "127.0.0.1", "--data-dir", str(tmp_path / "st" / "b"))
    assert (a.env["UPSTREAM"], a.env["OTHER"], a.env["LEVEL"]) == (
        "http://127.0.0.1:5002/x", "http://b:9001", "debug")
    assert b.env["MODE"] == "test"
    assert "KMS_ROOT_KEY" not in a.env and "KMS_ROOT_KEY" not in b.env
    no_peers = plan(load_compose(compose), [5001, 5002], tmp_path / "st", module="kms.cli",
                    peers=False)
    assert "--peer" not in no_peers[0].argv and "--peer" not in no_peers[1].argv

"""Run compose.yaml's services as local processes: the cluster that tests and drills use.

Rules: compose.yaml is the one description of the cluster. This reads it and changes only
what a container would supply: the listen address (127.0.0.1), a loopback port, a data dir
under the state dir (for the volume), and service names in URLs (``http://<service>:8080``
becomes that service's loopback URL). Each node runs in its own session, logs to a file in
its data dir, and ``down`` stops every node it started (SIGTERM, then SIGKILL).

    python ops/cluster.py up [compose.yaml] [--base-port N] [--state DIR]
    python ops/cluster.py status [--state DIR]
    python ops/cluster.py down [--state DIR]

In-process, ``Cluster.up(..., proxied=True)`` wires every peer link through a TCP fault
proxy (ops/faultproxy.py): node A's URL for B is the proxy ``links[(A, B)]``, which forwards
to B; client traffic goes to each node directly. ``partition``, ``one_way``, ``isolate``,
``delay`` and ``heal`` set the links' modes. Reading compose.yaml and the local plan are in
ops/compose_plan.py, the process checks in ops/node_process.py; both re-exported here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The plan (compose_plan) and the process checks (node_process) are re-exported: importers
# use ``ops.cluster`` as the one name.
from ops.compose_plan import (  # noqa: E402, F401
    IMAGE_ENV,
    LOG_FILE,
    LOOPBACK,
    ClusterError,
    Node,
    Service,
    _option,
    entry_module,
    free_ports,
    load_compose,
    plan,
    serve_takes_peers,
)
from ops.node_process import _alive, _runs, _tail, health  # noqa: E402, F401

if TYPE_CHECKING:  # imported where used, so a cluster without proxies never loads it
    from ops.faultproxy import FaultProxies, LinkProxy

STATE_FILE = "cluster.json"
DEFAULT_STATE = Path("cluster-data")


@dataclass
class Cluster:
    """Local nodes started from compose.yaml (or read back from a state file)."""

    nodes: list[Node]
    state_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    peers: bool = True
    proxies: FaultProxies | None = None
    links: dict[tuple[str, str], LinkProxy] = field(default_factory=dict)  # (from, to)

    @property
    def urls(self) -> dict[str, str]:
        return {n.region: n.url for n in self.nodes}

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    @classmethod
    def up(cls, compose_path: Path | str = "compose.yaml",
           state_dir: Path | str = DEFAULT_STATE, *, base_port: int | None = None,
           timeout: float = 60.0, proxied: bool = False) -> Cluster:
        """Start every service and wait until each answers /_kms/health ok. On any failure
        the nodes already started are stopped and ClusterError is raised. ``proxied``: every
        peer link goes through a fault proxy in this process (``links``), in pass mode."""
        compose_path, state_dir = Path(compose_path).resolve(), Path(state_dir).resolve()
        project = compose_path.parent
        services = load_compose(compose_path)
        if (state_dir / STATE_FILE).exists():
            running = cls.load(state_dir)
            if any(_runs(running.pids[n.region], n.data_dir) for n in running.nodes):
                raise ClusterError(f"a cluster is already up from {state_dir}; "
                                   f"run `python ops/cluster.py down --state {state_dir}` first")
        module = entry_module(project)
        peers = serve_takes_peers(project, module)
        if not peers and any(_option(s.args, "--peer") for s in services):
            print("cluster: this kms serve has no --peer; starting the nodes without peers",
                  file=sys.stderr)
        ports = ([base_port + i for i in range(len(services))] if base_port is not None
                 else free_ports(len(services)))
        proxies, links, via = None, {}, None
        if proxied:
            from ops.faultproxy import FaultProxies
            proxies = FaultProxies()
            port_of = {s.name: p for s, p in zip(services, ports, strict=True)}
            region_of = {s.name: s.region for s in services}
            try:
                for a in services:
                    for b in services:
                        if a is not b:
                            links[(a.region, b.region)] = proxies.add(
                                f"{a.region}->{b.region}", (LOOPBACK, port_of[b.name]))
            except BaseException:
                proxies.close()
                raise
            via = {(a, b): links[(region_of[a], region_of[b])].port
                   for a in port_of for b in port_of if a != b}
        cluster = cls(plan(services, ports, state_dir, module=module, peers=peers, via=via),
                      state_dir, peers=peers, proxies=proxies, links=links)
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / ".gitignore").write_text("*\n")  # data and logs, never committed
        try:
            for node in cluster.nodes:
                cluster._start(node, project)
            cluster._save()
            cluster._wait_healthy(timeout)
        except BaseException:
            cluster.down(quiet=True)
            raise
        return cluster

    @classmethod
    def load(cls, state_dir: Path | str = DEFAULT_STATE) -> Cluster:
        """The cluster a previous ``up`` recorded in ``state_dir``. Raises ClusterError."""
        state_dir = Path(state_dir).resolve()
        try:
            doc = json.loads((state_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            raise ClusterError(f"no cluster is up from {state_dir} "
                               f"(no {STATE_FILE})") from None
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot read {state_dir / STATE_FILE}: {exc}") from None
        nodes, pids = [], {}
        for region, r in doc["regions"].items():
            service = Service(r["service"], tuple(r["argv"][3:]), {},
                              int(r["container_port"]), None, tuple(r["healthcheck"]))
            nodes.append(Node(service, int(r["port"]), Path(r["data_dir"]), tuple(r["argv"]), {}))
            pids[region] = int(r["pid"])
        return cls(nodes, state_dir, pids=pids, peers=bool(doc.get("peers", True)))

    def _start(self, node: Node, project: Path) -> None:
        node.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(node.log_path, "ab") as log:
            proc = subprocess.Popen(node.argv, cwd=project, env=dict(node.env),
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[node.region], self.pids[node.region] = proc, proc.pid

    def _save(self) -> None:
        doc = {"peers": self.peers, "regions": {n.region: {
            "service": n.service.name, "url": n.url, "port": n.port,
            "pid": self.pids[n.region], "data_dir": str(n.data_dir), "log": str(n.log_path),
            "argv": list(n.argv), "container_port": n.service.container_port,
            "healthcheck": list(n.service.healthcheck),
        } for n in self.nodes}}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(self.state_file)

    def _wait_healthy(self, timeout: float, only: str | None = None) -> None:
        waiting = {n.region: n for n in self.nodes if only in (None, n.region)}
        deadline = time.monotonic() + timeout
        while waiting:
            for region, node in list(waiting.items()):
                if not _alive(self.pids[region], self.procs.get(region)):
                    raise ClusterError(f"{region} exited before it was healthy; "
                                       f"{node.log_path} ends:\n{_tail(node.log_path)}")
                doc = health(node.url, timeout=1.0)  # and not some other node on that port
                if doc.get("status") == "ok" and doc.get("region") == region:
                    del waiting[region]
            if waiting and time.monotonic() > deadline:
                raise ClusterError(f"not healthy after {timeout:.0f} s: {', '.join(waiting)}")
            if waiting:
                time.sleep(0.05)

    def health(self) -> dict[str, dict[str, object]]:
        """Each region's /_kms/health answer."""
        return {n.region: health(n.url) for n in self.nodes}

    def healthcheck(self, region: str) -> int:
        """Run the service's compose healthcheck against its local node; its exit code.
        (``python`` is this interpreter; the container port is the node's loopback port.)"""
        node = next(n for n in self.nodes if n.region == region)
        check = list(node.service.healthcheck)
        if not check:
            raise ClusterError(f"service {node.service.name} has no healthcheck")
        port = node.service.container_port
        if check[0] in ("python", "python3"):
            check[0] = sys.executable
        check = [a.replace(f"127.0.0.1:{port}", f"{LOOPBACK}:{node.port}")
                 .replace(f"localhost:{port}", f"{LOOPBACK}:{node.port}") for a in check]
        return subprocess.run(check, capture_output=True, timeout=30).returncode

    def stop(self, region: str, timeout: float = 10.0) -> str:
        """Stop one region's node (SIGTERM; SIGKILL after ``timeout``), as a region's loss;
        its data and port stay for ``start``. Returns "stopped", "killed" or "not running"."""
        pid, proc = self.pids.get(region), self.procs.get(region)
        if pid is None or not _alive(pid, proc):
            return "not running"
        for how, sig in (("stopped", signal.SIGTERM), ("killed", signal.SIGKILL)):
            self._signal(pid, sig)
            deadline = time.monotonic() + timeout
            while _alive(pid, proc) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _alive(pid, proc):
                if proc is not None:
                    proc.wait(timeout=1)
                return how
        return "still running"

    def kill(self, region: str) -> str:
        """SIGKILL one region's node at once (a region lost without a shutdown); its data
        and port stay for ``start``. Returns "killed", "not running" or "still running"."""
        pid, proc = self.pids.get(region), self.procs.get(region)
        if pid is None or not _alive(pid, proc):
            return "not running"
        self._signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid, proc):
            if time.monotonic() > deadline:  # uninterruptible sleep
                return "still running"
            time.sleep(0.02)
        if proc is not None:
            proc.wait(timeout=5)
        return "killed"

    # -- faults on the peer links (a cluster started with proxied=True) ------------------
    def link(self, src: str, dst: str) -> LinkProxy:
        """The proxy that ``src``'s connections to ``dst`` go through."""
        if not self.links:
            raise ClusterError("this cluster was not started with proxied=True")
        return self.links[(src, dst)]

    def partition(self, a: str, b: str) -> None:
        """No connection between ``a`` and ``b`` either way."""
        self.link(a, b).drop()
        self.link(b, a).drop()

    def one_way(self, src: str, dst: str) -> None:
        """``src`` reaches ``dst``; ``dst``'s connections to ``src`` are dropped."""
        self.link(src, dst).heal()
        self.link(dst, src).drop()

    def isolate(self, region: str) -> None:
        """``region`` cut off from every other region (its clients still reach it)."""
        for (a, b), link in self.links.items():
            if region in (a, b):
                link.drop()

    def delay(self, a: str, b: str, ms: int) -> None:
        """Both directions between ``a`` and ``b`` delayed ``ms`` per chunk."""
        self.link(a, b).delay(ms)
        self.link(b, a).delay(ms)

    def reset_links(self, region: str) -> None:
        """Abort the open connections to and from ``region`` (a lost host's are gone)."""
        for (a, b), link in self.links.items():
            if region in (a, b):
                link.reset()

    def heal(self) -> None:
        """Every link passes again (stalled connections resume)."""
        for link in self.links.values():
            link.heal()

    def start(self, region: str, project: Path | str = ".", timeout: float = 60.0) -> None:
        """Start one stopped region's node again, same command, port and data dir, and wait
        until it is healthy. ``project`` is the directory compose.yaml is in."""
        node = next(n for n in self.nodes if n.region == region)
        if _alive(self.pids[region], self.procs.get(region)):
            raise ClusterError(f"{region} is already running")
        self._start(node, Path(project).resolve())
        self._save()
        self._wait_healthy(timeout, only=region)

    def down(self, timeout: float = 10.0, *, quiet: bool = False) -> dict[str, str]:
        """Stop every node (SIGTERM; SIGKILL after ``timeout``) and remove the state file;
        data dirs and logs stay. Returns how each region ended. Safe to call twice."""
        ended: dict[str, str] = {}
        live = {}
        for node in self.nodes:
            pid = self.pids.get(node.region)
            proc = self.procs.get(node.region)
            ours = pid is not None and (_alive(pid, proc) if proc else _runs(pid, node.data_dir))
            if ours and pid is not None:
                self._signal(pid, signal.SIGTERM)
                live[node.region] = pid
            else:
                ended[node.region] = "not running"
        for how, then in (("stopped", signal.SIGKILL), ("killed", None)):
            deadline = time.monotonic() + timeout
            while live and time.monotonic() < deadline:
                for region, pid in list(live.items()):
                    if not _alive(pid, self.procs.get(region)):
                        ended[region] = how
                        del live[region]
                if live:
                    time.sleep(0.05)
            if then is not None:
                for pid in live.values():
                    self._signal(pid, then)
        for region in live:  # not gone even after SIGKILL (uninterruptible sleep)
            ended[region] = "still running"
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.wait(timeout=1)
        if not live:
            self.state_file.unlink(missing_ok=True)
        if self.proxies is not None:
            self.proxies.close()
        if not quiet:
            for region in (n.region for n in self.nodes):
                print(f"{region} {ended[region]}")
        return ended

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:  # the node leads its own session: signal its whole group
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(pid, sig)


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cluster.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start compose.yaml's services as local processes")
    up.add_argument("compose", nargs="?", default="compose.yaml")
    up.add_argument("--base-port", type=int, help="ports N, N+1, ... (default: free ports)")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for health")
    for name, text in (("status", "health per region"), ("down", "stop every node")):
        sub.add_parser(name, help=text)
    for s in sub.choices.values():
        s.add_argument("--state", type=Path, default=DEFAULT_STATE,
                       help="state dir: data dirs and cluster.json (default ./cluster-data)")
    args = p.parse_args(argv)
    try:
        if args.command == "up":
            cluster = Cluster.up(args.compose, args.state, base_port=args.base_port,
                                 timeout=args.timeout)
            for node in cluster.nodes:
                print(f"{node.region} {node.url} pid {cluster.pids[node.region]}", flush=True)
            return 0
        cluster = Cluster.load(args.state)
        if args.command == "down":
            return 0 if "still running" not in cluster.down().values() else 1
        ok = True
        for node in cluster.nodes:
            doc = health(node.url)
            status = str(doc.get("status"))
            if doc.get("region") not in (None, node.region):
                status = f"serves {doc.get('region')}, expected {node.region}"
            ok &= status == "ok"
            extra = f" log_seq {doc['log_seq']}" if "log_seq" in doc else ""
            print(f"{node.region} {node.url} pid {cluster.pids[node.region]} {status}{extra}")
        return 0 if ok else 1
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

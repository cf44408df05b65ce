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
``delay`` and ``heal`` set the links' modes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml  # PyYAML: the standard YAML reader; only this launcher needs it, never the node

if TYPE_CHECKING:  # imported where used, so `python ops/cluster.py` runs as a script
    from ops.faultproxy import FaultProxies, LinkProxy

STATE_FILE = "cluster.json"
LOG_FILE = "serve.log"
DEFAULT_STATE = Path("cluster-data")
LOOPBACK = "127.0.0.1"
# What the image sets (Dockerfile ENV) and the node behaves by; the rest of the caller's
# environment is passed through (PATH, PYTHONPATH...), except the node's own KMS_* settings,
# which a container would not have (one KMS_ROOT_KEY for every region would be a mistake).
IMAGE_ENV = {"PYTHONUNBUFFERED": "1"}


class ClusterError(Exception):
    """The cluster cannot be started, read or stopped; the message says why."""


# ---------------------------------------------------------------- reading compose.yaml

@dataclass(frozen=True, slots=True)
class Service:
    """One compose service, as the container would run it."""

    name: str
    args: tuple[str, ...]  # after the image's ENTRYPOINT (kms)
    environment: Mapping[str, str]
    container_port: int
    data_target: str | None  # where its volume is mounted (/data)
    healthcheck: tuple[str, ...]  # the CMD form of its healthcheck test, or ()

    @property
    def region(self) -> str:
        return _option(self.args, "--region") or self.name


def load_compose(path: Path) -> list[Service]:
    """The services of ``path``, in file order. Raises ClusterError."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterError(f"cannot read {path}: {exc}") from None
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict) or not services:
        raise ClusterError(f"{path} defines no services")
    return [_service(str(name), spec or {}) for name, spec in services.items()]


def _service(name: str, spec: dict[str, object]) -> Service:
    entrypoint = spec.get("entrypoint")
    if entrypoint not in (None, "kms", ["kms"]):
        raise ClusterError(f"service {name}: only the image's entrypoint (kms) is supported")
    command = spec.get("command")
    if isinstance(command, str):
        command = shlex.split(command)
    if not isinstance(command, list) or not command:
        raise ClusterError(f"service {name}: needs a command (kms serve ...)")
    args = tuple(str(a) for a in command)
    return Service(
        name=name, args=args, environment=_environment(spec.get("environment")),
        container_port=int(_option(args, "--port") or 8080),
        data_target=_volume_target(spec.get("volumes")),
        healthcheck=_healthcheck(spec.get("healthcheck")),
    )


def _environment(env: object) -> dict[str, str]:
    if env is None:
        return {}
    if isinstance(env, dict):
        return {str(k): "" if v is None else str(v) for k, v in env.items()}
    if isinstance(env, list):  # ["NAME=value", ...]
        return dict(str(item).partition("=")[::2] for item in env)
    raise ClusterError(f"environment must be a mapping or a list, not {env!r}")


def _volume_target(volumes: object) -> str | None:
    for v in volumes if isinstance(volumes, list) else []:
        if isinstance(v, dict) and v.get("target"):
            return str(v["target"])
        if isinstance(v, str) and ":" in v:
            return v.split(":")[1]
    return None


def _healthcheck(check: object) -> tuple[str, ...]:
    test = check.get("test") if isinstance(check, dict) else None
    if isinstance(test, list) and test and test[0] == "CMD":
        return tuple(str(t) for t in test[1:])
    if isinstance(test, list) and test and test[0] == "CMD-SHELL":
        return ("sh", "-c", str(test[1]))
    if isinstance(test, str):
        return ("sh", "-c", test)
    return ()


def _option(args: Iterable[str], name: str) -> str | None:
    """The value of ``name`` in an argument list (``--name V`` or ``--name=V``)."""
    items = list(args)
    for i, a in enumerate(items):
        if a == name and i + 1 < len(items):
            return items[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _replace_option(args: list[str], name: str, value: str) -> list[str]:
    """``args`` with ``name`` set to ``value``, in its place (or added at the end)."""
    out, i, seen = [], 0, False
    while i < len(args):
        if args[i] == name or args[i].startswith(name + "="):
            i += 2 if args[i] == name else 1
            out += [] if seen else [name, value]
            seen = True
        else:
            out.append(args[i])
            i += 1
    return out if seen else [*out, name, value]


def _drop_option(args: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


# ---------------------------------------------------------------- the local plan

@dataclass(frozen=True, slots=True)
class Node:
    """A service as a local process: what runs, where, and how it is reached."""

    service: Service
    port: int
    data_dir: Path
    argv: tuple[str, ...]
    env: Mapping[str, str]

    @property
    def region(self) -> str:
        return self.service.region

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE


def entry_module(project: Path) -> str:
    """The module behind the ``kms`` console script (what the image's ENTRYPOINT runs)."""
    try:
        scripts = tomllib.loads((project / "pyproject.toml").read_text())["project"]["scripts"]
        return str(scripts["kms"]).split(":")[0]
    except (OSError, KeyError, ValueError):
        return "kms.cli"


def serve_takes_peers(project: Path, module: str) -> bool:
    """Whether this checkout's ``kms serve`` has ``--peer`` (compose.yaml wires peers)."""
    out = subprocess.run([sys.executable, "-m", module, "serve", "--help"], cwd=project,
                         capture_output=True, text=True, timeout=60)
    return "--peer" in out.stdout


def plan(services: list[Service], ports: list[int], state_dir: Path, *, module: str,
         peers: bool = True, via: Mapping[tuple[str, str], int] | None = None) -> list[Node]:
    """The local nodes for ``services``: ``ports[i]`` for the i-th; URLs to other services
    rewritten to their loopback URLs (or, with ``via``, to the port ``via[(from, to)]`` of
    the link between the two services' names); ``--peer`` dropped when ``peers`` is false."""
    pairs = list(zip(services, ports, strict=True))
    urls = {s.name: (s.container_port, p) for s, p in pairs}

    def rewrite(source: str) -> Callable[[str], str]:
        def local(text: str) -> str:
            def swap(m: re.Match[str]) -> str:
                name, port = m.group(1), int(m.group(2) or 80)
                known = urls.get(name)
                if not known or known[0] != port:
                    return m.group(0)
                to = via[(source, name)] if via and (source, name) in via else known[1]
                return f"http://{LOOPBACK}:{to}"
            return re.sub(r"http://([A-Za-z0-9._-]+)(?::(\d+))?(?=/|$)", swap, text)
        return local

    nodes = []
    for service, port in pairs:
        local = rewrite(service.name)
        data_dir = state_dir / service.name
        args = [local(a) for a in service.args]
        given = _option(args, "--data-dir")
        if given and service.data_target and (given + "/").startswith(service.data_target + "/"):
            data_dir = data_dir / given[len(service.data_target):].lstrip("/")
        args = _replace_option(args, "--host", LOOPBACK)
        args = _replace_option(args, "--port", str(port))
        args = _replace_option(args, "--data-dir", str(data_dir))
        if not peers:
            args = _drop_option(args, "--peer")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KMS_")}
        env |= IMAGE_ENV | {k: local(v) for k, v in service.environment.items()}
        nodes.append(Node(service, port, data_dir, (sys.executable, "-m", module, *args), env))
    return nodes


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held together while chosen, so distinct)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((LOOPBACK, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------- processes

def _alive(pid: int, proc: subprocess.Popen[bytes] | None = None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited process nobody has reaped yet is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        ps = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
        return ps.returncode == 0 and not ps.stdout.strip().startswith("Z")


def _runs(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is still the node on ``data_dir`` (not a reused pid)."""
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        cmdline = subprocess.run(["ps", "-o", "args=", "-p", str(pid)],
                                 capture_output=True, text=True).stdout
    return str(data_dir) in cmdline


def health(url: str, timeout: float = 2.0) -> dict[str, object]:
    """GET /_kms/health; its JSON (a 503 answers JSON too), or {"status": "unreachable"}."""
    try:
        with urllib.request.urlopen(url + "/_kms/health", timeout=timeout) as r:
            doc: dict[str, object] = json.load(r)
    except urllib.error.HTTPError as exc:
        try:
            doc = json.load(exc)
        except ValueError:
            doc = {"status": f"http {exc.code}"}
    except (OSError, ValueError) as exc:
        return {"status": "unreachable", "error": str(getattr(exc, "reason", exc))}
    return doc


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


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

"""compose.yaml read as services, and planned as local nodes: what each runs, on which loopback
port, with which data dir.

Rules: compose.yaml is the one description of the cluster; a plan changes only what a
container would supply: the listen address (127.0.0.1), a loopback port, a data dir under
the state dir (for the volume), and service names in URLs (``http://<service>:8080`` becomes
that service's loopback URL, or its fault proxy's). No process is started here.
ops.cluster re-exports these names.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml  # PyYAML: the standard YAML reader; only this launcher needs it, never the node

LOG_FILE = "serve.log"
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


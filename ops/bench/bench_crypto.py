"""Encrypt/Decrypt throughput and latency of a real node vs. the bare-aiohttp ceiling.

Starts two subprocesses on free loopback ports -- the node as shipped
(``python -m kms.cli serve --dev --log-format json``, stderr to a file) and
``ops/bench/ceiling.py`` -- and drives both with the same closed-loop load from
``wrk`` (fixed connections = fixed concurrency, fixed duration). Each case is
split into --rounds runs per server, alternating ceiling/node (and who goes first),
and reported as medians, so drift and neighbours' load hit both alike.

    python ops/bench/bench_crypto.py [--duration 10 --concurrency 32,64 --rounds 2]
        [--ops encrypt,decrypt] [--plaintext-bytes 64] [--warmup 2] [--profile 5]
        [--baseline TREE] [--keys N]

``--baseline`` adds a node started from another source tree (``git archive <commit>``
unpacked) to the same rotation, so candidate and baseline share the machine's drift;
``--keys`` gives each node N more keys first (a log with many streams).

Prints a table and writes ops/bench/results/crypto-<date>.json. See README.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pyspy_profile import profile_server  # noqa: E402  (beside this file)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
CTYPE = "application/x-amz-json-1.1"
# In --dev mode the node reads only the access key out of this; nothing is verified.
AUTH = ("AWS4-HMAC-SHA256 Credential=AKIABENCHMARK0000000/20240101/us-east-1/kms/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + "0" * 64)
HEADERS = {"Content-Type": CTYPE, "Authorization": AUTH, "X-Amz-Date": "20240101T000000Z",
           "User-Agent": "kms-bench/1 wrk"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, name: str, args: list[str], port: int, stderr: Any,
                 cwd: Path = ROOT) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/_kms/health", timeout=1) as r:
                    if json.load(r).get("status") == "ok":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{name} did not become healthy")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def call(self, target: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(self.url + "/", data=json.dumps(body).encode(), method="POST",
                                     headers={**HEADERS, "X-Amz-Target": f"TrentService.{target}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            result: dict[str, Any] = json.load(r)
            return result

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_kms/health", timeout=5) as r:
            result: dict[str, Any] = json.load(r)
            return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_ticks(pid: int) -> dict[str, int]:
    """CPU ticks and context switches: the main (event-loop) thread vs. all other threads."""
    out = dict.fromkeys(("main", "other", "main_user", "main_sys", "main_vcsw", "main_ivcsw",
                         "other_vcsw"), 0)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:
            continue
        user, system = int(fields[11]), int(fields[12])
        csw = dict(re.findall(r"^(\w*ctxt_switches):\s+(\d+)", status, re.M))
        if int(task.name) == pid:
            out["main"] += user + system
            out["main_user"] += user
            out["main_sys"] += system
            out["main_vcsw"] += int(csw.get("voluntary_ctxt_switches", 0))
            out["main_ivcsw"] += int(csw.get("nonvoluntary_ctxt_switches", 0))
        else:
            out["other"] += user + system
            out["other_vcsw"] += int(csw.get("voluntary_ctxt_switches", 0))
    return out


# -- load -------------------------------------------------------------------------------------
_DONE = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,' ..
    '"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


def lua_script(path: Path, target: str, body: str) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body}]==]"]
    for k, v in {**HEADERS, "X-Amz-Target": f"TrentService.{target}"}.items():
        lines.append(f'wrk.headers["{k}"] = [==[{v}]==]')
    path.write_text("\n".join(lines) + "\n" + _DONE)
    return path


def run_wrk(url: str, script: Path, concurrency: int, duration: float, threads: int
            ) -> dict[str, Any]:
    args = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration))}s",
            "--timeout", "10s", "-s", str(script), url + "/"]
    before = os.times()
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    after = os.times()
    m = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    r: dict[str, Any] = json.loads(m.group(1))
    secs = r["duration_us"] / 1e6
    r["ops_s"] = r["requests"] / secs
    r["p50_ms"], r["p99_ms"] = r["p50_us"] / 1000, r["p99_us"] / 1000
    r["errors"] = sum(r[k] for k in r if k.startswith("errors_"))
    r["wrk_cpu_pct"] = 100 * ((after.children_user - before.children_user)
                              + (after.children_system - before.children_system)) / secs
    return r


def machine_ticks() -> tuple[int, int]:
    """(busy, steal) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f[:8]
    return user + nice + system + irq + softirq, steal


def measured(server: Server, script: Path, concurrency: int, duration: float, threads: int
             ) -> dict[str, Any]:
    t0, c0, m0 = time.monotonic(), cpu_ticks(server.pid), machine_ticks()
    r = run_wrk(server.url, script, concurrency, duration, threads)
    secs, c1, m1 = time.monotonic() - t0, cpu_ticks(server.pid), machine_ticks()
    r["server_cpu_main_pct"] = 100 * (c1["main"] - c0["main"]) / CLK_TCK / secs
    r["server_cpu_other_pct"] = 100 * (c1["other"] - c0["other"]) / CLK_TCK / secs
    busy_pct = 100 * (m1[0] - m0[0]) / CLK_TCK / secs
    # CPU burnt by anything but the server under test and wrk: other engineers' tests, etc.
    r["foreign_cpu_pct"] = max(0.0, busy_pct - r["server_cpu_main_pct"]
                               - r["server_cpu_other_pct"] - r["wrk_cpu_pct"])
    r["steal_pct"] = 100 * (m1[1] - m0[1]) / CLK_TCK / secs
    # the server's own CPU cost per request, all threads: robust to neighbours' load
    r["server_cpu_us_per_op"] = 1e4 * (r["server_cpu_main_pct"] + r["server_cpu_other_pct"]
                                       ) / max(r["ops_s"], 1e-9)
    # where the main thread's CPU goes (user vs. kernel) and how often it is switched out
    n = max(r["requests"], 1)
    r["main_user_us_per_op"] = 1e6 * (c1["main_user"] - c0["main_user"]) / CLK_TCK / n
    r["main_sys_us_per_op"] = 1e6 * (c1["main_sys"] - c0["main_sys"]) / CLK_TCK / n
    r["other_cpu_us_per_op"] = 1e6 * (c1["other"] - c0["other"]) / CLK_TCK / n
    r["main_vcsw_per_op"] = (c1["main_vcsw"] - c0["main_vcsw"]) / n
    r["main_ivcsw_per_op"] = (c1["main_ivcsw"] - c0["main_ivcsw"]) / n
    r["other_vcsw_per_op"] = (c1["other_vcsw"] - c0["other_vcsw"]) / n
    return r


def disk_flushes() -> int:
    """Flush requests completed by every whole disk (machine-wide; /proc/diskstats field 16)."""
    total = 0
    for line in Path("/proc/diskstats").read_text().splitlines():
        f = line.split()
        if len(f) >= 20 and Path(f"/sys/block/{f[2]}/device").exists():
            total += int(f[18])
    return total


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One case from its rounds: medians of ops/s, p50, p99 and the CPU figures."""
    if len(rounds) == 1:
        return dict(rounds[0])
    out: dict[str, Any] = {"rounds": rounds}
    for k in ("ops_s", "p50_ms", "p99_ms", "server_cpu_main_pct", "server_cpu_other_pct",
              "wrk_cpu_pct", "foreign_cpu_pct", "steal_pct", "server_cpu_us_per_op",
              "main_user_us_per_op", "main_sys_us_per_op", "other_cpu_us_per_op",
              "main_vcsw_per_op", "main_ivcsw_per_op", "other_vcsw_per_op"):
        out[k] = median([r[k] for r in rounds])
    for k in ("requests", "errors", "disk_flushes", "log_rows"):
        if k not in rounds[0]:
            continue
        out[k] = sum(r[k] for r in rounds)
    if "log_rows" in out:
        out["log_rows_per_request"] = round(out["log_rows"] / max(out["requests"], 1), 3)
        out["log_rows_per_disk_flush"] = round(out["log_rows"] / max(out["disk_flushes"], 1), 1)
    return out


# -- main -------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    from importlib.metadata import version
    out = {"python": platform.python_version(), "cpus": str(os.cpu_count())}
    for pkg in ("aiohttp", "cryptography", "structlog", "aiosqlite"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = "?"
    w = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    out["wrk"] = (w.stdout or w.stderr).split("Copyright")[0].strip()
    return out


def source_fingerprint(root: Path = ROOT) -> dict[str, Any]:
    """Which kms/ was measured: no git here, so a digest of its sources and their newest mtime."""
    import hashlib
    files = sorted((root / "kms").rglob("*.py"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    newest = max(f.stat().st_mtime for f in files)
    return {"kms_sha256": digest.hexdigest()[:16], "files": len(files),
            "newest_mtime": dt.datetime.fromtimestamp(newest).isoformat(timespec="seconds")}


def make_keys(node: Server, n: int) -> None:
    """``n`` more keys on ``node`` (8 at a time): a log with many streams, as a node in use has."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: node.call("CreateKey", {"Description": f"filler {i}"}),
                      range(n)))


def compare(n: dict[str, Any], k: dict[str, Any], prefix: str) -> None:
    """``n``'s figures against ``k``'s (the ceiling, or the baseline node) into ``n``."""
    n[f"{prefix}ops_s"] = round(n["ops_s"] / k["ops_s"], 3)
    n[f"{prefix}p50"] = round(n["p50_ms"] / k["p50_ms"], 2)
    n[f"{prefix}p99"] = round(n["p99_ms"] / k["p99_ms"], 2)
    # what ops/s would be if both got the same CPU: k's cost / n's cost
    n[f"{prefix}cpu_cost"] = round(k["server_cpu_us_per_op"] / n["server_cpu_us_per_op"], 3)


def main() -> int:
    p = argparse.ArgumentParser(description="Encrypt/Decrypt: node vs. bare-aiohttp ceiling")
    p.add_argument("--duration", type=float, default=10,
                   help="seconds of load per case and server, split over --rounds (default 10)")
    p.add_argument("--concurrency", default="32,64", help="comma list of connections")
    p.add_argument("--ops", default="encrypt,decrypt", help="comma list: encrypt,decrypt")
    p.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per op and server")
    p.add_argument("--plaintext-bytes", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    p.add_argument("--rounds", type=int, default=2,
                   help="split each case into N runs per server, alternating ceiling/node "
                        "(who goes first too); report medians (default 2)")
    p.add_argument("--baseline", type=Path, metavar="TREE",
                   help="also run a node from this source tree (e.g. `git archive <commit>` "
                        "unpacked) in the same rounds, and report node vs baseline")
    p.add_argument("--keys", type=int, default=0,
                   help="create this many more keys on each node first (default 0)")
    p.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                   help="after the cases, py-spy the node for SECONDS under each op's load "
                        "(highest concurrency); needs py-spy (pip install py-spy)")
    p.add_argument("--data-dir", type=Path, help="node data dir (default: a fresh temp dir)")
    p.add_argument("--out", type=Path, help="result JSON (default results/crypto-<date>.json)")
    a = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    concurrencies = [int(c) for c in a.concurrency.split(",") if c]
    ops = [o.strip().lower() for o in a.ops.split(",") if o.strip()]
    work = Path(tempfile.mkdtemp(prefix="kms-bench-"))
    data_dir = a.data_dir or work / "data"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = a.out or RESULTS / f"crypto-{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    trees = {"node": ROOT, **({"baseline": a.baseline.resolve()} if a.baseline else {})}

    servers: list[Server] = []
    nodes: dict[str, Server] = {}
    results: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"started": dt.datetime.now().isoformat(timespec="seconds"),
                            "args": {k: str(v) for k, v in vars(a).items()},
                            "versions": versions(), "data_dir": str(data_dir),
                            "source": source_fingerprint(),
                            **({"baseline_source": source_fingerprint(trees["baseline"])}
                               if a.baseline else {})}
    rss: dict[str, dict[str, float]] = {}
    seqs: dict[str, int] = {}
    logs = {name: work / f"{name}-stderr.jsonl" for name in trees}
    errs = {name: open(path, "wb") for name, path in logs.items()}
    try:
        port = free_port()
        servers.append(Server("ceiling", [sys.executable, str(HERE / "ceiling.py"),
                                          "--port", str(port)], port, subprocess.DEVNULL))
        for name, tree in trees.items():
            port = free_port()
            nodes[name] = Server(name, [sys.executable, "-m", "kms.cli", "serve", "--dev",
                                        "--host", "127.0.0.1", "--port", str(port),
                                        "--data-dir", str(data_dir if name == "node"
                                                          else work / f"{name}-data"),
                                        "--log-format", "json"], port, errs[name], cwd=tree)
            servers.append(nodes[name])
        plaintext = base64.b64encode(os.urandom(a.plaintext_bytes)).decode()
        bodies: dict[str, dict[str, Any]] = {}
        for name, node in nodes.items():
            if a.keys:
                make_keys(node, a.keys)
            key_id = node.call("CreateKey", {"Description": "bench"})["KeyMetadata"]["KeyId"]
            bodies[name] = {"KeyId": key_id, "Plaintext": plaintext}
            rss[name] = {"before": rss_mib(node.pid)}
            seqs[name] = int(node.health()["log_seq"])
        bodies["ceiling"] = bodies["node"]  # the same request bytes (the ceiling ignores KeyId)
        print(f"kms/ sources {meta['source']['kms_sha256']} "
              f"(newest change {meta['source']['newest_mtime']})"
              + (f", baseline {meta['baseline_source']['kms_sha256']} from {a.baseline}"
                 if a.baseline else ""))
        print(", ".join(f"{s.name} pid {s.pid}" for s in servers) + f", data {data_dir}, "
              f"{a.duration:g}s per case and server in {a.rounds} rounds, "
              f"plaintext {a.plaintext_bytes} B, {a.keys} more keys per node\n", flush=True)
        scripts: dict[tuple[str, str], Path] = {}
        for server in servers:
            enc_body = bodies[server.name]
            for op in ops:
                if op == "encrypt":
                    target, body = "Encrypt", enc_body
                else:  # one real Encrypt first: Decrypt needs a CiphertextBlob
                    blob = server.call("Encrypt", enc_body)["CiphertextBlob"]
                    target, body = "Decrypt", {"CiphertextBlob": blob}
                    assert server.call("Decrypt", body)["Plaintext"] == plaintext
                scripts[server.name, op] = lua_script(work / f"{server.name}-{op}.lua",
                                                      target, json.dumps(body))
        for op in ops:
            for server in servers:  # warm-up, not recorded
                if a.warmup > 0:
                    run_wrk(server.url, scripts[server.name, op], max(concurrencies),
                            a.warmup, a.threads)
            for c in concurrencies:
                runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
                for i in range(a.rounds):  # rotate who goes first, round by round
                    shift = i % len(servers)
                    for server in servers[shift:] + servers[:shift]:
                        seq0 = int(server.health().get("log_seq", 0))
                        f0 = disk_flushes()
                        r = measured(server, scripts[server.name, op], c,
                                     a.duration / a.rounds, a.threads)
                        r["disk_flushes"] = disk_flushes() - f0
                        if server.name in nodes:
                            rows = int(server.health()["log_seq"]) - seq0
                            r["log_rows"] = rows
                            r["log_rows_per_request"] = round(rows / max(r["requests"], 1), 3)
                            # approximate events per commit (one WAL fsync ~ one flush)
                            r["log_rows_per_disk_flush"] = round(
                                rows / max(r["disk_flushes"], 1), 1)
                        runs[server.name].append(r)
                        print(f"  {server.name:8} {op:8} c={c:<4} {r['ops_s']:9.0f} ops/s  "
                              f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                              f"errors {r['errors']}  foreign CPU "
                              f"{r['foreign_cpu_pct']:.0f}%", flush=True)
                case = {}
                for server in servers:
                    case[server.name] = combine(runs[server.name])
                    case[server.name].update(server=server.name, op=op, concurrency=c)
                    results.append(case[server.name])
                for name in nodes:
                    compare(case[name], case["ceiling"], "ratio_")
                if "baseline" in case:
                    compare(case["node"], case["baseline"], "vs_baseline_")
        for name, node in nodes.items():
            rss[name]["after"] = rss_mib(node.pid)
            seqs[name] = int(node.health()["log_seq"]) - seqs[name]
        profiles: dict[str, Any] = {}
        for op in ops if a.profile > 0 else ():
            for server in servers:
                print(f"\nprofiling {server.name} with py-spy for {a.profile}s "
                      f"({op}, c={max(concurrencies)}) ...", flush=True)
                raw = out_path.with_suffix(f".{server.name}-{op}.pyspy.raw")
                profiles[f"{server.name} {op}"] = profile_server(
                    server.pid, lambda secs, s=server, o=op: measured(
                        s, scripts[s.name, o], max(concurrencies), secs, a.threads),
                    a.profile, raw)
    finally:
        for s in reversed(servers):
            s.stop()
        for f in errs.values():
            f.close()
    log_lines = {name: sum(1 for _ in open(path, "rb")) for name, path in logs.items()}
    report(results, ops, concurrencies, rss, seqs, log_lines, profiles)
    doc = {**meta, "results": results,
           "node_rss_mib": {k: round(v, 1) for k, v in rss["node"].items()},
           "node_log_rows_appended": seqs["node"], "node_stderr_lines": log_lines["node"],
           "node_stderr_bytes": logs["node"].stat().st_size, "profiles": profiles,
           **({"baseline_rss_mib": {k: round(v, 1) for k, v in rss["baseline"].items()}}
              if "baseline" in rss else {})}
    out_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")
    if a.data_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results: list[dict[str, Any]], ops: list[str], concurrencies: list[int],
           rss: dict[str, dict[str, float]], seqs: dict[str, int], log_lines: dict[str, int],
           profiles: dict[str, Any]) -> None:
    print("\nratio = node/ceiling (ops/s, p50, p99); cost = ceiling CPU per op / node CPU per op")
    print(f"{'case':22}{'ops/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'ratio':>7}{'p50':>6}{'p99':>6}"
          f"{'cost':>6}{'CPU us/op':>10}{'srv main+oth %':>16}{'wrk %':>6}{'foreign %':>10}")
    for r in results:
        ratio = (f"{r['ratio_ops_s']:7.2f}{r['ratio_p50']:5.1f}x{r['ratio_p99']:5.1f}x"
                 f"{r['ratio_cpu_cost']:6.2f}" if "ratio_ops_s" in r else " " * 25)
        name = f"{r['server']} {r['op']} c={r['concurrency']}"
        print(f"{name:22}{r['ops_s']:7.0f}{r['p50_ms']:8.2f}{r['p99_ms']:8.2f}{ratio}"
              f"{r['server_cpu_us_per_op']:10.0f}"
              f"{r['server_cpu_main_pct']:>10.0f} + {r['server_cpu_other_pct']:<3.0f}"
              f"{r['wrk_cpu_pct']:>6.0f}{r['foreign_cpu_pct']:>10.0f}"
              + (f"  ERRORS {r['errors']}" if r["errors"] else ""))
    if any("vs_baseline_ops_s" in r for r in results):
        print("\nnode vs baseline (same rounds): ops/s, p50, p99 ratios; cost = baseline CPU "
              "per op / node CPU per op (> 1: the node spends less)")
        for r in results:
            if "vs_baseline_ops_s" in r:
                print(f"  {r['op']:8} c={r['concurrency']:<4} ops/s {r['vs_baseline_ops_s']:.3f}"
                      f"  p50 {r['vs_baseline_p50']:.2f}  p99 {r['vs_baseline_p99']:.2f}"
                      f"  cost {r['vs_baseline_cpu_cost']:.3f}")
    print("\nserver CPU per request (medians): main-thread user/sys us, other threads us; "
          "context switches per request: main voluntary/involuntary, other voluntary")
    for r in results:
        name = f"{r['server']} {r['op']} c={r['concurrency']}"
        print(f"  {name:22} main {r['main_user_us_per_op']:5.0f} usr + "
              f"{r['main_sys_us_per_op']:4.0f} sys, other {r['other_cpu_us_per_op']:4.0f} us;"
              f"  csw main {r['main_vcsw_per_op']:.2f} / {r['main_ivcsw_per_op']:.2f}, "
              f"other {r['other_vcsw_per_op']:.2f}")
    print("\naudit log: rows per request / rows per disk flush (~events per commit, "
          "machine-wide flush count): " + ", ".join(
              f"{r['server']} {r['op']} c={r['concurrency']} {r['log_rows_per_request']:.2f} / "
              f"{r['log_rows_per_disk_flush']:.1f}" for r in results if "log_rows" in r))
    for name in rss:
        print(f"{name} RSS: before {rss[name]['before']:.1f} MiB, after "
              f"{rss[name]['after']:.1f} MiB; {seqs[name]} log rows appended during the cases; "
              f"{log_lines[name]} stderr lines")
    for op in ops:
        k, n = profiles.get(f"ceiling {op}"), profiles.get(f"node {op}")
        if not n:
            continue
        print(f"\npy-spy, {op} c={max(concurrencies)}, {n['seconds']}s @ {n['rate_hz']} Hz: "
              f"main-thread CPU per request by component (self time, leaf-up attribution)")
        print(f"  node busy % by thread: {n['busy_pct_by_thread']}; node "
              f"{n['ops_s']} ops/s" + (f", ceiling {k['ops_s']} ops/s" if k else ""))
        print(f"  {'component':40}{'ceiling us':>11}{'node us':>9}{'node %':>8}")
        kc = k["main_us_per_op_by_component"] if k else {}
        for f, _, pct in n["main_by_component"]:
            print(f"  {f:40}{kc.get(f, 0):11.1f}{n['main_us_per_op_by_component'][f]:9.1f}"
                  f"{pct:8.1f}")
        print(f"  {'total main thread':40}{k['main_cpu_us_per_op'] if k else 0:11.1f}"
              f"{n['main_cpu_us_per_op']:9.1f}")
        print("  node main thread, top 10 functions by self time:")
        for f, _, pct in n["top_self_main"][:10]:
            print(f"    {pct:5.1f}%  {f}")


if __name__ == "__main__":
    sys.exit(main())

"""Sign and Verify per second through the node, beside the bare library call.

For RSA_2048 (RSASSA_PSS_SHA_256) and ECC_NIST_P256 (ECDSA_SHA_256): the node's
closed-loop ops/s and p50/p99 under wrk, and the cost of the same `cryptography`
call made directly in this process (one thread), so the ratio shows what the
service costs on top of the cryptography. Loopback only; bounded by --duration.

    python ops/bench/bench_sign.py [--duration 6 --concurrency 32]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_crypto import Server, free_port, lua_script, measured, rss_mib  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = b"benchmark message " * 4
CASES = {
    "RSA_2048": "RSASSA_PSS_SHA_256",
    "ECC_NIST_P256": "ECDSA_SHA_256",
}


def library_ops_per_s(spec: str, op: str, seconds: float = 2.0) -> float:
    """The bare `cryptography` call, in a tight loop on one thread."""
    if spec == "RSA_2048":
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        sign = lambda: key.sign(MESSAGE, pss, hashes.SHA256())  # noqa: E731
        sig = sign()
        pub = key.public_key()
        verify = lambda: pub.verify(sig, MESSAGE, pss, hashes.SHA256())  # noqa: E731
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        sign = lambda: key.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))  # noqa: E731
        sig = sign()
        pub = key.public_key()
        verify = lambda: pub.verify(sig, MESSAGE, ec.ECDSA(hashes.SHA256()))  # noqa: E731
    fn = sign if op == "sign" else verify
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per case")
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    results: dict[str, Any] = {"cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        log = open(Path(tmp) / "node.log", "wb")  # noqa: SIM115
        node = Server("node", [sys.executable, "-m", "kms.cli", "serve", "--dev", "--port",
                               str(port), "--data-dir", str(Path(tmp) / "data"),
                               "--log-format", "json"], port, log)
        try:
            rss_before = rss_mib(node.pid)
            rows = []
            for spec, algorithm in CASES.items():
                key_id = node.call("CreateKey", {"KeySpec": spec, "KeyUsage": "SIGN_VERIFY"}
                                   )["KeyMetadata"]["KeyId"]
                msg = base64.b64encode(MESSAGE).decode()
                signed = node.call("Sign", {"KeyId": key_id, "Message": msg,
                                            "SigningAlgorithm": algorithm})
                bodies = {
                    "sign": {"KeyId": key_id, "Message": msg, "SigningAlgorithm": algorithm},
                    "verify": {"KeyId": key_id, "Message": msg, "SigningAlgorithm": algorithm,
                               "Signature": signed["Signature"]},
                }
                for op, body in bodies.items():
                    script = lua_script(Path(tmp) / f"{spec}-{op}.lua", op.capitalize(),
                                        json.dumps(body))
                    r = measured(node, script, args.concurrency, args.duration, 1)
                    lib = library_ops_per_s(spec, op)
                    row = {"spec": spec, "op": op, "node_ops_s": r["ops_s"],
                           "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": r["errors"],
                           "library_ops_s": lib, "library_us": 1e6 / lib,
                           "ratio": r["ops_s"] / lib,
                           "node_cpu_us_per_op": r["server_cpu_us_per_op"]}
                    rows.append(row)
            results["cases"] = rows
            results["rss_mib"] = {"before": rss_before, "after": rss_mib(node.pid)}
        finally:
            node.stop()
            log.close()
    print(f"{'case':24} {'node ops/s':>10} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'library ops/s':>13} {'lib us':>7} {'node/lib':>8} {'errors':>6}")
    for r in results["cases"]:
        print(f"{r['spec'] + ' ' + r['op']:24} {r['node_ops_s']:10.0f} {r['p50_ms']:7.2f} "
              f"{r['p99_ms']:7.2f} {r['library_ops_s']:13.0f} {r['library_us']:7.1f} "
              f"{r['ratio']:8.2f} {r['errors']:6d}")
    print(f"node RSS: before {results['rss_mib']['before']:.1f} MiB, "
          f"after {results['rss_mib']['after']:.1f} MiB")
    out = ROOT / "ops/bench/results" / f"sign-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

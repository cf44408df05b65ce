"""Encrypt through SigV4 under a 20-statement key policy with conditions vs. Encrypt under
the default key policy, side by side on one secured node.

Starts one node (``python -m regions.cli serve --config ...``, no --dev: every request's
signature is checked) whose config names alice, an IAM user with an identity policy.
Two keys: one under AWS's default key policy (alice allowed through the account and her
IAM policy), one under a 20-statement policy with conditions (encryption context,
ViaService, PrincipalArn, SourceIp, dates, numbers, tags, ForAnyValue; Allow and Deny
statements, the one that allows alice last), so every request evaluates all 20. Each
Encrypt request is signed once with botocore's SigV4 signer and replayed by ``wrk``
(within the signature's 5-minute window; it is re-signed before each run). The cases
alternate over --rounds (who goes first too) and are reported as medians; the figure is
the ratio of the policy case to the default case (target: within 10 %).

    python ops/bench/bench_policy.py [--duration 10 --concurrency 32 --rounds 3] [--control]

Prints a table and writes ops/bench/results/policy-<date>.json. See README.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_crypto import (  # noqa: E402  (the shared harness beside this file)
    _DONE,
    CTYPE,
    RESULTS,
    Server,
    combine,
    free_port,
    measured,
    source_fingerprint,
    versions,
)

ACCOUNT = "111122223333"
ROOT_ARN = f"arn:aws:iam::{ACCOUNT}:root"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
ROOT_KEY, ROOT_SECRET = "AKIABENCHROOT0000001", "bench-root-secret"
ALICE_KEY, ALICE_SECRET = "AKIABENCHALICE000001", "bench-alice-secret"
ALL_KMS = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]})
CONTEXT = {"app": "bench", "tenant": "t-0042"}


def config() -> str:
    return (f'account_id = "{ACCOUNT}"\n'
            f'[[principals]]\narn = "{ROOT_ARN}"\naccess_key_id = "{ROOT_KEY}"\n'
            f'secret_access_key = "{ROOT_SECRET}"\n'
            f'[[principals]]\narn = "{ALICE}"\naccess_key_id = "{ALICE_KEY}"\n'
            f'secret_access_key = "{ALICE_SECRET}"\ntags = {{ team = "payments" }}\n'
            f"policies = ['{ALL_KMS}']\n")


def default_policy() -> str:
    return json.dumps({"Version": "2012-10-17", "Id": "key-default-1", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
         "Principal": {"AWS": ROOT_ARN}, "Action": "kms:*", "Resource": "*"}]})


def twenty_statements() -> str:
    """20 statements with conditions; the one that allows alice comes last."""
    s: list[dict[str, Any]] = [
        {"Sid": "Admins", "Effect": "Allow", "Principal": {"AWS": ROOT_ARN}, "Resource": "*",
         "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*",
                    "kms:Update*", "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*",
                    "kms:TagResource", "kms:UntagResource", "kms:ScheduleKeyDeletion",
                    "kms:CancelKeyDeletion"]},
    ]
    for i in range(7):  # other users' use, each under its own context
        s.append({"Sid": f"User{i}", "Effect": "Allow",
                  "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                  "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*",
                  "Condition": {"StringEquals": {f"kms:EncryptionContext:svc{i}": f"v{i}",
                                                 "aws:PrincipalTag/team": f"team{i}"}}})
    s += [
        {"Sid": "ViaS3", "Effect": "Allow", "Principal": {"AWS": "*"}, "Resource": "*",
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*"],
         "Condition": {"StringEquals": {"kms:CallerAccount": ACCOUNT,
                                        "kms:ViaService": "s3.us-east-1.amazonaws.com"}}},
        {"Sid": "Roles", "Effect": "Allow", "Principal": {"AWS": "*"}, "Resource": "*",
         "Action": "kms:Encrypt",
         "Condition": {"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/app-*"}}},
        {"Sid": "Office", "Effect": "Allow", "Principal": {"AWS": "*"}, "Resource": "*",
         "Action": "kms:Encrypt", "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}},
        {"Sid": "Until", "Effect": "Allow", "Principal": {"AWS": "*"}, "Resource": "*",
         "Action": "kms:Encrypt",
         "Condition": {"DateLessThan": {"aws:CurrentTime": "2001-01-01T00:00:00Z"}}},
        {"Sid": "Rotation", "Effect": "Allow", "Principal": {"AWS": ROOT_ARN}, "Resource": "*",
         "Action": "kms:EnableKeyRotation",
         "Condition": {"NumericLessThanEquals": {"kms:RotationPeriodInDays": "180"}}},
        {"Sid": "Grants", "Effect": "Allow", "Principal": {"AWS": "*"}, "Resource": "*",
         "Action": "kms:CreateGrant",
         "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}},
        {"Sid": "DenyOtherApps", "Effect": "Deny", "Principal": "*", "Resource": "*",
         "Action": "kms:Encrypt",
         "Condition": {"StringNotEquals": {"kms:EncryptionContext:app": ["bench", "web"]}}},
        {"Sid": "DenyNoContext", "Effect": "Deny", "Principal": "*", "Resource": "*",
         "Action": ["kms:Encrypt", "kms:GenerateDataKey*"],
         "Condition": {"Null": {"kms:EncryptionContextKeys": "true"}}},
        {"Sid": "DenySecrets", "Effect": "Deny", "Principal": "*", "Resource": "*",
         "Action": "kms:*",
         "Condition": {"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": "secret*"}}},
        {"Sid": "DenyBlocked", "Effect": "Deny", "Principal": "*", "Resource": "*",
         "Action": "kms:*", "Condition": {"StringEquals": {"aws:PrincipalTag/blocked": "yes"}}},
        {"Sid": "DenyOldAlgorithms", "Effect": "Deny", "Principal": "*", "Resource": "*",
         "Action": "kms:Encrypt",
         "Condition": {"StringNotEqualsIfExists": {
             "kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}}},
        {"Sid": "AliceEncrypts", "Effect": "Allow", "Principal": {"AWS": ALICE},
         "Resource": "*", "Action": ["kms:Encrypt", "kms:Decrypt"],
         "Condition": {"StringEquals": {"kms:EncryptionContext:app": "bench"},
                       "StringLike": {"kms:EncryptionContext:tenant": "t-*"},
                       "IpAddress": {"aws:SourceIp": "127.0.0.0/8"}}},
    ]
    assert len(s) == 20, len(s)
    return json.dumps({"Version": "2012-10-17", "Id": "bench-20", "Statement": s})


def signed_script(path: Path, url: str, key_arn: str, plaintext: bytes) -> Path:
    """A wrk script replaying one Encrypt signed now by alice (SigV4, botocore's signer)."""
    body = json.dumps({"KeyId": key_arn, "Plaintext": base64.b64encode(plaintext).decode(),
                       "EncryptionContext": CONTEXT})
    req = AWSRequest(method="POST", url=url + "/", data=body.encode(), headers={
        "Content-Type": CTYPE, "X-Amz-Target": "TrentService.Encrypt"})
    SigV4Auth(Credentials(ALICE_KEY, ALICE_SECRET), "kms", "us-east-1").add_auth(req)
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body}]==]"]
    for k, v in req.headers.items():
        if k.lower() != "host":
            lines.append(f'wrk.headers["{k}"] = [==[{v}]==]')
    path.write_text("\n".join(lines) + "\n" + _DONE)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description="Encrypt: 20-statement key policy vs default")
    p.add_argument("--duration", type=float, default=10,
                   help="seconds of load per case, split over --rounds (default 10)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--control", action="store_true",
                   help="A/A run: the second key gets the default policy too, to show the "
                        "noise floor of the figure on this machine")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    work = Path(tempfile.mkdtemp(prefix="kms-bench-policy-"))
    (work / "kms.toml").write_text(config())
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = a.out or RESULTS / f"policy-{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    node = Server("node", [sys.executable, "-m", "regions.cli", "serve", "--host", "127.0.0.1",
                           "--port", str(port), "--data-dir", str(work / "data"),
                           "--config", str(work / "kms.toml"), "--log-format", "json"],
                  port, subprocess.DEVNULL)
    try:
        root = boto3.client("kms", endpoint_url=node.url, region_name="us-east-1",
                            aws_access_key_id=ROOT_KEY, aws_secret_access_key=ROOT_SECRET)
        keys = {"default policy": root.create_key()["KeyMetadata"]["Arn"],
                "20 statements": root.create_key(
                    Policy=default_policy() if a.control else twenty_statements())[
                    "KeyMetadata"]["Arn"]}
        alice = boto3.client("kms", endpoint_url=node.url, region_name="us-east-1",
                             aws_access_key_id=ALICE_KEY, aws_secret_access_key=ALICE_SECRET)
        for arn in keys.values():  # both allow alice's Encrypt, or the figure means nothing
            alice.encrypt(KeyId=arn, Plaintext=b"check", EncryptionContext=CONTEXT)
        per_round = a.duration / a.rounds
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in keys}
        for arn in keys.values():
            measured(node, signed_script(work / "warm.lua", node.url, arn, b"x" * 64),
                     a.concurrency, a.warmup, a.threads)
        for r in range(a.rounds):
            order = list(keys) if r % 2 == 0 else list(reversed(keys))
            for name in order:
                script = signed_script(work / f"{r}.lua", node.url, keys[name], b"x" * 64)
                got = measured(node, script, a.concurrency, per_round, a.threads)
                if got["errors"]:
                    raise RuntimeError(f"{name}: {got['errors']} failed requests")
                rounds[name].append(got)
        cases = {name: combine(rs) for name, rs in rounds.items()}
    finally:
        node.stop()
    base, pol = cases["default policy"], cases["20 statements"]
    ratio_ops = pol["ops_s"] / base["ops_s"]
    ratio_cpu = pol["server_cpu_us_per_op"] / base["server_cpu_us_per_op"]
    print(f"{'case':<16} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/op':>10}")
    for name, c in cases.items():
        print(f"{name:<16} {c['ops_s']:>8.0f} {c['p50_ms']:>8.2f} {c['p99_ms']:>8.2f} "
              f"{c['server_cpu_us_per_op']:>10.0f}")
    print(f"20 statements / default: throughput {ratio_ops:.3f}, server CPU per request "
          f"{ratio_cpu:.3f} (target: throughput >= 0.90)")
    out_path.write_text(json.dumps({
        "started": stamp, "args": {k: str(v) for k, v in vars(a).items()},
        "versions": versions(), "source": source_fingerprint(), "control": a.control,
        "cases": cases,
        "ratio_ops_s": round(ratio_ops, 3), "ratio_cpu_us_per_op": round(ratio_cpu, 3),
    }, indent=2))
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

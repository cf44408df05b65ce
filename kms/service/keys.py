"""Key lifecycle and metadata operations: CreateKey, DescribeKey, ListKeys,
EnableKey, DisableKey, UpdateKeyDescription, TagResource, UntagResource,
ListResourceTags.

Rules: management operations name keys by id or ARN only; every decision comes
from kms.domain.key; handlers return the response and emit events, nothing else.
"""

from __future__ import annotations

import uuid
from typing import Any

from kms.crypto import kem
from kms.domain import events as ev
from kms.domain import key as keys
from kms.domain.errors import (
    UnsupportedOperationException,
    ValidationException,
)
from kms.domain.multi_region import created as multi_region_key
from kms.domain.multi_region import mrk_stream
from kms.domain.specs import SPECS, SYMMETRIC
from kms.service import authz, policy_ops
from kms.service.core import Call, Service, operation
from kms.service.paging import page
from kms.service.views import key_metadata
from kms.store.state import key_stream


def default_policy(account: str) -> str:
    """AWS's default key policy for a key created through the API with no Policy."""
    return (
        '{\n  "Version" : "2012-10-17",\n  "Id" : "key-default-1",\n  "Statement" : [ {\n'
        '    "Sid" : "Enable IAM User Permissions",\n    "Effect" : "Allow",\n'
        f'    "Principal" : {{\n      "AWS" : "arn:aws:iam::{account}:root"\n    }},\n'
        '    "Action" : "kms:*",\n    "Resource" : "*"\n  } ]\n}'
    )


def check_policy(policy: str) -> None:
    """Size and document of a key policy (its principals and lockout: policy_ops)."""
    policy_ops.check_size_and_shape(policy)


# Why a spec of the model is refused, where the reason is known and lasting.
_MLKEM_OFFERED = " and ".join(f"ML-KEM-{n}" for n in sorted(
    int(spec.rsplit("_", 1)[1]) for spec in kem.SUPPORTED_SPECS))
UNSUPPORTED_SPEC_REASONS = {
    **{spec: f"KeySpec {spec} is not supported by this service: its cryptography library "
             + (f"offers {_MLKEM_OFFERED} only." if _MLKEM_OFFERED else "has no ML-KEM.")
       for spec in kem.SPECS - kem.SUPPORTED_SPECS},
    "SM2": "KeySpec SM2 is offered only in the AWS China Regions; this service does not "
           "support it.",
}


def tags_of(params: dict[str, Any]) -> ev.Tags:
    return tuple((t["TagKey"], t["TagValue"]) for t in params.get("Tags") or ())


def _spec_and_usage(p: dict[str, Any]) -> tuple[str, str]:
    if "KeySpec" in p and "CustomerMasterKeySpec" in p:
        raise ValidationException(
            "You cannot specify KeySpec and CustomerMasterKeySpec in the same request. "
            "CustomerMasterKeySpec is deprecated."
        )
    spec_name = p.get("KeySpec") or p.get("CustomerMasterKeySpec") or SYMMETRIC
    spec = SPECS.get(spec_name)
    if spec is None:  # in the model's enum, but not in this service's spec table
        raise UnsupportedOperationException(f"KeySpec {spec_name} is not supported by this "
                                            "service yet.")
    usage = p.get("KeyUsage") or spec.default_usage
    if usage is None:
        raise ValidationException(
            "You must specify a KeyUsage value for all KMS keys except for symmetric "
            "encryption keys."
        )
    if usage not in spec.usages:
        raise ValidationException(f"KeyUsage {usage} is not compatible with KeySpec {spec_name}")
    return spec_name, usage


@operation("CreateKey", read_only=False)
async def create_key(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    authz.authorize(call, "CreateKey", None, account=svc.account)
    if p.get("Tags"):  # tagging at creation needs kms:TagResource too (IAM policies alone)
        authz.authorize(call, "TagResource", None, account=svc.account)
    spec, usage = _spec_and_usage(p)
    origin = p.get("Origin", "AWS_KMS")
    if origin in ("AWS_CLOUDHSM", "EXTERNAL_KEY_STORE") or "CustomKeyStoreId" in p:
        raise UnsupportedOperationException("Custom key stores are not supported by this service.")
    if spec not in svc.supported_specs:
        raise UnsupportedOperationException(UNSUPPORTED_SPEC_REASONS.get(
            spec, f"KeySpec {spec} is not supported by this service yet."))
    policy = p.get("Policy") or default_policy(svc.account)
    check_policy(policy)
    tags = tags_of(p)
    keys.check_tags(tags)
    multi_region = bool(p.get("MultiRegion", False))
    key_id = f"mrk-{uuid.uuid4().hex}" if multi_region else str(uuid.uuid4())
    svc.new_kek(call, key_id)
    material = None if origin == "EXTERNAL" else await svc.new_material(call, key_id, spec)
    event = ev.KeyCreated(
        key_id=key_id, account=svc.account, region=svc.region,
        description=p.get("Description", ""), key_spec=spec, key_usage=usage, origin=origin,
        key_manager="CUSTOMER", multi_region=multi_region, policy=policy, tags=tags,
        material=material,
    )
    call.emit(key_stream(key_id), [event])
    mrk = None
    if multi_region:  # its shared side, which replicas fold too
        shared = ev.MultiRegionKeyCreated(key_id, svc.account, svc.region, spec, usage, origin)
        call.emit(mrk_stream(key_id), [shared])
        mrk = multi_region_key(shared)
    key = keys.created(event, call.at_ms)
    if "Policy" in p:
        policy_ops.check_new_policy(svc, call, key, policy)
    call.resources.append(key.arn)
    return {"KeyMetadata": key_metadata(key, mrk)}


@operation("DescribeKey", read_only=True)
async def describe_key(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.key_for(call, p["KeyId"], "DescribeKey", allow_alias=True)
    return {"KeyMetadata": key_metadata(key, svc.state.mrks.get(key.key_id))}


@operation("ListKeys", read_only=True)
async def list_keys(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    authz.authorize(call, "ListKeys", None, account=svc.account)
    items = svc.state.keys_in_order()
    chunk, tail = page(items, p, lambda i: f"{i[0]:016d}", default=100, maximum=1000,
                       valid=lambda m: len(m) == 16 and m.isdigit())
    return {"Keys": [{"KeyId": k.key_id, "KeyArn": k.arn} for _, k in chunk], **tail}


@operation("EnableKey", read_only=False)
async def enable_key(svc: Service, call: Call, p: dict[str, Any]) -> None:
    key = svc.key_for(call, p["KeyId"], "EnableKey", allow_alias=False)
    call.emit(key_stream(key.key_id), keys.enable(key))


@operation("DisableKey", read_only=False)
async def disable_key(svc: Service, call: Call, p: dict[str, Any]) -> None:
    key = svc.key_for(call, p["KeyId"], "DisableKey", allow_alias=False)
    call.emit(key_stream(key.key_id), keys.disable(key))


@operation("UpdateKeyDescription", read_only=False)
async def update_key_description(svc: Service, call: Call, p: dict[str, Any]) -> None:
    key = svc.key_for(call, p["KeyId"], "UpdateKeyDescription", allow_alias=False)
    call.emit(key_stream(key.key_id), keys.update_description(key, p["Description"]))


@operation("TagResource", read_only=False)
async def tag_resource(svc: Service, call: Call, p: dict[str, Any]) -> None:
    key = svc.key_for(call, p["KeyId"], "TagResource", allow_alias=False)
    call.emit(key_stream(key.key_id), keys.tag(key, tags_of(p)))


@operation("UntagResource", read_only=False)
async def untag_resource(svc: Service, call: Call, p: dict[str, Any]) -> None:
    key = svc.key_for(call, p["KeyId"], "UntagResource", allow_alias=False)
    call.emit(key_stream(key.key_id), keys.untag(key, tuple(p["TagKeys"])))


@operation("ListResourceTags", read_only=True)
async def list_resource_tags(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.key_for(call, p["KeyId"], "ListResourceTags", allow_alias=False)
    chunk, tail = page(sorted(key.tags), p, lambda t: t[0], default=50, maximum=50)
    return {"Tags": [{"TagKey": k, "TagValue": v} for k, v in chunk], **tail}

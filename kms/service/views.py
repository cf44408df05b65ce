"""Response shapes built from state: KeyMetadata, list entries, timestamps.

Rules: AWS omits members that do not apply, so these builders do too; times are
epoch seconds (floats), as AWS JSON 1.1 sends them.
"""

from __future__ import annotations

from typing import Any

from kms.domain.alias import Alias
from kms.domain.ids import alias_arn
from kms.domain.key import Key, KeyState
from kms.domain.multi_region import MultiRegionKey
from kms.domain.specs import ALGORITHM_FIELD, SPECS, SYMMETRIC


def seconds(at_ms: int) -> float:
    return at_ms / 1000


def key_metadata(key: Key, mrk: MultiRegionKey | None = None) -> dict[str, Any]:
    """KeyMetadata; ``mrk`` is the key's shared side when it is multi-region."""
    spec = SPECS[key.key_spec]
    md: dict[str, Any] = {
        "AWSAccountId": key.account,
        "KeyId": key.key_id,
        "Arn": key.arn,
        "CreationDate": seconds(key.created_at_ms),
        "Enabled": key.state is KeyState.ENABLED,
        "Description": key.description,
        "KeyUsage": key.key_usage,
        "KeyState": key.state.value,
        "Origin": key.origin,
        "KeyManager": key.key_manager,
        "KeySpec": key.key_spec,
        "MultiRegion": key.multi_region,
    }
    if spec.in_cmk_spec:
        md["CustomerMasterKeySpec"] = key.key_spec
    md[ALGORITHM_FIELD[key.key_usage]] = list(spec.usages[key.key_usage])
    if key.multi_region:
        md["MultiRegionConfiguration"] = multi_region_configuration(key, mrk)
    # Shown for symmetric keys, and kept while an imported key waits for its material.
    if key.key_spec == SYMMETRIC and key.current_material_id:
        md["CurrentKeyMaterialId"] = key.current_material_id
    if key.state is KeyState.PENDING_DELETION:
        md["DeletionDate"] = seconds(key.deletion_ms)
    elif key.state is KeyState.PENDING_REPLICA_DELETION:  # no date until its replicas go
        md["PendingDeletionWindowInDays"] = key.pending_window_days
    if key.origin == "EXTERNAL" and key.expiration_model:
        md["ExpirationModel"] = key.expiration_model
        if key.valid_to_ms:
            md["ValidTo"] = seconds(key.valid_to_ms)
    return md


def multi_region_configuration(key: Key, mrk: MultiRegionKey | None) -> dict[str, Any]:
    if mrk is None:  # a primary whose shared stream predates this node's multi-region code
        return {"MultiRegionKeyType": "PRIMARY",
                "PrimaryKey": {"Arn": key.arn, "Region": key.region}, "ReplicaKeys": []}
    return {
        "MultiRegionKeyType": "PRIMARY" if mrk.primary_region == key.region else "REPLICA",
        "PrimaryKey": {"Arn": mrk.primary_arn, "Region": mrk.primary_region},
        "ReplicaKeys": [{"Arn": mrk.arn_in(r.region), "Region": r.region}
                        for r in mrk.replicas],
    }


def alias_entry(alias: Alias, region: str, account: str) -> dict[str, Any]:
    return {
        "AliasName": alias.name,
        "AliasArn": alias_arn(region, account, alias.name),
        "TargetKeyId": alias.key_id,
        "CreationDate": seconds(alias.created_at_ms),
        "LastUpdatedDate": seconds(alias.updated_at_ms),
    }
